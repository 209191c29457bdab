//! Scenario 2, persist: the events ingest acknowledged while the processor
//! was stopped wait in the topic; the processor starts and the clock runs
//! until its group's lag is 0 (it commits offsets only after the database
//! commit) — against a raw `COPY` of as many rows of the same shape into a
//! fresh table with the events table's schema and indexes.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::SinkExt as _;
use serde_json::{Value, json};

use crate::stats::{Table, ratio, round3, thousands};
use crate::topic::{self, EVENTS_TOPIC, Offsets, PROCESSOR_GROUP};
use crate::{Checks, Options, data, procs};

/// Waits until the processor's group has consumed everything; answers when.
pub async fn wait_drained(options: &Options, limit: Duration) -> anyhow::Result<Instant> {
    wait_group_drained(options, PROCESSOR_GROUP, EVENTS_TOPIC, limit).await
}

/// Waits until `group` has consumed everything of `topic`; answers when.
pub async fn wait_group_drained(
    options: &Options,
    group: &str,
    topic: &str,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let kafka = options.kafka();
    let deadline = Instant::now() + limit;
    loop {
        let (b, g, t) = (kafka.clone(), group.to_owned(), topic.to_owned());
        let lag = topic::blocking(move || Offsets::new(&b, &g)?.lag(&t)).await?;
        if lag == 0 {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the consumer group {group} still lags {lag} records on {topic} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows stored from the offset ranges, and the span of their persist times.
pub struct Stored {
    pub rows: i64,
    /// Seconds from the first row's persisted_at to the last one's.
    pub persist_span_s: f64,
    /// Seconds from the first received_at to the last persisted_at.
    pub receive_to_last_s: f64,
}

pub async fn stored(
    db: &tokio_postgres::Client,
    run_id: &str,
    from: &[(i32, i64)],
    to: &[(i32, i64)],
) -> anyhow::Result<Stored> {
    let condition = topic::run_rows(run_id, from, to);
    let row = db
        .query_one(
            &format!(
                "SELECT count(*),
                        COALESCE(extract(epoch FROM max(persisted_at) - min(persisted_at))::float8, 0),
                        COALESCE(extract(epoch FROM max(persisted_at) - min(received_at))::float8, 0)
                   FROM events WHERE {condition}"
            ),
            &[],
        )
        .await
        .context("counting the stored rows")?;
    Ok(Stored {
        rows: row.get(0),
        persist_span_s: row.get(1),
        receive_to_last_s: row.get(2),
    })
}

pub async fn run(
    options: &Options,
    checks: &mut Checks,
    run_id: &str,
    from: &[(i32, i64)],
    to: &[(i32, i64)],
) -> anyhow::Result<Value> {
    let deployment = options.deployment();
    let (_, records) = topic::range_condition(from, to);
    let db = crate::connect(&options.database_url).await?;

    let before = deployment.snapshot();
    let start = Instant::now();
    crate::processor(options, "start").await?;
    let started = start.elapsed().as_secs_f64();
    let limit = Duration::from_secs(120).max(Duration::from_millis(
        u64::try_from(records).unwrap_or(0) / 2,
    ));
    let done = wait_drained(options, limit).await?;
    let cpu = deployment.snapshot().cpu_since(&before);
    let total_s = done.duration_since(start).as_secs_f64();
    let s = stored(&db, run_id, from, to).await?;
    checks.check(
        "persist: every record of the backlog became exactly one row",
        records > 0 && s.rows == records,
        format!("{records} records, {} rows", s.rows),
    );
    // The steady rate: first row to last, without the processor's start-up.
    let ours_rate = s.rows as f64 / s.persist_span_s.max(1e-3);

    // The baseline: the same number of rows, COPY into a fresh copy of the table.
    let table = format!(
        "bench_copy_{}",
        run_id.to_lowercase().replace(['.', '-'], "_")
    );
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (LIKE events INCLUDING ALL)"
    ))
    .await
    .context("creating the COPY table")?;
    let chunks = copy_chunks(&format!("{run_id}.c."), u64::try_from(records).unwrap_or(0));
    let before = deployment.snapshot();
    let start = Instant::now();
    let copied = copy_in(&db, &table, chunks).await;
    let copy_s = start.elapsed().as_secs_f64();
    let copy_cpu = deployment.snapshot().cpu_since(&before);
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .context("dropping the COPY table")?;
    let copied = copied?;
    checks.check(
        "persist baseline: COPY loaded as many rows",
        i64::try_from(copied).unwrap_or(-1) == records,
        format!("{copied} rows copied"),
    );
    let copy_rate = copied as f64 / copy_s.max(1e-3);

    let mut t = Table::new(&["path", "rows", "rows/s", "CPU"]);
    t.row(vec![
        "processor (first to last row)".into(),
        thousands(s.rows as f64),
        thousands(ours_rate),
        procs::cpu_line(&cpu),
    ]);
    t.row(vec![
        "raw COPY, same schema and indexes".into(),
        thousands(copied as f64),
        thousands(copy_rate),
        procs::cpu_line(&copy_cpu),
    ]);
    println!(
        "\n## Persist: {records} records waiting in the topic (ratio {:.2}; processor start to healthy {:.1} s, start to drained {:.1} s)\n\n{}\n",
        ratio(ours_rate, copy_rate),
        started,
        total_s,
        t.render()
    );
    Ok(json!({
        "events": records,
        "rows": s.rows,
        "rows_per_s": round3(ours_rate),
        "first_to_last_row_s": round3(s.persist_span_s),
        "start_to_healthy_s": round3(started),
        "start_to_drained_s": round3(total_s),
        "rows_per_s_from_start": round3(s.rows as f64 / total_s.max(1e-3)),
        "cpu": cpu,
        "baseline": {
            "path": "COPY into a fresh table with the events schema and indexes",
            "rows": copied,
            "seconds": round3(copy_s),
            "rows_per_s": round3(copy_rate),
            "cpu": copy_cpu,
        },
        "ratio": ratio(ours_rate, copy_rate),
    }))
}

/// The baseline's rows as COPY text, in chunks of about 1 MiB, made before
/// the clock starts.
fn copy_chunks(prefix: &str, rows: u64) -> Vec<Bytes> {
    let now = SystemTime::now();
    let mut chunks = Vec::new();
    let mut buf = String::with_capacity(1 << 20);
    for n in 0..rows {
        let e = data::event(prefix, n, now);
        data::copy_row(
            &mut buf,
            &e,
            &data::payload_json(n),
            (n % 6) as i32,
            i64::try_from(n).unwrap_or(i64::MAX),
        );
        if buf.len() >= 1 << 20 {
            chunks.push(Bytes::from(std::mem::take(&mut buf)));
            buf.reserve(1 << 20);
        }
    }
    if !buf.is_empty() {
        chunks.push(Bytes::from(buf));
    }
    chunks
}

/// COPY FROM STDIN of the chunks into `table`; answers the rows copied.
pub async fn copy_in(
    db: &tokio_postgres::Client,
    table: &str,
    chunks: Vec<Bytes>,
) -> anyhow::Result<u64> {
    let sink = db
        .copy_in::<_, Bytes>(&format!("COPY {table} ({}) FROM STDIN", data::COPY_COLUMNS))
        .await
        .context("starting COPY")?;
    futures_util::pin_mut!(sink);
    for chunk in chunks {
        sink.send(chunk).await.context("sending COPY data")?;
    }
    sink.finish().await.context("finishing COPY")
}
