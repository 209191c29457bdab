//! Retention: keeps the store bounded without a mass `DELETE`.
//!
//! - Range partitions of `events` that end at or before the cutoff are
//!   detached and dropped whole (the legacy partition of an upgraded
//!   deployment too, once its bound passes the cutoff).
//! - Rows older than the cutoff in the default partition (backfills,
//!   replays of old events) and in the legacy partition are deleted in
//!   bounded batches, as are `event_ids` below the oldest row kept,
//!   `dead_letters` and `alerts`.
//!
//! Each step is its own short transaction, so a run never holds a lock
//! long; a run deletes from a table for at most [`TIME_BUDGET`] and the
//! next run goes on.

use std::time::{Duration, Instant, SystemTime};

use crate::StoreError;
use crate::pool::Pool;

/// Rows per DELETE.
pub const BATCH: i64 = 10_000;
/// How long a run keeps deleting from one table: each batch is its own
/// statement, so a run never holds a lock long, and the next run goes on.
pub const TIME_BUDGET: Duration = Duration::from_secs(60);

/// What one run removed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Partitions dropped, each with how long its DETACH and DROP held the
    /// lock on `events`.
    pub dropped: Vec<(String, Duration)>,
    /// (table, rows deleted) for the tables trimmed in batches.
    pub deleted: Vec<(&'static str, u64)>,
    /// Partitions past retention that could not be dropped this run.
    pub failed: Vec<String>,
}

/// The tables trimmed row by row, with the column that ages them. The names
/// are fixed here: nothing from a caller becomes SQL text.
const TRIMMED: &[(&str, &str, &str)] = &[
    // (table, age column, DELETE ... WHERE ctid = ANY(...) statement)
    (
        "events_default",
        "occurred_at",
        "DELETE FROM events_default WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM events_default WHERE occurred_at < $1 ORDER BY occurred_at LIMIT $2))",
    ),
    (
        "events_legacy",
        "occurred_at",
        "DELETE FROM events_legacy WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM events_legacy WHERE occurred_at < $1 ORDER BY occurred_at LIMIT $2))",
    ),
    (
        "dead_letters",
        "first_seen_at",
        "DELETE FROM dead_letters WHERE id = ANY(ARRAY(
             SELECT id FROM dead_letters WHERE first_seen_at < $1 ORDER BY first_seen_at LIMIT $2))",
    ),
    (
        "alerts",
        "triggered_at",
        "DELETE FROM alerts WHERE alert_id = ANY(ARRAY(
             SELECT alert_id FROM alerts WHERE triggered_at < $1 ORDER BY triggered_at LIMIT $2))",
    ),
];

/// Applies `retention` as of `now`. A partition that cannot be dropped
/// now (its lock not had within 5 s) is reported in `failed` and the other
/// steps go on; the next run tries it again.
pub async fn apply(
    pool: &Pool,
    retention: Duration,
    now: SystemTime,
) -> Result<Report, StoreError> {
    let cutoff = now - retention;
    let mut report = Report::default();
    let mut client = pool.get().await?;

    // 1. Whole partitions, oldest first.
    let parts = crate::partitions::list(&client).await?;
    for p in parts.iter().filter(|p| p.to.is_some_and(|to| to <= cutoff)) {
        match drop_partition(&mut client, &p.name).await {
            Ok(held) => {
                tracing::info!(partition = %p.name, lock_ms = held.as_millis() as u64, "dropped an events partition past retention");
                report.dropped.push((p.name.clone(), held));
            }
            Err(e) => {
                tracing::warn!(partition = %p.name, error = %crate::error_chain(&e), "cannot drop an events partition past retention now; trying again next run");
                report.failed.push(p.name.clone());
            }
        }
    }

    // 2. Old rows outside range partitions, dead letters and alerts.
    let parts = crate::partitions::list(&client).await?;
    for (table, _, sql) in TRIMMED {
        if table.starts_with("events_") && !parts.iter().any(|p| p.name == *table) {
            continue;
        }
        let n = trim(&client, sql, cutoff).await?;
        report.deleted.push((table, n));
    }

    // 3. event_ids below the oldest row that can still be stored: the
    //    cutoff, or older where a range partition kept (its rows before the
    //    cutoff go when it is dropped) or the legacy partition's oldest row
    //    is older.
    let mut ids_cutoff = cutoff;
    for p in parts.iter().filter(|p| p.to.is_some()) {
        match p.from {
            Some(from) => ids_cutoff = ids_cutoff.min(from),
            None => {
                let oldest: Option<SystemTime> = client
                    .query_one("SELECT min(occurred_at) FROM events_legacy", &[])
                    .await?
                    .get(0);
                if let Some(oldest) = oldest {
                    ids_cutoff = ids_cutoff.min(oldest);
                }
            }
        }
    }
    let n = trim(
        &client,
        "DELETE FROM event_ids WHERE event_id = ANY(ARRAY(
             SELECT event_id FROM event_ids WHERE occurred_at < $1 ORDER BY occurred_at LIMIT $2))",
        ids_cutoff,
    )
    .await?;
    report.deleted.push(("event_ids", n));
    Ok(report)
}

/// Detaches and drops one partition; answers how long that held its lock.
async fn drop_partition(
    client: &mut deadpool_postgres::Object,
    name: &str,
) -> Result<Duration, StoreError> {
    let tx = client.transaction().await?;
    // Never queue long behind a query, holding up everyone queued behind
    // this: give up after 5 s.
    tx.batch_execute("SET LOCAL lock_timeout = '5s'").await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&crate::migrate::LOCK_KEY],
    )
    .await?;
    let started = Instant::now();
    tx.execute("SELECT tributary_drop_event_partition($1)", &[&name])
        .await?;
    tx.commit().await?;
    Ok(started.elapsed())
}

/// Runs a bounded DELETE until it removes less than a batch or the run's
/// [`TIME_BUDGET`] for the table is spent, pausing between batches;
/// returns the rows deleted.
async fn trim(
    client: &deadpool_postgres::Object,
    sql: &str,
    cutoff: SystemTime,
) -> Result<u64, StoreError> {
    let started = Instant::now();
    let mut total = 0;
    loop {
        let batch = Instant::now();
        let n = client.execute(sql, &[&cutoff, &BATCH]).await?;
        total += n;
        if n < BATCH as u64 || started.elapsed() >= TIME_BUDGET {
            return Ok(total);
        }
        // Paced: as long a pause as the batch took, so the deletes take at
        // most half of one connection's time and the writers keep the rest.
        tokio::time::sleep(batch.elapsed()).await;
    }
}

/// What [`apply`] would do, without changing anything: the partitions it
/// would drop and the rows past the cutoff per table (counted).
pub async fn plan(
    client: &impl deadpool_postgres::GenericClient,
    retention: Duration,
    now: SystemTime,
) -> Result<(Vec<String>, Vec<(&'static str, i64)>), StoreError> {
    let cutoff = now - retention;
    let parts = crate::partitions::list(client).await?;
    let drop: Vec<String> = parts
        .iter()
        .filter(|p| p.to.is_some_and(|to| to <= cutoff))
        .map(|p| p.name.clone())
        .collect();
    let mut rows = Vec::new();
    for (table, column, _) in TRIMMED {
        if table.starts_with("events_") && !parts.iter().any(|p| p.name == *table) {
            continue;
        }
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE {column} < $1"),
                &[&cutoff],
            )
            .await?
            .get(0);
        rows.push((*table, n));
    }
    Ok((drop, rows))
}
