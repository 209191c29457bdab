//! Scenario 4, query: `ListEvents` by user, by type within a one-hour window,
//! and a page deep in a type's result set, p50/p99 at each stored row count,
//! and `AggregateEvents` hourly counts by type (up to 1M rows) — each against
//! the same SQL run directly (the store's own query functions, no gRPC, no
//! service). The rows go into a separate database, tributary_bench, seeded
//! with COPY (indexes dropped during the load and built after it), and a
//! query service of its own serves it on a free port.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use serde_json::{Value, json};
use tributary_proto::v1::query_service_client::QueryServiceClient;
use tributary_proto::v1::{
    AggregateEventsRequest, Aggregation, BucketWidth, EventField, EventFilter as PbFilter, GroupBy,
    ListEventsRequest, Measure, TimeBucket, group_by,
};
use tributary_store::events::{Cursor, EventFilter, list_events};

use crate::conn::{Connection, plain};
use crate::data::{self, QUERY_SPAN, QUERY_TYPES, QUERY_USERS, Rng};
use crate::stats::{Samples, Table, ratio, round3, thousands};
use crate::{Checks, Options};

pub const DATABASE: &str = "tributary_bench";
const PAGE: i32 = 50;

/// The query service started for the bench database; killed when dropped.
struct QueryProcess {
    child: tokio::process::Child,
    url: String,
}

