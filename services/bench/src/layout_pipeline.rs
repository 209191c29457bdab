//! Scenario `layout`, its pipeline part (with `--baseline-processor`):
//! persist and end to end on the partitioned layout beside the layout before
//! partitions, in one run. Two processors of the bench's own, each on a
//! scratch database and a consumer group of its own: this build's on the
//! partitioned layout, and one built at the last commit before partitions
//! (scripts/build-baseline-processor.sh) on a database migrated up to that
//! commit's last migration. An ingest of the bench's own publishes into a
//! topic of the bench's own, which the deployment's processor never reads.
//!
//! - persist: a backlog waits in the topic; each processor in turn drains
//!   it, the order alternating by round; rows / (last persisted_at - first).
//! - end to end: both processors at once under a steady open-loop load; per
//!   database the rows, received → persisted p50 / p99 and rows/s from the
//!   first received to the last persisted: the same events at the same time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use tributary_platform::tls::ClientTlsArgs;

use crate::conn::WithKey;
use crate::ingest::{Limit, Outcome, batch_clients};
use crate::layout::{BEFORE_PARTITIONS, drop_db, fresh};
use crate::persist::{stored, wait_group_drained};
use crate::security::Variant;
use crate::stats::{Table, ratio, round3, thousands};
use crate::topic::{self, Offsets};
use crate::{Checks, Options, e2e, procs};

/// The bench's own topic (the events topic's partition count).
pub const TOPIC: &str = "tributary.bench.layout";
const OLD_DB: &str = "tributary_bench_pipe_old";
const NEW_DB: &str = "tributary_bench_pipe_new";
/// Events per PublishBatch while the backlog is loaded.
const BATCH: usize = 100;
const NOT_RUN: &str = "the pipeline part (persist and end to end through a processor per \
     layout) needs --baseline-processor PATH (scripts/build-baseline-processor.sh makes it)";

/// One layout: its processor binary, database and consumer group.
struct Side {
    name: &'static str,
    binary: PathBuf,
    url: String,
    group: &'static str,
    db: tokio_postgres::Client,
}

/// One side's persist figures, over the rounds.
#[derive(Default)]
struct Persisted {
    rows: i64,
    /// First persisted_at to last, summed over the rounds.
    span_s: f64,
    cpu_s: f64,
    rounds_rows_per_s: Vec<f64>,
}

impl Persisted {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.span_s.max(1e-3)
    }

    fn cpu_us_per_row(&self) -> f64 {
        self.cpu_s * 1e6 / (self.rows.max(1) as f64)
    }

    fn to_json(&self) -> Value {
        json!({
            "rows": self.rows,
            "rows_per_s": round3(self.rate()),
            "first_to_last_row_s": round3(self.span_s),
            "rounds_rows_per_s": self.rounds_rows_per_s,
            "processor_cpu_us_per_row": round3(self.cpu_us_per_row()),
        })
    }
}

/// A processor of the bench's own.
struct Running {
    child: tokio::process::Child,
    pid: u32,
}

impl Side {
    async fn new(
        options: &Options,
        name: &'static str,
        binary: PathBuf,
        database: &str,
        group: &'static str,
        migrated_until: Option<&str>,
    ) -> anyhow::Result<Self> {
        let pool = fresh(options, database).await?;
        match migrated_until {
            Some(last) => tributary_store::migrate::run_until(&pool, last).await,
            None => tributary_store::migrate::run(&pool).await,
        }
        .with_context(|| format!("migrating {database}"))?;
        let url = crate::with_database(&options.database_url, database);
        Ok(Self {
            name,
            binary,
            db: crate::connect(&url).await?,
            url,
            group,
        })
    }

    /// Starts its processor on the topic, from its group's committed offsets.
    fn start(&self, options: &Options) -> anyhow::Result<Running> {
        let child = crate::own_service(options, &self.binary, crate::free_port()?)?
            .env("TRIBUTARY_DATABASE_URL", &self.url)
            .env("TRIBUTARY_TOPIC", TOPIC)
            .env("TRIBUTARY_CONSUMER_GROUP", self.group)
            .env("TRIBUTARY_AUTH", "off")
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let pid = child.id().context("the processor exited at once")?;
        Ok(Running { child, pid })
    }

