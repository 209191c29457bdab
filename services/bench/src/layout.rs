//! Scenario `layout`: the processor's insert and GetEvent's read on the
//! partitioned layout (events by occurred_at, event_ids for uniqueness)
//! beside the layout before it (one table, primary key on event_id), in two
//! fresh databases of this PostgreSQL, in one run.
//!
//! The same rows go to both in batches of the processor's size from two
//! writers, rounds alternating which layout goes first (the machine is
//! shared and noisy: the ratio is the figure). A tenth of each round is
//! sent again (redeliveries), which must store nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::{Value, json};
use tributary_store::events::NewEvent;

use crate::stats::{Samples, Table, ratio, round3, thousands};
use crate::{Checks, Options, data};

const OLD_DB: &str = "tributary_bench_layout_old";
const NEW_DB: &str = "tributary_bench_layout_new";
/// The last migration before partitions.
pub(crate) const BEFORE_PARTITIONS: &str = "20261201130000_subscription_dead_letters";
const BATCH: usize = 500;
const WRITERS: usize = 2;

/// The processor's statement before partitions (services/store events.rs at
/// 8a51225): the baseline.
const OLD_INSERT: &str = "INSERT INTO events (event_id, event_type, source, user_id, session_id,
                                 occurred_at, received_at, payload, kafka_partition,
                                 kafka_offset, trace_id, schema_version)
             SELECT e.event_id, e.event_type, e.source, e.user_id, e.session_id,
                    e.occurred_at, e.received_at, e.payload::jsonb, e.kafka_partition,
                    e.kafka_offset, e.trace_id, e.schema_version
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::timestamptz[], $7::timestamptz[], $8::text[], $9::int4[],
                         $10::int8[], $11::text[], $12::int4[])
                  AS e(event_id, event_type, source, user_id, session_id, occurred_at,
                       received_at, payload, kafka_partition, kafka_offset, trace_id,
                       schema_version)
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    Old,
    New,
}

pub(crate) async fn fresh(options: &Options, name: &str) -> anyhow::Result<tributary_store::Pool> {
    let admin = crate::connect(&crate::with_database(&options.database_url, "postgres")).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .with_context(|| format!("dropping {name}"))?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .with_context(|| format!("creating {name}"))?;
    let url = crate::with_database(&options.database_url, name);
    let mut config = tributary_store::PoolConfig::new(url);
    config.max_size = WRITERS + 1;
    Ok(tributary_store::pool::build(&config)?)
}

