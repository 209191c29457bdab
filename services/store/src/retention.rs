//! Retention: keeps the store bounded without a mass `DELETE`.
//!
//! - Range partitions of `events` that end at or before the cutoff are
//!   detached (a short transaction, the only step that locks `events`) and
//!   then dropped (the legacy partition of an upgraded deployment too, once
//!   its bound passes the cutoff). A table a crash left detached is dropped
//!   by the next run.
//! - Rows older than the cutoff in the default partition (backfills,
//!   replays of old events) and in the legacy partition are deleted in
//!   bounded batches, as are `event_ids` below the oldest row kept,
//!   `dead_letters` and `alerts`.
//!
//! Each batch is its own statement, so a run never holds a lock long, and
//! the batches are paced: after each, a pause [`PAUSE_PER_BATCH`] times as
//! long as it took, so deleting takes at most a twentieth of one connection's
//! time and the writers keep the rest. A run deletes from a table for at
//! most the budget its caller gives; the next run goes on.

use std::time::{Duration, Instant, SystemTime};

use crate::StoreError;
use crate::pool::Pool;

/// Rows per DELETE.
pub const BATCH: i64 = 5_000;
/// The pause after a batch, in multiples of the time the batch took.
pub const PAUSE_PER_BATCH: u32 = 19;
/// A run's budget per table when its caller has no better one (`migrate`).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