    /// Waits until its group has consumed the topic; fails if the processor
    /// exits meanwhile.
    async fn drained(
        &self,
        options: &Options,
        running: &mut Running,
        limit: Duration,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = wait_group_drained(options, self.group, TOPIC, limit) => r.map(drop),
            status = running.child.wait() => anyhow::bail!(
                "the {} processor ({}) exited: {}",
                self.name,
                self.binary.display(),
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            ),
        }
    }
}

impl Running {
    /// SIGTERM (it leaves its group, so the next one in it joins at once),
    /// SIGKILL after 30 s; answers the CPU seconds it used.
    async fn stop(mut self) -> anyhow::Result<f64> {
        let cpu = procs::cpu_seconds(self.pid);
        crate::faults::signal(self.pid, "TERM")?;
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        Ok(cpu)
    }
}

/// Sets `layout["pipeline"]`: the comparison with --baseline-processor, else
/// null and why.
pub async fn run(
    options: &Options,
    checks: &mut Checks,
    run_id: &str,
    layout: &mut Value,
) -> anyhow::Result<()> {
    let Some(baseline) = &options.baseline_processor else {
        println!("layout: not run: {NOT_RUN}");
        layout["pipeline"] = Value::Null;
        layout["pipeline_not_run"] = json!(NOT_RUN);
        return Ok(());
    };
    let result = measure(options, checks, run_id, baseline).await;
    drop_db(options, OLD_DB).await;
    drop_db(options, NEW_DB).await;
    layout["pipeline"] = result?;
    Ok(())
}

/// What the baseline binary is: its path, the commit named by its directory
/// (scripts/build-baseline-processor.sh builds into baseline/<commit>/) and
/// its --version.
fn describe_baseline(binary: &Path) -> Value {
    let commit = binary
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .filter(|n| (7..=40).contains(&n.len()) && n.chars().all(|c| c.is_ascii_hexdigit()));
    let version = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    json!({
        "binary": binary.display().to_string(),
        "commit": commit,
        "commit_from": "the binary's directory name (baseline/<commit>/)",
        "version": version,
        "schema": format!("migrations up to {BEFORE_PARTITIONS}"),
    })
}

/// Every client of `ingest` publishes `per_client` events in batches of
/// [`BATCH`] (ids `<prefix><client>.<n>`).
async fn publish(ingest: &Variant, prefix: &str, per_client: u64) -> Outcome {
    let limit = Limit {
        events: per_client,
        until: Instant::now() + Duration::from_secs(300),
    };
    batch_clients(&ingest.connections, prefix, BATCH, limit).await
}

