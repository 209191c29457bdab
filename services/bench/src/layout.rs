//! Scenario `layout`: the processor's insert and GetEvent's read on the
//! partitioned layout (events by occurred_at, event_ids for uniqueness)
//! beside the layout before it (one table, primary key on event_id), in two
//! fresh databases of this PostgreSQL, in one run.
//!
//! The same rows go to both in batches of the processor's size from two
//! writers, rounds alternating which layout goes first (the machine is
//! shared and noisy: the ratio is the figure). A tenth of each round is
//! sent again (redeliveries), which must store nothing.

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
        Layout::Old => {
            macro_rules! column {
                ($field:ident) => {
                    batch.iter().map(|e| &e.$field).collect::<Vec<_>>()
                };
            }
            client
                .query(
                    OLD_INSERT,
                    &[
                        &column!(event_id),
                        &column!(event_type),
                        &column!(source),
                        &column!(user_id),
                        &column!(session_id),
                        &column!(occurred_at),
                        &column!(received_at),
                        &column!(payload_json),
                        &column!(partition),
                        &column!(offset),
                        &column!(trace_id),
                        &column!(schema_version),
                    ],
                )
                .await?
                .len() as u64
        }
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
    let retention =
        retention_under_load(&new, &prefix, total, per_round, now, options.quick).await?;
    checks.check(
        "layout: retention dropped every partition past it while writers inserted, and they stored every row",
        retention.created >= OLD_DAYS
            && retention.dropped == retention.created
            && retention.stored == per_round,
        format!(
            "{} of {} partitions dropped, {} of {per_round} rows stored meanwhile",
            retention.dropped, retention.created, retention.stored
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
    // Without redeliveries, as the retention round inserts.
    let new_rate = stored[1] as f64 / first_secs[1].max(1e-3);
    let lock_ms: Vec<f64> = retention
        .lock
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    let lock_max = lock_ms.iter().copied().fold(0.0, f64::max);
    println!(
        "retention under load: {} old partitions ({} rows) dropped in {:.2} s while {} rows were inserted at {} rows/s ({:.2} of the partitioned layout's rate without it); lock per partition max {lock_max:.1} ms, median {:.1} ms",
        retention.dropped,
        thousands(retention.old_rows as f64),
        retention.seconds,
        thousands(per_round as f64),
        thousands(retention.rate),
        ratio(retention.rate, new_rate),
        median(&lock_ms),
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
            "seconds": round3(retention.seconds),
            "lock_ms": lock_ms.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
            "lock_ms_max": round3(lock_max),
            "insert_rows_per_s": round3(retention.rate),
            "insert_ratio_to_without": ratio(retention.rate, new_rate),
        },
    }))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Days of old partitions retention drops under load.
const OLD_DAYS: usize = 10;

struct RetentionUnderLoad {
    /// Old partitions made (the days, aligned: one more than OLD_DAYS).
    created: usize,
    dropped: usize,
    old_rows: u64,
    seconds: f64,
    lock: Vec<Duration>,
    stored: u64,
    rate: f64,
}

/// Partitions of 35 to 44 days ago, filled; then retention (30 d) runs
/// while the writers insert another round into today's partition.
async fn retention_under_load(
    pool: &tributary_store::Pool,
    prefix: &str,
    from: u64,
    rows_now: u64,
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
    drop(client);
    let batch = rows(prefix, from, from + rows_now, now);
    let retention = async {
        // Let the writers get going first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        let report =
            tributary_store::retention::apply(pool, Duration::from_secs(30 * 86_400), now).await;
        (report, start.elapsed().as_secs_f64())
    };
    let (loaded, (report, seconds)) = tokio::join!(load(pool, Layout::New, &batch), retention);
    let (stored, load_s) = loaded?;
    let report = report.context("retention under load")?;
    Ok(RetentionUnderLoad {
        created,
        dropped: report.dropped.len(),
        old_rows,
        seconds,
        lock: report.dropped.iter().map(|(_, d)| *d).collect(),
        stored,
        rate: stored as f64 / load_s.max(1e-3),
    })
}