/// What one run removed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Partitions dropped.
    pub dropped: Vec<String>,
    /// How long their DETACH (one transaction for all) held the lock on
    /// `events`, from asking for it to the commit.
    pub detach_lock: Option<Duration>,
    /// (table, rows deleted) for the tables trimmed in batches.
    pub deleted: Vec<(&'static str, u64)>,
    /// Partitions past retention that could not be dropped this run.
    pub failed: Vec<String>,
    /// A table's budget ran out with rows past the cutoff left: the next
    /// run has more to delete.
    pub unfinished: bool,
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

/// Applies `retention` as of `now`, deleting from each trimmed table for at
/// most `budget`. A partition that cannot be detached now (its lock not had
/// within 5 s) is reported in `failed` and the other steps go on; the next
/// run tries it again.
pub async fn apply(
    pool: &Pool,
    retention: Duration,
    now: SystemTime,
    budget: Duration,
) -> Result<Report, StoreError> {
    let cutoff = now - retention;
    let mut report = Report::default();
    let mut client = pool.get().await?;

    // 1. Whole partitions, oldest first: detached together in one short
    //    transaction (one wait for the lock, however many are due), then
    //    dropped one by one; and any a crash left detached.
    let parts = crate::partitions::list(&client).await?;
    let due: Vec<&str> = parts
        .iter()
        .filter(|p| p.to.is_some_and(|to| to <= cutoff))
        .map(|p| p.name.as_str())
        .collect();
    if !due.is_empty() {
        match detach(&mut client, &due).await {
            Ok(held) => {
                tracing::info!(
                    partitions = due.len(),
                    lock_ms = held.as_millis() as u64,
                    "detached the events partitions past retention"
                );
                report.detach_lock = Some(held);
            }
            Err(e) => {
                tracing::warn!(partitions = ?due, error = %crate::error_chain(&e), "cannot detach the events partitions past retention now; trying again next run");
                report.failed = due.iter().map(|n| n.to_string()).collect();
            }
        }
    }
    let orphans = detached(&client).await?;
    // What was just detached, and what an interrupted run left.
    for name in orphans {
        // Paced like the batches below: a DROP commits the removal of a
        // dozen files and a WAL flush, which the writers feel.
        let started = Instant::now();
        drop_detached(&client, &name).await?;
        tokio::time::sleep(started.elapsed() * PAUSE_PER_BATCH).await;
        tracing::info!(partition = %name, "dropped an events partition past retention");
        report.dropped.push(name);
    }

    // 2. Old rows outside range partitions, dead letters and alerts.
    let parts = crate::partitions::list(&client).await?;
    for (table, _, sql) in TRIMMED {
        if table.starts_with("events_") && !parts.iter().any(|p| p.name == *table) {
            continue;
        }
        let (n, more) = trim(&client, sql, cutoff, budget).await?;
        report.deleted.push((table, n));
        report.unfinished |= more;
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
    let (n, more) = trim_ids(&client, ids_cutoff, budget).await?;
    report.deleted.push(("event_ids", n));
    report.unfinished |= more;
    Ok(report)
}

/// Detaches `names` in one transaction; answers how long that held the lock
/// on `events` (queued writers wait from the moment it is asked for).
async fn detach(
    client: &mut deadpool_postgres::Object,
    names: &[&str],
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
    for name in names {
        tx.execute("SELECT tributary_detach_event_partition($1)", &[name])
            .await?;
    }
    tx.commit().await?;
    Ok(started.elapsed())
}

/// Tables named as range partitions are (`events_p<start>`) but attached to
/// nothing: detached by a run that did not get to drop them. (The query,
/// not the migration's function of the same name, so that a dry run plans
/// on a database that migration has yet to reach.)
async fn detached(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<Vec<String>, StoreError> {
    Ok(client
        .query(
            "SELECT c.relname::text FROM pg_class c
              WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
                AND c.relname ~ '^events_p[0-9]{8}(_[0-9]{4})?$' AND NOT c.relispartition
              ORDER BY c.relname",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Drops a detached partition: no lock on `events`.
async fn drop_detached(client: &deadpool_postgres::Object, name: &str) -> Result<(), StoreError> {
    client
        .execute(
            "SELECT tributary_drop_detached_event_partition($1)",
            &[&name],
        )
        .await?;
    Ok(())
}

/// Runs a bounded DELETE until it removes less than a batch or `budget` is
/// spent, pausing [`PAUSE_PER_BATCH`] times as long as each batch took;
/// returns the rows deleted and whether the budget ran out first.
async fn trim(
    client: &deadpool_postgres::Object,
    sql: &str,
    cutoff: SystemTime,
    budget: Duration,
) -> Result<(u64, bool), StoreError> {
    let started = Instant::now();
    let mut total = 0;
    loop {
        let batch = Instant::now();
        let n = client.execute(sql, &[&cutoff, &BATCH]).await?;
        total += n;
        if n < BATCH as u64 {
            return Ok((total, false));
        }
        if started.elapsed() >= budget {
            return Ok((total, true));
        }
        tokio::time::sleep(batch.elapsed() * PAUSE_PER_BATCH).await;
    }
}

/// Deletes `event_ids` below `cutoff` as [`trim`] does, by ranges of its
/// time index rather than by ids: a batch ends at the time of the
/// [`BATCH`]-th oldest row (rows sharing it go in the same batch) and the
/// next starts there, never rescanning the index entries earlier batches
/// left dead (until a vacuum, each scan from the oldest would walk them).
async fn trim_ids(
    client: &deadpool_postgres::Object,
    cutoff: SystemTime,
    budget: Duration,
) -> Result<(u64, bool), StoreError> {
    let started = Instant::now();
    let mut total = 0;
    let oldest: Option<SystemTime> = client
        .query_one("SELECT min(occurred_at) FROM event_ids", &[])
        .await?
        .get(0);
    let Some(mut from) = oldest.filter(|t| *t < cutoff) else {
        return Ok((0, false));
    };
    loop {
        let batch = Instant::now();
        let edge: Option<SystemTime> = client
            .query_opt(
                "SELECT occurred_at FROM event_ids WHERE occurred_at >= $1 AND occurred_at < $2
                  ORDER BY occurred_at OFFSET $3 LIMIT 1",
                &[&from, &cutoff, &BATCH],
            )
            .await?
            .map(|r| r.get(0));
        total += client
            .execute(
                "DELETE FROM event_ids
                  WHERE occurred_at >= $1 AND occurred_at < $2 AND occurred_at <= COALESCE($3, $2)",
                &[&from, &cutoff, &edge],
            )
            .await?;
        let Some(edge) = edge else {
            return Ok((total, false));
        };
        if started.elapsed() >= budget {
            return Ok((total, true));
        }
        from = edge;
        tokio::time::sleep(batch.elapsed() * PAUSE_PER_BATCH).await;
    }
}

/// What [`apply`] would do, without changing anything: the partitions it
/// would drop (and any left detached) and the rows past the cutoff per
/// table (counted).
pub async fn plan(
    client: &impl deadpool_postgres::GenericClient,
    retention: Duration,
    now: SystemTime,
) -> Result<(Vec<String>, Vec<(&'static str, i64)>), StoreError> {
    let cutoff = now - retention;
    let parts = crate::partitions::list(client).await?;
    let mut drop: Vec<String> = parts
        .iter()
        .filter(|p| p.to.is_some_and(|to| to <= cutoff))
        .map(|p| p.name.clone())
        .collect();
    drop.extend(detached(client).await?);
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