pub(crate) async fn drop_db(options: &Options, name: &str) {
    if let Ok(admin) =
        crate::connect(&crate::with_database(&options.database_url, "postgres")).await
    {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

fn rows(prefix: &str, from: u64, to: u64, now: SystemTime) -> Vec<NewEvent> {
    (from..to)
        .map(|n| {
            let e = data::event(prefix, n, now);
            NewEvent {
                event_id: e.event_id,
                event_type: e.event_type,
                source: e.source,
                user_id: e.user_id,
                session_id: e.session_id,
                occurred_at: now - Duration::from_millis(n % 60_000),
                received_at: now,
                payload_json: data::payload_json(n),
                partition: (n % 6) as i32,
                offset: i64::try_from(n).unwrap_or(i64::MAX),
                trace_id: String::new(),
                schema_version: 0,
            }
        })
        .collect()
}

async fn insert(
    client: &tributary_store::pool::Client,
    layout: Layout,
    batch: &[NewEvent],
) -> anyhow::Result<u64> {
    Ok(match layout {
        Layout::New => tributary_store::events::insert_events(client, batch)
            .await?
            .len() as u64,
        Layout::Old => tributary_store::events::with_columns(client, OLD_INSERT, batch)
            .await?
            .len() as u64,
    })
}

/// Inserts `rows` from [`WRITERS`] writers; answers (inserted, seconds).
async fn load(
    pool: &tributary_store::Pool,
    layout: Layout,
    rows: &[NewEvent],
) -> anyhow::Result<(u64, f64)> {
    let start = Instant::now();
    let per = rows.len().div_ceil(WRITERS);
    let mut inserted = 0;
    let results = futures_util::future::join_all(rows.chunks(per.max(1)).map(|part| async move {
        let client = pool.get().await?;
        let mut n = 0;
        for batch in part.chunks(BATCH) {
            n += insert(&client, layout, batch).await?;
        }
        anyhow::Ok(n)
    }))
    .await;
    for r in results {
        inserted += r?;
    }
    Ok((inserted, start.elapsed().as_secs_f64()))
}

async fn get_latency(
    pool: &tributary_store::Pool,
    layout: Layout,
    ids: &[String],
) -> anyhow::Result<(Samples, usize)> {
    let client = pool.get().await?;
    let mut samples = Samples::default();
    let mut found = 0;
    for id in ids {
        let start = Instant::now();
        let hit = match layout {
            Layout::New => tributary_store::events::get_event(&client, id)
                .await?
                .is_some(),
            Layout::Old => client
                .query_opt("SELECT * FROM events WHERE event_id = $1", &[id])
                .await?
                .is_some(),
        };
        samples.push(start.elapsed());
        found += usize::from(hit);
    }
    Ok((samples, found))
}

pub async fn run(options: &Options, checks: &mut Checks, run_id: &str) -> anyhow::Result<Value> {
    let result = measure(options, checks, run_id).await;
    drop_db(options, OLD_DB).await;
    drop_db(options, NEW_DB).await;
    result
}

async fn measure(options: &Options, checks: &mut Checks, run_id: &str) -> anyhow::Result<Value> {
    let old = fresh(options, OLD_DB).await?;
    tributary_store::migrate::run_until(&old, BEFORE_PARTITIONS)
        .await
        .context("migrating the old-layout database")?;
    let new = fresh(options, NEW_DB).await?;
    tributary_store::migrate::run(&new)
        .await
        .context("migrating the partitioned database")?;

    let (rounds, per_round): (u64, u64) = if options.quick {
        (2, 5_000)
    } else {
        (6, 50_000)
    };
    let now = SystemTime::now();
    let prefix = format!("{run_id}.l.");
    let mut secs = [0.0f64; 2];
    let mut stored = [0u64; 2];
    let mut again = [0u64; 2];
    let mut first_secs = [0.0f64; 2];
    for round in 0..rounds {
        let batch = rows(&prefix, round * per_round, (round + 1) * per_round, now);
        let redelivered = &batch[..batch.len() / 10];
        let order = if round % 2 == 0 {
            [Layout::Old, Layout::New]
        } else {
            [Layout::New, Layout::Old]
        };
        for layout in order {
            let (pool, i) = match layout {
                Layout::Old => (&old, 0),
                Layout::New => (&new, 1),
            };
            let (n, s) = load(pool, layout, &batch).await?;
            let (dup, s2) = load(pool, layout, redelivered).await?;
            secs[i] += s + s2;
            first_secs[i] += s;
            stored[i] += n;
            again[i] += dup;
        }
    }
    let total = rounds * per_round;
    let retention = retention_under_load(&new, &prefix, total, now, options.quick).await?;
    checks.check(
        "layout: retention dropped every partition past it and their ids while writers inserted, and they stored every row",
        retention.created >= OLD_DAYS
            && retention.dropped == retention.created
            && retention.ids_deleted == retention.old_rows
            && retention.stored == retention.sent
            && retention.sent > 0,
        format!(
            "{} of {} partitions dropped, {} of {} old ids deleted, {} of {} rows stored meanwhile",
            retention.dropped,
            retention.created,
            retention.ids_deleted,
            retention.old_rows,
            retention.stored,
            retention.sent
        ),
    );
    for (i, name) in ["before partitions", "partitioned"].iter().enumerate() {
        checks.check(
            format!("layout ({name}): every row stored once, redeliveries store nothing"),
            stored[i] == total && again[i] == 0,
            format!("{} of {total} stored, {} stored again", stored[i], again[i]),
        );
    }
    let rate = |i: usize| (total + total / 10) as f64 / secs[i].max(1e-3);

    // Point reads by id (GetEvent), the same ids on both.
    let ids: Vec<String> = (0..if options.quick { 200 } else { 2_000 })
        .map(|k| data::event_id(&prefix, (k * 7919) % total))
        .collect();
    let (mut old_get, old_found) = get_latency(&old, Layout::Old, &ids).await?;
    let (mut new_get, new_found) = get_latency(&new, Layout::New, &ids).await?;
    checks.check(
        "layout: GetEvent finds every id on both layouts",
        old_found == ids.len() && new_found == ids.len(),
        format!(
            "{old_found} and {new_found} of {} found (before partitions, partitioned)",
            ids.len()
        ),
    );

    let mut t = Table::new(&[
        "layout",
        "rows/s (inserts + redeliveries)",
        "GetEvent p50 / p99 ms",
    ]);
    t.row(vec![
        "before partitions (baseline)".into(),
        thousands(rate(0)),
        format!(
            "{:.3} / {:.3}",
            old_get.quantile_ms(0.5),
            old_get.quantile_ms(0.99)
        ),
    ]);
    t.row(vec![
        "partitioned + event_ids".into(),
        thousands(rate(1)),
        format!(
            "{:.3} / {:.3}",
            new_get.quantile_ms(0.5),
            new_get.quantile_ms(0.99)
        ),
    ]);
    let lock_ms = retention.lock.as_secs_f64() * 1e3;
    println!(
        "retention under load: {} old partitions ({} rows, {} ids) detached and dropped in {:.2} s while {WRITERS} writers inserted at {} rows/s, {:.2} of their {} rows/s in the windows before and after; one DETACH transaction held the lock on events {lock_ms:.1} ms",
        retention.dropped,
        thousands(retention.old_rows as f64),
        thousands(retention.ids_deleted as f64),
        retention.seconds,
        thousands(retention.during),
        ratio(retention.during, retention.around),
        thousands(retention.around),
    );
    println!(
        "  (before: {} rows/s, after: {} rows/s)",
        thousands(retention.before),
        thousands(retention.after)
    );
    println!(
        "\n## Layout: {total} rows in batches of {BATCH} from {WRITERS} writers, plus 10% redelivered, {rounds} alternating rounds (insert ratio {:.2})\n\n{}\n",
        ratio(rate(1), rate(0)),
        t.render()
    );
    Ok(json!({
        "rows": total,
        "batch": BATCH,
        "writers": WRITERS,
        "rounds": rounds,
        "partitioned": {
            "rows_per_s": round3(rate(1)),
            "seconds": round3(secs[1]),
            "get_p50_ms": round3(new_get.quantile_ms(0.5)),
            "get_p99_ms": round3(new_get.quantile_ms(0.99)),
        },
        "baseline": {
            "path": "the same rows into the layout before partitions (one table, primary key on event_id), same process",
            "rows_per_s": round3(rate(0)),
            "seconds": round3(secs[0]),
            "get_p50_ms": round3(old_get.quantile_ms(0.5)),
            "get_p99_ms": round3(old_get.quantile_ms(0.99)),
        },
        "ratio": ratio(rate(1), rate(0)),
        "retention_under_load": {
            "partitions_dropped": retention.dropped,
            "old_rows": retention.old_rows,
            "ids_deleted": retention.ids_deleted,
            "seconds": round3(retention.seconds),
            "detach_lock_ms": round3(lock_ms),
            "rows_inserted_meanwhile": retention.stored,
            "insert_rows_per_s": round3(retention.during),
            "baseline": {
                "path": "the same writers' rate in the windows just before and just after retention ran, same process",
                "insert_rows_per_s": round3(retention.around),
            },
            "insert_ratio_to_without": ratio(retention.during, retention.around),
        },
    }))
}

/// Days of old partitions retention drops under load.
const OLD_DAYS: usize = 10;

struct RetentionUnderLoad {
    /// Old partitions made (the days, aligned: one more than OLD_DAYS).
    created: usize,
    dropped: usize,
    old_rows: u64,
    /// event_ids rows retention deleted (the dropped days' ids).
    ids_deleted: u64,
    seconds: f64,
    /// The DETACH transaction's lock on events (all partitions at once).
    lock: Duration,
    /// Rows the writers sent and stored, in all three windows.
    sent: u64,
    stored: u64,
    /// Insert rate while retention ran, and in the windows before and after.
    during: f64,
    around: f64,
    before: f64,
    after: f64,
}

/// Writers insert batches into today's partition until `stop`; answers the
/// rows sent and each batch's (end, rows stored).
async fn load_until(
    pool: &tributary_store::Pool,
    prefix: &str,
    from: u64,
    now: SystemTime,
    stop: &AtomicBool,
) -> anyhow::Result<(u64, Vec<(Instant, u64)>)> {
    let next = AtomicU64::new(0);
    let writers = futures_util::future::join_all((0..WRITERS).map(|_| async {
        let client = pool.get().await?;
        let mut done = Vec::new();
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let first = from + next.fetch_add(1, Ordering::Relaxed) * BATCH as u64;
            let batch = rows(prefix, first, first + BATCH as u64, now);
            sent += batch.len() as u64;
            let n = insert(&client, Layout::New, &batch).await?;
            done.push((Instant::now(), n));
        }
        anyhow::Ok((sent, done))
    }))
    .await;
    let (mut sent, mut done) = (0, Vec::new());
    for w in writers {
        let (s, d) = w?;
        sent += s;
        done.extend(d);
    }
    Ok((sent, done))
}

/// Rows per second of the batches that ended in `[from, to)`.
fn rate_in(done: &[(Instant, u64)], from: Instant, to: Instant) -> f64 {
    let rows: u64 = done
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, n)| n)
        .sum();
    rows as f64 / to.duration_since(from).as_secs_f64().max(1e-3)
}

