//! Scenario 6, security: what API keys and TLS cost per call. Three ingests
//! of the bench's own, on free ports, over the deployment's broker and
//! database, differ only in their edge:
//!
//! - `plain`: plaintext, no keys (`--auth=off`), the baseline;
//! - `key`: plaintext, every call checked against an API key (the
//!   bootstrap key, held in memory: the path of any cached key);
//! - `key+TLS`: the same over TLS (a certificate of a CA made for the run).
//!
//! Clients publish batches of 1 and of 1000 to each in turn, the order
//! rotating each round, all in one run; ratios are to `plain`, and each
//! ingest's own CPU per event comes from /proc. The processor is stopped
//! meanwhile (it persists the events afterwards).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use tributary_platform::tls::ClientTlsArgs;
use tributary_proto::v1::PublishBatchRequest;
use tributary_proto::v1::ingest_service_client::IngestServiceClient;

use crate::conn::{self, Connection, WithKey};
use crate::ingest::{Limit, Mode, Outcome, batch_clients, ours_batch};
use crate::stats::{Table, ratio, round3, thousands};
use crate::{Checks, Options};

const MODES: [Mode; 2] = [Mode::Batch(1), Mode::Batch(1000)];

/// An ingest of the bench's own.
pub(crate) struct Variant {
    pub name: &'static str,
    pub child: tokio::process::Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT` of its gRPC port.
    pub url: String,
    /// `--clients` connections to it.
    pub connections: Vec<Connection>,
}

/// Starts one ingest with `edge` settings (environment) on free ports, over
/// the deployment's broker and database; waits until a publish through `tls`
/// and `key` is acknowledged.
pub(crate) async fn start(
    options: &Options,
    binary: &Path,
    name: &'static str,
    edge: &[(&str, String)],
    tls: &ClientTlsArgs,
    key: &WithKey,
) -> anyhow::Result<Variant> {
    let grpc = crate::free_port()?;
    let mut command = crate::own_service(options, binary, grpc)?;
    for (k, v) in edge {
        command.env(k, v);
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("the ingest exited at once")?;
    let url = format!("http://127.0.0.1:{grpc}");
    let ready = crate::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        let url = url.clone();
        async move {
            let c = conn::connect(&url, tls, key).await.ok()?;
            let r = IngestServiceClient::new(c)
                .publish_batch(PublishBatchRequest { events: vec![] })
                .await
                .ok()?;
            Some(r)
        }
    })
    .await;
    anyhow::ensure!(
        ready.is_some(),
        "the {name} ingest did not answer within 30 s"
    );
    let mut connections = Vec::new();
    for _ in 0..options.clients {
        connections.push(conn::connect(&url, tls, key).await?);
    }
    Ok(Variant {
        name,
        child,
        pid,
        url,
        connections,
    })
}

pub async fn run(options: &Options, checks: &mut Checks, run_id: &str) -> anyhow::Result<Value> {
    let binary = crate::bin_dir(options)?.join("tributary-ingest");
    let pki = tributary_testkit::pki::TestPki::new("bench")?;
    let key = tributary_platform::auth::key::generate(false)?;
    let with_key = WithKey::new(Some(&key.key))?;
    let tls = ClientTlsArgs {
        tls_ca: Some(pki.ca.clone()),
        ..Default::default()
    };
    let path = |p: &PathBuf| p.display().to_string();
    let auth = [
        ("TRIBUTARY_AUTH", "on".to_owned()),
        ("TRIBUTARY_BOOTSTRAP_ADMIN_KEY", key.key.clone()),
    ];
    let mut variants = Vec::new();
    variants.push(
        start(
            options,
            &binary,
            "plain",
            &[("TRIBUTARY_AUTH", "off".to_owned())],
            &ClientTlsArgs::default(),
            &WithKey::default(),
        )
        .await?,
    );
    variants.push(
        start(
            options,
            &binary,
            "key",
            &auth,
            &ClientTlsArgs::default(),
            &with_key,
        )
        .await?,
    );
    let mut tls_edge = auth.to_vec();
    tls_edge.push(("TRIBUTARY_TLS_CERT", path(&pki.server_cert)));
    tls_edge.push(("TRIBUTARY_TLS_KEY", path(&pki.server_key)));
    variants.push(start(options, &binary, "key+TLS", &tls_edge, &tls, &with_key).await?);

    // Warm-up, unmeasured: connections, TLS sessions, the key cache, the
    // producer's first batches.
    for (v, variant) in variants.iter().enumerate() {
        let limit = Limit {
            events: 50,
            until: Instant::now() + Duration::from_secs(30),
        };
        let prefix = format!("{run_id}.sec{v}.warm.");
        let _ = ours_batch(variant.connections[0].clone(), prefix, 1, limit).await;
    }
    let rounds = if options.quick { 1 } else { 3 };
    let seconds = (options.seconds / 3).max(2);
    // (mode, variant) → merged outcome, seconds, ingest CPU seconds.
    let mut results: Vec<Vec<(Outcome, f64, f64)>> = MODES
        .iter()
        .map(|_| {
            variants
                .iter()
                .map(|_| (Outcome::default(), 0.0, 0.0))
                .collect()
        })
        .collect();
    for (m, mode) in MODES.iter().enumerate() {
        let Mode::Batch(batch) = *mode else { continue };
        for round in 0..rounds {
            for k in 0..variants.len() {
                let v = (k + round) % variants.len();
                let variant = &variants[v];
                let cpu_before = crate::procs::cpu_seconds(variant.pid);
                let started = Instant::now();
                let outcome = batch_clients(
                    &variant.connections,
                    &format!("{run_id}.sec{v}.{batch}.{round}."),
                    batch,
                    Limit::for_mode(options, *mode, seconds),
                )
                .await;
                let slot = &mut results[m][v];
                slot.0.merge(outcome);
                slot.1 += started.elapsed().as_secs_f64();
                slot.2 += (crate::procs::cpu_seconds(variant.pid) - cpu_before).max(0.0);
            }
        }
    }

    let mut table = Table::new(&[
        "path",
        "plain ev/s",
        "key ev/s",
        "ratio",
        "key+TLS ev/s",
        "ratio",
        "p50 ms plain / key / key+TLS",
        "ingest CPU µs/event plain / key / key+TLS",
    ]);
    let mut runs = Vec::new();
    for (m, mode) in MODES.iter().enumerate() {
        let mut rates = Vec::new();
        let mut p50s = Vec::new();
        let mut cpus = Vec::new();
        let mut per_variant = Vec::new();
        for (v, variant) in variants.iter().enumerate() {
            let (outcome, secs, cpu) = &mut results[m][v];
            checks.check(
                format!(
                    "security {} {}: every event sent was acknowledged",
                    variant.name,
                    mode.label()
                ),
                outcome.sent > 0 && outcome.acked == outcome.sent,
                format!(
                    "sent {}, acked {}, first error {:?}",
                    outcome.sent, outcome.acked, outcome.first_error
                ),
            );
            let mut report = outcome.report(variant.name, *secs);
            let rate = report["events_per_s"].as_f64().unwrap_or(0.0);
            let cpu_per_event = if outcome.acked > 0 {
                *cpu * 1e6 / outcome.acked as f64
            } else {
                0.0
            };
            if let Value::Object(r) = &mut report {
                r.insert(
                    "ingest_cpu_us_per_event".into(),
                    json!(round3(cpu_per_event)),
                );
            }
            rates.push(rate);
            p50s.push(format!("{:.1}", report["p50_ms"].as_f64().unwrap_or(0.0)));
            cpus.push(format!("{cpu_per_event:.1}"));
            per_variant.push(report);
        }
        let (plain, key, key_tls) = (rates[0], rates[1], rates[2]);
        checks.check(
            format!("security {}: every variant has a rate", mode.label()),
            rates.iter().all(|r| *r > 0.0),
            format!("{rates:?}"),
        );
        table.row(vec![
            mode.label(),
            thousands(plain),
            thousands(key),
            format!("{:.2}", ratio(key, plain)),
            thousands(key_tls),
            format!("{:.2}", ratio(key_tls, plain)),
            p50s.join(" / "),
            cpus.join(" / "),
        ]);
        runs.push(json!({
            "path": mode.label(),
            "batch": mode.batch(),
            "variants": per_variant,
            "key_ratio": ratio(key, plain),
            "key_tls_ratio": ratio(key_tls, plain),
        }));
    }
    for v in &mut variants {
        let _ = v.child.start_kill();
        let _ = v.child.wait().await;
    }
    println!(
        "\n## Security: what an API key and TLS cost per call ({} clients each, {} round(s), order rotating; ratio = / plain)\n\n{}\n",
        options.clients,
        rounds,
        table.render()
    );
    Ok(json!({ "clients": options.clients, "rounds": rounds, "runs": runs }))
}