async fn measure(
    options: &Options,
    checks: &mut Checks,
    run_id: &str,
    baseline: &Path,
) -> anyhow::Result<Value> {
    let began = Instant::now();
    let bin_dir = crate::bin_dir(options)?;
    let current = bin_dir.join("tributary-processor");
    for binary in [baseline, current.as_path()] {
        anyhow::ensure!(binary.is_file(), "no processor at {}", binary.display());
    }
    let described = describe_baseline(baseline);
    let commit = described["commit"].as_str().unwrap_or("unknown commit");
    let old_name = format!("before partitions (processor at {commit})");
    let sides = [
        Side::new(
            options,
            "before partitions",
            baseline.to_path_buf(),
            OLD_DB,
            "tributary-bench-layout-old",
            Some(BEFORE_PARTITIONS),
        )
        .await?,
        Side::new(
            options,
            "partitioned",
            current,
            NEW_DB,
            "tributary-bench-layout-new",
            None,
        )
        .await?,
    ];
    let kafka = options.kafka();
    topic::ensure_like_events(&kafka, TOPIC, Some(Duration::from_secs(86_400))).await?;
    // Both groups start at the topic's end: they read this run's events only.
    for side in &sides {
        let (k, group) = (kafka.clone(), side.group);
        topic::blocking(move || Offsets::new(&k, group)?.commit_ends(TOPIC))
            .await
            .with_context(|| {
                format!("positioning {group} (is a processor of an earlier run still in it?)")
            })?;
    }
    let edge = [
        ("TRIBUTARY_AUTH", "off".to_owned()),
        ("TRIBUTARY_TOPIC", TOPIC.to_owned()),
    ];
    let mut ingest = crate::security::start(
        options,
        &bin_dir.join("tributary-ingest"),
        "layout",
        &edge,
        &ClientTlsArgs::default(),
        &WithKey::default(),
    )
    .await?;
    let clients = ingest.connections.len();

    // Persist: a backlog, drained by each processor in turn.
    let (rounds, per_round): (u32, u64) = if options.quick {
        (1, 5_000)
    } else {
        (2, 200_000)
    };
    let per_client = per_round.div_ceil((clients * BATCH) as u64) * BATCH as u64;
    let mut persisted = [Persisted::default(), Persisted::default()];
    let mut records_total = 0;
    for round in 0..rounds {
        let from = topic::ends(&kafka, TOPIC).await?;
        let sent = publish(&ingest, &format!("{run_id}.pp{round}."), per_client).await;
        let to = topic::ends(&kafka, TOPIC).await?;
        let (_, records) = topic::range_condition(&from, &to);
        records_total += records;
        checks.check(
            format!("layout pipeline, persist round {round}: the topic grew by every event sent, all acknowledged"),
            sent.sent > 0 && sent.acked == sent.sent && u64::try_from(records).ok() == Some(sent.acked),
            format!(
                "sent {}, acked {}, {records} records, first error {:?}",
                sent.sent, sent.acked, sent.first_error
            ),
        );
        let limit = Duration::from_secs(120).max(Duration::from_millis(
            u64::try_from(records).unwrap_or(0) / 2,
        ));
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let side = &sides[i];
            let mut running = side.start(options)?;
            side.drained(options, &mut running, limit).await?;
            let cpu = running.stop().await?;
            let s = stored(&side.db, run_id, &from, &to).await?;
            checks.check(
                format!(
                    "layout pipeline, persist round {round} ({}): every record became exactly one row",
                    side.name
                ),
                records > 0 && s.rows == records,
                format!("{records} records, {} rows", s.rows),
            );
            let p = &mut persisted[i];
            p.rows += s.rows;
            p.span_s += s.persist_span_s;
            p.cpu_s += cpu;
            p.rounds_rows_per_s
                .push(round3(s.rows as f64 / s.persist_span_s.max(1e-3)));
        }
    }

    // End to end: both processors at once; a warm-up first, so both have
    // joined their groups (at the topic's end) before the load.
    let mut running = Vec::new();
    for side in &sides {
        running.push(side.start(options)?);
    }
    let warm = publish(&ingest, &format!("{run_id}.pw."), BATCH as u64).await;
    anyhow::ensure!(
        warm.acked == warm.sent,
        "the warm-up was not acknowledged: {:?}",
        warm.first_error
    );
    for (side, r) in sides.iter().zip(&mut running) {
        side.drained(options, r, Duration::from_secs(60)).await?;
    }
    // Every event is stored twice (once per processor): 2,000 ev/s is about
    // 0.4 of the durable broker engine's end-to-end maximum with one
    // processor on this 2-core machine (BENCHMARKS.md), so neither falls
    // behind for want of CPU alone.
    let (target, seconds, e2e_batch) = if options.quick {
        (200.0, 3, 10)
    } else {
        (2_000.0, 15, 100)
    };
    let interval = Duration::from_secs_f64((clients * e2e_batch) as f64 / target);
    let from = topic::ends(&kafka, TOPIC).await?;
    let started = Instant::now();
    let (sent, acked) = e2e::open_loop(
        &ingest.connections,
        &format!("{run_id}.pe."),
        e2e_batch,
        interval,
        Duration::from_secs(seconds),
        |_: u64, _: String, _: Instant| async {},
    )
    .await;
    let achieved = acked as f64 / started.elapsed().as_secs_f64().max(1e-3);
    for (side, r) in sides.iter().zip(&mut running) {
        side.drained(options, r, Duration::from_secs(120)).await?;
    }
    let to = topic::ends(&kafka, TOPIC).await?;
    let mut e2e_cpu = Vec::new();
    for r in running {
        e2e_cpu.push(r.stop().await?);
    }
    let _ = ingest.child.start_kill();
    let _ = ingest.child.wait().await;
    checks.check(
        "layout pipeline, end to end: the bench's ingest acknowledged every event sent",
        acked > 0 && acked == sent,
        format!("sent {sent}, acked {acked}"),
    );
    let mut e2e_sides = Vec::new();
    for (side, cpu) in sides.iter().zip(e2e_cpu) {
        let s = stored(&side.db, run_id, &from, &to).await?;
        let latency = e2e::received_to_persisted(&side.db, run_id, &from, &to).await?;
        checks.check(
            format!(
                "layout pipeline, end to end ({}): every acknowledged event became one row",
                side.name
            ),
            i64::try_from(acked).ok() == Some(s.rows),
            format!("acked {acked}, rows {}", s.rows),
        );
        e2e_sides.push(json!({
            "rows": s.rows,
            "rows_per_s": round3(s.rows as f64 / s.receive_to_last_s.max(1e-3)),
            "received_to_persisted_ms": latency,
            "processor_cpu_s": round3(cpu),
        }));
    }

    let figure = |i: usize, key: &str| e2e_sides[i][key].as_f64().unwrap_or(0.0);
    let latency = |i: usize, q: &str| {
        e2e_sides[i]["received_to_persisted_ms"][q]
            .as_f64()
            .unwrap_or(0.0)
    };
    let mut t = Table::new(&[
        "layout",
        "persist rows/s",
        "persist CPU µs/row",
        "e2e rows",
        "e2e rows/s",
        "e2e received → persisted p50 / p99 ms",
    ]);
    for (i, name) in [old_name.as_str(), "partitioned + event_ids (this build)"]
        .into_iter()
        .enumerate()
    {
        t.row(vec![
            name.to_owned(),
            thousands(persisted[i].rate()),
            format!("{:.1}", persisted[i].cpu_us_per_row()),
            thousands(figure(i, "rows")),
            thousands(figure(i, "rows_per_s")),
            format!("{:.1} / {:.1}", latency(i, "p50"), latency(i, "p99")),
        ]);
    }
    t.row(vec![
        "ratio partitioned / before".into(),
        format!("{:.2}", ratio(persisted[1].rate(), persisted[0].rate())),
        format!(
            "{:.2}",
            ratio(persisted[1].cpu_us_per_row(), persisted[0].cpu_us_per_row())
        ),
        String::new(),
        format!(
            "{:.2}",
            ratio(figure(1, "rows_per_s"), figure(0, "rows_per_s"))
        ),
        format!(
            "{:.2} / {:.2}",
            ratio(latency(1, "p50"), latency(0, "p50")),
            ratio(latency(1, "p99"), latency(0, "p99"))
        ),
    ]);
    let total_s = began.elapsed().as_secs_f64();
    println!(
        "\n## Layout, pipeline: persist {} records in {rounds} round(s), each processor in turn (order alternating); end to end {} ev/s for {seconds} s into both at once (achieved {}); {total_s:.0} s in all\n\n{}\n",
        thousands(records_total as f64 / f64::from(rounds)),
        thousands(target),
        thousands(achieved),
        t.render()
    );
    Ok(json!({
        "topic": TOPIC,
        "seconds": round3(total_s),
        "clients": clients,
        "batch": BATCH,
        "baseline": described,
        "persist": {
            "rounds": rounds,
            "records": records_total,
            "partitioned": persisted[1].to_json(),
            "baseline": persisted[0].to_json(),
            "ratio": ratio(persisted[1].rate(), persisted[0].rate()),
        },
        "e2e": {
            "batch": e2e_batch,
            "target_per_s": target,
            "achieved_per_s": round3(achieved),
            "seconds": seconds,
            "sent": sent,
            "acked": acked,
            "partitioned": e2e_sides[1],
            "baseline": e2e_sides[0],
            "rows_per_s_ratio": ratio(figure(1, "rows_per_s"), figure(0, "rows_per_s")),
            "p50_ratio": ratio(latency(1, "p50"), latency(0, "p50")),
            "p99_ratio": ratio(latency(1, "p99"), latency(0, "p99")),
        },
    }))
}
