//! The store's maintenance loop: at start and every `--maintenance-interval`,
//! the time partitions of the next days are created and retention is
//! applied (store::partitions, store::retention). With several admin
//! replicas, one works at a time (a session advisory lock, tried, never
//! waited for); the others skip that round.

use std::time::{Duration, SystemTime};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tributary_platform::shutdown::CancellationToken;
use tributary_store::Pool;

/// Distinct from the migrators' lock: maintenance and a migration may wait
/// on each other inside the store's own steps, never here.
const MAINTENANCE_LOCK: i64 = 0x7472_6962_6d61_696e; // "tribmain"

pub struct Metrics {
    runs: IntCounterVec,
    ahead: IntGauge,
    partitions: IntGauge,
    dropped: IntCounter,
    deleted: IntCounterVec,
    lock: Histogram,
    last_success: IntGauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            runs: IntCounterVec::new(
                Opts::new(
                    "tributary_maintenance_runs_total",
                    "Maintenance rounds by outcome (ok, failed, skipped: another replica held the lock).",
                ),
                &["outcome"],
            )?,
            ahead: IntGauge::new(
                "tributary_events_partitions_ahead_seconds",
                "How far past now the newest range partition of events reaches (seconds; rows beyond it go to the default partition).",
            )?,
            partitions: IntGauge::new(
                "tributary_events_partitions",
                "Partitions of events, the default one included.",
            )?,
            dropped: IntCounter::new(
                "tributary_retention_partitions_dropped_total",
                "Partitions of events detached and dropped past retention.",
            )?,
            deleted: IntCounterVec::new(
                Opts::new(
                    "tributary_retention_rows_deleted_total",
                    "Rows deleted past retention in bounded batches, by table.",
                ),
                &["table"],
            )?,
            lock: Histogram::with_opts(
                HistogramOpts::new(
                    "tributary_retention_detach_lock_seconds",
                    "How long each round's DETACH of the partitions past retention (one transaction for all) held the lock on events, from asking for it to the commit.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )?,
            last_success: IntGauge::new(
                "tributary_maintenance_last_success_timestamp_seconds",
                "When a maintenance round last completed (unix seconds).",
            )?,
        };
        registry.register(Box::new(m.runs.clone()))?;
        registry.register(Box::new(m.ahead.clone()))?;
        registry.register(Box::new(m.partitions.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.deleted.clone()))?;
        registry.register(Box::new(m.lock.clone()))?;
        registry.register(Box::new(m.last_success.clone()))?;
        Ok(m)
    }
}

/// What a round needs.
pub struct Settings {
    pub interval: Duration,
    /// `None`: keep everything.
    pub retention: Option<Duration>,
}

/// How a round ended.
enum Round {
    Done,
    /// Retention's budget ran out with rows past it left: the next round
    /// follows at once.
    Unfinished,
    /// Another replica holds the lock.
    Skipped,
}

/// The pause before the next round when the last one left rows to delete.
const CATCH_UP_PAUSE: Duration = Duration::from_secs(1);

/// Runs rounds until `token` is cancelled.
pub async fn run(pool: Pool, settings: Settings, metrics: Metrics, token: CancellationToken) {
    loop {
        let (outcome, pause) = match round(&pool, &settings, &metrics).await {
            Ok(Round::Done) => ("ok", settings.interval),
            Ok(Round::Unfinished) => ("ok", CATCH_UP_PAUSE),
            Ok(Round::Skipped) => ("skipped", settings.interval),
            Err(e) => {
                tracing::warn!(error = %tributary_store::error_chain(&e), "store maintenance failed; trying again next round");
                ("failed", settings.interval)
            }
        };
        metrics.runs.with_label_values(&[outcome]).inc();
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One round.
async fn round(
    pool: &Pool,
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Round, tributary_store::StoreError> {
    let mut client = pool.get().await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(Round::Skipped);
    }
    let result = work(pool, &mut client, settings, metrics).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
        .await;
    let round = result?;
    unlock?;
    Ok(round)
}

async fn work(
    pool: &Pool,
    client: &mut tributary_store::pool::Client,
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Round, tributary_store::StoreError> {
    let now = SystemTime::now();
    tributary_store::partitions::ensure_ahead(client, now).await?;
    let mut round = Round::Done;
    if let Some(retention) = settings.retention {
        // Deleting is paced (a twentieth of one connection's time at most), so a
        // table may take up to an interval per round, and a round that
        // leaves rows is followed at once: the store keeps up with more
        // rows a day than a short budget would allow.
        let budget = settings
            .interval
            .max(tributary_store::retention::DEFAULT_BUDGET);
        let report = tributary_store::retention::apply(pool, retention, now, budget).await?;
        metrics.dropped.inc_by(report.dropped.len() as u64);
        if let Some(held) = report.detach_lock {
            metrics.lock.observe(held.as_secs_f64());
        }
        for (table, n) in &report.deleted {
            metrics.deleted.with_label_values(&[table]).inc_by(*n);
            if *n > 0 {
                tracing::info!(table, rows = n, "deleted rows past retention");
            }
        }
        if report.unfinished {
            round = Round::Unfinished;
        }
        if !report.failed.is_empty() {
            update_gauges(client, metrics).await?;
            return Err(tributary_store::StoreError::Invariant(
                "a partition past retention could not be dropped this round (its lock was busy)",
            ));
        }
    }
    update_gauges(client, metrics).await?;
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    metrics
        .last_success
        .set(i64::try_from(unix).unwrap_or(i64::MAX));
    Ok(round)
}

/// How many partitions there are and how far ahead the newest reaches.
async fn update_gauges(
    client: &tributary_store::pool::Client,
    metrics: &Metrics,
) -> Result<(), tributary_store::StoreError> {
    let parts = tributary_store::partitions::list(client).await?;
    metrics
        .partitions
        .set(i64::try_from(parts.len()).unwrap_or(i64::MAX));
    if let Some(newest) = parts.iter().filter_map(|p| p.to).max() {
        let ahead = match newest.duration_since(SystemTime::now()) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        metrics.ahead.set(ahead);
    }
    Ok(())
}