/// Partitions of 35 to 44 days ago, filled; then the writers insert into
/// today's partition for a window, retention (30 d) runs while they go on,
/// and they insert for another window after it: their rate while it ran
/// beside their rate in the windows around it.
async fn retention_under_load(
    pool: &tributary_store::Pool,
    prefix: &str,
    from: u64,
    now: SystemTime,
    quick: bool,
) -> anyhow::Result<RetentionUnderLoad> {
    let day = Duration::from_secs(86_400);
    let oldest = now - day * 44;
    let created = {
        let mut client = pool.get().await?;
        tributary_store::partitions::ensure(&mut client, oldest, now - day * 34)
            .await
            .context("creating old partitions")?
            .len()
    };
    let per_day: i64 = if quick { 2_000 } else { 50_000 };
    let client = pool.get().await?;
    let old_rows = client
        .execute(
            "WITH rows AS (
                 SELECT 'old.' || g AS id,
                        $1::timestamptz + (g % $2::int8) * interval '1 day' + (g % 86400) * interval '1 second' AS at
                 FROM generate_series(1::int8, $2::int8 * $3::int8) g
             ), ids AS (
                 INSERT INTO event_ids (event_id, occurred_at) SELECT id, at FROM rows
             )
             INSERT INTO events (event_id, event_type, occurred_at, received_at, payload,
                                 kafka_partition, kafka_offset, user_id)
             SELECT id, 'bench.old', at, at, '{\"old\": true}', 0, 0, 'u' || (length(id) % 7)
             FROM rows",
            &[&(oldest + Duration::from_secs(3600)), &(OLD_DAYS as i64), &per_day],
        )
        .await
        .context("filling old partitions")?;
    // As the maintenance round would find them: analysed, not freshly dirty.
    client
        .batch_execute("VACUUM ANALYZE event_ids")
        .await
        .context("vacuuming event_ids")?;
    drop(client);
    let window = Duration::from_secs(if quick { 1 } else { 3 });
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let retention = async {
        tokio::time::sleep(window).await;
        let start = Instant::now();
        let report = tributary_store::retention::apply(
            pool,
            Duration::from_secs(30 * 86_400),
            now,
            tributary_store::retention::DEFAULT_BUDGET,
        )
        .await;
        let end = Instant::now();
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        (report, start, end)
    };
    let (loaded, (report, start, end)) =
        tokio::join!(load_until(pool, prefix, from, now, &stop), retention);
    let (sent, done) = loaded?;
    let report = report.context("retention under load")?;
    // The first quarter of the first window is the writers' warm-up.
    let before = rate_in(&done, started + window / 4, start);
    let after = rate_in(&done, end, end + window);
    Ok(RetentionUnderLoad {
        created,
        dropped: report.dropped.len(),
        old_rows,
        ids_deleted: report
            .deleted
            .iter()
            .filter(|(t, _)| *t == "event_ids")
            .map(|(_, n)| n)
            .sum(),
        seconds: end.duration_since(start).as_secs_f64(),
        lock: report.detach_lock.unwrap_or_default(),
        sent,
        stored: done.iter().map(|(_, n)| n).sum(),
        during: rate_in(&done, start, end),
        around: (before + after) / 2.0,
        before,
        after,
    })
}