impl QueryProcess {
    async fn start(binary: &std::path::Path, database_url: &str) -> anyhow::Result<Self> {
        let grpc = crate::free_port()?;
        let http = crate::free_port()?;
        let child = crate::service_command(binary)
            .env("TRIBUTARY_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
            .env("TRIBUTARY_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("TRIBUTARY_DATABASE_URL", database_url)
            // A private instance on loopback: keys would only add noise here
            // (the security scenario measures them).
            .env("TRIBUTARY_AUTH", "off")
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let url = format!("http://127.0.0.1:{grpc}");
        let ready = crate::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            let url = url.clone();
            async move {
                let ch = plain(&url).await.ok()?;
                QueryServiceClient::new(ch)
                    .list_events(ListEventsRequest {
                        page_size: 1,
                        ..Default::default()
                    })
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        anyhow::ensure!(
            ready.is_some(),
            "the bench query service did not answer within 30 s"
        );
        Ok(Self { child, url })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A fresh bench database with the events schema.
async fn fresh_database(
    options: &Options,
) -> anyhow::Result<(String, tributary_store::pool::Pool)> {
    let admin = crate::connect(&crate::with_database(&options.database_url, "postgres")).await?;
    // Two statements: DROP DATABASE refuses to run in the implicit
    // transaction of a multi-statement query.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .await
        .context("dropping the bench database")?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .context("creating the bench database")?;
    let url = crate::with_database(&options.database_url, DATABASE);
    let pool = tributary_store::pool::build(&tributary_store::pool::PoolConfig::new(url.clone()))?;
    tributary_store::migrate::run(&pool)
        .await
        .context("migrating the bench database")?;
    Ok((url, pool))
}

/// Adds rows `from..to` with COPY: the time partitions of the data set's
/// days are created first, the events indexes (on every partition) and
/// event_ids's are dropped and built again after (their definitions read
/// from the catalog).
async fn seed(
    db: &tokio_postgres::Client,
    pool: &tributary_store::Pool,
    from: u64,
    to: u64,
    end: SystemTime,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut client = pool.get().await.context("a bench database connection")?;
    tributary_store::partitions::ensure(&mut client, end - data::QUERY_SPAN, end)
        .await
        .context("creating the data set's partitions")?;
    // (name, definition) of every index of events and event_ids, read in
    // one query; event_ids's primary key goes as a constraint.
    let indexes: Vec<(String, String)> = db
        .query(
            "SELECT indexname, indexdef FROM pg_indexes
              WHERE schemaname = current_schema() AND tablename IN ('events', 'event_ids')
                AND indexname <> 'event_ids_pkey'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, _) in &indexes {
        db.batch_execute(&format!("DROP INDEX {name}")).await?;
    }
    db.batch_execute("ALTER TABLE event_ids DROP CONSTRAINT event_ids_pkey")
        .await?;
    let sink = db
        .copy_in::<_, Bytes>(&format!("COPY events ({}) FROM STDIN", data::COPY_COLUMNS))
        .await?;
    futures_util::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 20);
    for n in from..to {
        data::query_row(&mut buf, n, end);
        if buf.len() >= 1 << 20 {
            futures_util::SinkExt::send(&mut sink, Bytes::from(std::mem::take(&mut buf))).await?;
            buf.reserve(1 << 20);
        }
    }
    if !buf.is_empty() {
        futures_util::SinkExt::send(&mut sink, Bytes::from(buf)).await?;
    }
    sink.finish().await.context("seeding with COPY")?;
    db.execute(
        "INSERT INTO event_ids (event_id, occurred_at)
         SELECT event_id, occurred_at FROM events WHERE event_id >= $1 AND event_id < $2",
        &[&format!("q{from:010}"), &format!("q{to:010}")],
    )
    .await
    .context("filling event_ids")?;
    db.batch_execute(
        "SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 2;
         ALTER TABLE event_ids ADD PRIMARY KEY (event_id)",
    )
    .await?;
    for (_, def) in &indexes {
        db.batch_execute(def).await.with_context(|| def.clone())?;
    }
    // One statement each: VACUUM refuses the implicit transaction of a
    // multi-statement query.
    for table in ["events", "event_ids"] {
        db.batch_execute(&format!("VACUUM ANALYZE {table}")).await?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// Latencies of ours and of the baseline for one query shape.
#[derive(Default)]
struct Pair {
    ours: Samples,
    base: Samples,
}

impl Pair {
    fn report(&mut self) -> Value {
        let (o50, o99) = (self.ours.quantile_ms(0.5), self.ours.quantile_ms(0.99));
        let (b50, b99) = (self.base.quantile_ms(0.5), self.base.quantile_ms(0.99));
        json!({
            "requests": self.ours.len(),
            "p50_ms": round3(o50),
            "p99_ms": round3(o99),
            "baseline": { "path": "the same SQL, direct", "p50_ms": round3(b50), "p99_ms": round3(b99) },
            "p99_ratio": ratio(o99, b99),
        })
    }
}

fn ids(events: &[tributary_proto::v1::StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e.event
                .as_ref()
                .map(|e| e.event_id.clone())
                .unwrap_or_default()
        })
        .collect()
}

struct Shapes<'a> {
    query: QueryServiceClient<Connection>,
    db: &'a tributary_store::pool::Client,
    end: SystemTime,
    requests: usize,
    /// Which of the two runs first this time: they alternate, because the
    /// first one reads the pages into PostgreSQL's cache for the second.
    sql_first: bool,
}

impl Shapes<'_> {
    /// One page through the service and the same page through the SQL, each
    /// timed into `pair`; answers the event ids of both pages.
    async fn list_both(
        &mut self,
        pair: &mut Pair,
        ours: PbFilter,
        token: &str,
        sql: &EventFilter,
        after: Option<&Cursor>,
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        self.sql_first = !self.sql_first;
        let mut base = Vec::new();
        if self.sql_first {
            let t = Instant::now();
            base = list_events(self.db, sql, after, i64::from(PAGE) + 1).await?;
            pair.base.push(t.elapsed());
        }
        let t = Instant::now();
        let page = self
            .query
            .list_events(ListEventsRequest {
                filter: Some(ours),
                page_size: PAGE,
                page_token: token.to_owned(),
            })
            .await?
            .into_inner();
        pair.ours.push(t.elapsed());
        if !self.sql_first {
            let t = Instant::now();
            base = list_events(self.db, sql, after, i64::from(PAGE) + 1).await?;
            pair.base.push(t.elapsed());
        }
        let want = base
            .iter()
            .take(PAGE as usize)
            .map(|r| r.event_id.clone())
            .collect();
        Ok((ids(&page.events), want))
    }

    async fn by_user(&mut self, checks: &mut Checks, rows: u64) -> anyhow::Result<Pair> {
        let mut pair = Pair::default();
        let mut rng = Rng::new(rows ^ 0x5eed);
        for i in 0..self.requests {
            // The first user surely has events (the checked request).
            let user = if i == 0 {
                data::query_event(rows / 2, self.end).user_id
            } else {
                format!("user{}", rng.below(QUERY_USERS))
            };
            let pb = PbFilter {
                user_id: user.clone(),
                ..Default::default()
            };
            let filter = EventFilter {
                user_id: Some(user.clone()),
                ..Default::default()
            };
            let (got, want) = self.list_both(&mut pair, pb, "", &filter, None).await?;
            if i == 0 {
                checks.check(
                    format!("query {rows} rows: ListEvents by user answers the SQL's rows"),
                    got == want && !want.is_empty(),
                    format!("{user}: {} events", want.len()),
                );
            }
        }
        Ok(pair)
    }

    async fn by_type_window(&mut self, checks: &mut Checks, rows: u64) -> anyhow::Result<Pair> {
        let mut pair = Pair::default();
        let mut rng = Rng::new(rows ^ 0x7199);
        let hour = Duration::from_secs(3600);
        for i in 0..self.requests {
            let ty = format!("type.{:02}", rng.below(QUERY_TYPES));
            let back = Duration::from_secs(rng.below(QUERY_SPAN.as_secs() - 3600) + 3600);
            let (after, before) = (self.end - back, self.end - back + hour);
            let pb = PbFilter {
                event_types: vec![ty.clone()],
                occurred_after: Some(ts(after)),
                occurred_before: Some(ts(before)),
                ..Default::default()
            };
            let filter = EventFilter {
                event_types: vec![ty.clone()],
                occurred_after: Some(after),
                occurred_before: Some(before),
                ..Default::default()
            };
            let (got, want) = self.list_both(&mut pair, pb, "", &filter, None).await?;
            if i == 0 {
                checks.check(
                    format!(
                        "query {rows} rows: ListEvents by type and hour answers the SQL's rows"
                    ),
                    got == want,
                    format!("{ty}: {} events", want.len()),
                );
            }
        }
        Ok(pair)
    }

    /// Walks `depth` pages into a type's results, then fetches that page
    /// again and again (ours with the page token, the SQL with the cursor).
    async fn deep_page(
        &mut self,
        checks: &mut Checks,
        rows: u64,
        depth: usize,
    ) -> anyhow::Result<Pair> {
        let ty = "type.07".to_owned();
        let filter_pb = PbFilter {
            event_types: vec![ty.clone()],
            ..Default::default()
        };
        let mut token = String::new();
        let mut last: Option<Cursor> = None;
        for _ in 1..depth {
            let page = self
                .query
                .list_events(ListEventsRequest {
                    filter: Some(filter_pb.clone()),
                    page_size: PAGE,
                    page_token: token.clone(),
                })
                .await?
                .into_inner();
            let Some(e) = page.events.last().and_then(|s| s.event.clone()) else {
                break;
            };
            last = Some(Cursor {
                occurred_at: e
                    .occurred_at
                    .and_then(|t| SystemTime::try_from(t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                event_id: e.event_id,
            });
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let filter = EventFilter {
            event_types: vec![ty.clone()],
            ..Default::default()
        };
        let mut pair = Pair::default();
        for i in 0..self.requests {
            let (got, want) = self
                .list_both(&mut pair, filter_pb.clone(), &token, &filter, last.as_ref())
                .await?;
            if i == 0 {
                let offset: i64 = self
                    .db
                    .query_one(
                        "SELECT count(*) FROM events WHERE event_type = $1 AND (occurred_at, event_id) >= ($2, $3)",
                        &[
                            &ty,
                            &last.as_ref().map(|c| c.occurred_at).unwrap_or(SystemTime::UNIX_EPOCH),
                            &last.as_ref().map(|c| c.event_id.clone()).unwrap_or_default(),
                        ],
                    )
                    .await?
                    .get(0);
                checks.check(
                    format!("query {rows} rows: page {depth} of a type answers the SQL's rows after {offset} newer ones"),
                    got == want
                        && !want.is_empty()
                        && offset == (depth as i64 - 1) * i64::from(PAGE),
                    format!("{} events on the page", want.len()),
                );
            }
        }
        Ok(pair)
    }

    async fn hourly(
        &mut self,
        checks: &mut Checks,
        rows: u64,
        requests: usize,
    ) -> anyhow::Result<Pair> {
        let request = AggregateEventsRequest {
            filter: None,
            group_by: vec![
                GroupBy {
                    key: Some(group_by::Key::Field(EventField::EventType as i32)),
                },
                GroupBy {
                    key: Some(group_by::Key::TimeBucket(TimeBucket {
                        width: BucketWidth::Hour as i32,
                        time_zone: String::new(),
                        payload_path: String::new(),
                    })),
                },
            ],
            measures: vec![Measure {
                aggregation: Aggregation::Count as i32,
                payload_path: String::new(),
            }],
            limit: 10_000,
        };
        let mut pair = Pair::default();
        for i in 0..requests {
            let t = Instant::now();
            let ours = self
                .query
                .aggregate_events(request.clone())
                .await?
                .into_inner();
            pair.ours.push(t.elapsed());
            let t = Instant::now();
            let base = self
                .db
                .query(
                    "SELECT event_type, date_trunc('hour', occurred_at, 'UTC') AS hour, count(*)
                       FROM events GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 10000",
                    &[],
                )
                .await?;
            pair.base.push(t.elapsed());
            if i == 0 {
                let total: f64 = ours
                    .rows
                    .iter()
                    .filter_map(|r| r.values.first())
                    .filter_map(|v| match &v.kind {
                        Some(prost_types::value::Kind::NumberValue(n)) => Some(*n),
                        Some(prost_types::value::Kind::StringValue(s)) => s.parse().ok(),
                        _ => None,
                    })
                    .sum();
                let base_total: i64 = base.iter().map(|r| r.get::<_, i64>(2)).sum();
                checks.check(
                    format!("query {rows} rows: AggregateEvents hourly counts by type add up to every row, as the SQL's"),
                    ours.rows.len() == base.len() && total as i64 == base_total && base_total as u64 == rows,
                    format!("{} groups, {} counted", ours.rows.len(), total),
                );
            }
        }
        Ok(pair)
    }
}

pub async fn run(options: &Options, checks: &mut Checks) -> anyhow::Result<Value> {
    let binary = crate::bin_dir(options)?.join("tributary-query");
    let (url, pool) = fresh_database(options).await?;
    let db = crate::connect(&url).await?;
    let sql = pool.get().await.context("a bench database connection")?;
    let end = SystemTime::now();
    let mut loaded = 0u64;
    let mut sizes = Vec::new();
    let mut table = Table::new(&[
        "rows",
        "shape",
        "ours p50 ms",
        "ours p99 ms",
        "SQL p50 ms",
        "SQL p99 ms",
    ]);
    for rows in options.query_rows() {
        let seed_s = seed(&db, &pool, loaded, rows, end).await?;
        loaded = rows;
        println!("seeded {} rows in {seed_s:.1} s", thousands(rows as f64));
        let service = QueryProcess::start(&binary, &url).await?;
        let mut shapes = Shapes {
            query: QueryServiceClient::new(plain(&service.url).await?),
            db: &sql,
            end,
            requests: options.query_requests(),
            sql_first: false,
        };
        let depth = if options.quick { 5 } else { 100 };
        let mut by_user = shapes.by_user(checks, rows).await?;
        let mut by_type = shapes.by_type_window(checks, rows).await?;
        let mut deep = shapes.deep_page(checks, rows, depth).await?;
        let mut size = json!({
            "rows": rows,
            "seed_s": round3(seed_s),
            "list_by_user": by_user.report(),
            "list_by_type_window": by_type.report(),
            "deep_page": deep.report(),
        });
        size["deep_page"]["page"] = json!(depth);
        let mut shapes_done = vec![
            (
                "ListEvents by user".to_owned(),
                size["list_by_user"].clone(),
            ),
            (
                "ListEvents by type, 1 h window".to_owned(),
                size["list_by_type_window"].clone(),
            ),
            (
                format!("ListEvents page {depth} of a type"),
                size["deep_page"].clone(),
            ),
        ];
        if rows <= 1_000_000 {
            let mut agg = shapes
                .hourly(checks, rows, if options.quick { 3 } else { 20 })
                .await?;
            size["aggregate_hourly"] = agg.report();
            shapes_done.push((
                "AggregateEvents by type and hour, COUNT".to_owned(),
                size["aggregate_hourly"].clone(),
            ));
        }
        service.stop().await;
        for (name, v) in shapes_done {
            table.row(vec![
                thousands(rows as f64),
                name,
                format!("{:.2}", v["p50_ms"].as_f64().unwrap_or(0.0)),
                format!("{:.2}", v["p99_ms"].as_f64().unwrap_or(0.0)),
                format!("{:.2}", v["baseline"]["p50_ms"].as_f64().unwrap_or(0.0)),
                format!("{:.2}", v["baseline"]["p99_ms"].as_f64().unwrap_or(0.0)),
            ]);
        }
        sizes.push(size);
    }
    println!(
        "\n## Query: {} requests per shape, one client, page size {PAGE} (database {DATABASE})\n\n{}\n",
        options.query_requests(),
        table.render()
    );
    Ok(json!({ "database": DATABASE, "page_size": PAGE, "sizes": sizes }))
}
