use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tributary_bench::{
    Checks, Options, e2e, faults, ingest, layout, layout_pipeline, overload, payload, persist,
    procs, query, security, subscriptions, topic,
};

#[tokio::main]
async fn main() -> ExitCode {
    let options: Options = tributary_platform::config::parse();
    let mut checks = Checks::default();
    let mut report = json!({
        "tool": "tributary-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": if options.quick { "quick" } else { "full" },
        "date": prost_types::Timestamp::from(SystemTime::now()).to_string(),
        "commit": commit(&options),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": tributary_bench::machine(),
        "broker_engine": procs::broker_engine(&options.deployment()),
        "scenarios": {},
    });
    println!(
        "# tributary-bench {} ({} mode), broker engine {}, commit {}\n# machine: {}",
        env!("CARGO_PKG_VERSION"),
        report["mode"].as_str().unwrap_or(""),
        report["broker_engine"].as_str().unwrap_or(""),
        report["commit"].as_str().unwrap_or(""),
        report["machine"]
    );
    let outcome = run(&options, &mut checks, &mut report).await;
    report["checks"] = checks.to_json();
    if let Err(e) = &outcome {
        report["error"] = json!(format!("{e:#}"));
    }
    let written = std::fs::write(
        &options.out,
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
    match (&outcome, written) {
        (_, Err(e)) => {
            eprintln!("error: writing {}: {e}", options.out.display());
            ExitCode::from(2)
        }
        (Err(e), _) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        (Ok(()), Ok(())) if checks.all_ok() => {
            println!("\nreport: {}", options.out.display());
            ExitCode::SUCCESS
        }
        (Ok(()), Ok(())) => {
            eprintln!("some checks failed (report: {})", options.out.display());
            ExitCode::from(1)
        }
    }
}

async fn run(options: &Options, checks: &mut Checks, report: &mut Value) -> anyhow::Result<()> {
    let run_id = format!(
        "bench-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    if options.wants("payload") {
        report["scenarios"]["payload"] = payload::run(options, checks)?;
    }
    if options.wants("ingest") || options.wants("persist") {
        // The ingest paths are measured without the processor competing; what
        // ingest acknowledged is then the persist scenario's backlog.
        tributary_bench::processor(options, "stop").await?;
        let loaded = async {
            let from = e2e::topic_ends(options).await?;
            let (ingest_json, acked) = ingest::run(options, checks, &run_id).await?;
            let to = e2e::topic_ends(options).await?;
            let (_, records) = topic::range_condition(&from, &to);
            checks.check(
                "ingest: the events topic grew by exactly the acknowledged events",
                u64::try_from(records).ok() == Some(acked),
                format!("{records} records, {acked} acknowledged"),
            );
            anyhow::Ok((ingest_json, from, to))
        }
        .await;
        let (ingest_json, from, to) = match loaded {
            Ok(v) => v,
            Err(e) => {
                tributary_bench::processor(options, "start").await?;
                return Err(e);
            }
        };
        report["scenarios"]["ingest"] = ingest_json;
        if options.wants("persist") {
            match persist::run(options, checks, &run_id, &from, &to).await {
                Ok(v) => report["scenarios"]["persist"] = v,
                Err(e) => {
                    // It may have failed before starting the processor.
                    tributary_bench::processor(options, "start").await?;
                    return Err(e);
                }
            }
        } else {
            tributary_bench::processor(options, "start").await?;
        }
    }
    if options.wants("layout") {
        let mut layout_json = layout::run(options, checks, &run_id).await?;
        layout_pipeline::run(options, checks, &run_id, &mut layout_json).await?;
        report["scenarios"]["layout"] = layout_json;
    }
    if options.wants("e2e") {
        let (e2e_json, footprint) = e2e::run(options, checks, &run_id).await?;
        report["scenarios"]["e2e"] = e2e_json;
        report["scenarios"]["footprint"] = footprint;
    }
    if options.wants("query") {
        report["scenarios"]["query"] = query::run(options, checks).await?;
    }
    if options.wants("subscriptions") {
        report["scenarios"]["subscriptions"] = subscriptions::run(options, checks, &run_id).await?;
    }
    if options.wants("faults") {
        report["scenarios"]["faults"] = faults::run(options, checks, &run_id).await?;
    }
    if options.wants("overload") {
        report["scenarios"]["overload"] = overload::run(options, checks, &run_id).await?;
    }
    if options.wants("security") {
        tributary_bench::processor(options, "stop").await?;
        let measured = security::run(options, checks, &run_id).await;
        tributary_bench::processor(options, "start").await?;
        report["scenarios"]["security"] = measured?;
    }
    Ok(())
}

/// The commit of the checkout deploy.sh lives in ("-dirty" with local changes).
fn commit(options: &Options) -> String {
    let dir = options
        .deploy
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(sha) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{sha}-dirty") } else { sha }
        }
        None => "unknown".into(),
    }
}
