//! Scenario 3, end to end, with the processor running. It first waits until
//! the processor has drained any earlier backlog (run as `--scenarios
//! ingest,e2e`, the ingest scenario's events), then measures the maximum
//! (clients publish batches of 100 as fast as ingest acknowledges them; the
//! rate is rows over first-received to last-persisted), then a steady load
//! of half that maximum, where every event's received → persisted time comes
//! from its row and sampled events are polled with `GetEvent` from the
//! moment ingest acknowledged them until they are visible.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::{Value, json};
use tributary_proto::v1::ingest_service_client::IngestServiceClient;
use tributary_proto::v1::query_service_client::QueryServiceClient;
use tributary_proto::v1::{GetEventRequest, PublishBatchRequest};

use crate::conn::Connection;
use crate::ingest::{Limit, Mode};
use crate::persist::{stored, wait_drained};
use crate::stats::{Samples, Table, round3, thousands};
use crate::topic::{self, EVENTS_TOPIC};
use crate::{Checks, Options, data, procs};

async fn ends(options: &Options) -> anyhow::Result<Vec<(i32, i64)>> {
    topic::ends(&options.kafka(), EVENTS_TOPIC).await
}

/// The events topic's end offsets now (for the scenarios' offset ranges).
pub async fn topic_ends(options: &Options) -> anyhow::Result<Vec<(i32, i64)>> {
    ends(options).await
}

/// Sends one batch; answers the events acknowledged and the first event's id.
async fn send_batch(
    client: &mut IngestServiceClient<Connection>,
    prefix: &str,
    first: u64,
    batch: usize,
) -> (u64, String) {
    let now = SystemTime::now();
    let events: Vec<_> = (0..batch as u64)
        .map(|i| data::event(prefix, first + i, now))
        .collect();
    let id = events
        .first()
        .map(|e| e.event_id.clone())
        .unwrap_or_default();
    match client.publish_batch(PublishBatchRequest { events }).await {
        Ok(r) => (u64::try_from(r.into_inner().accepted).unwrap_or(0), id),
        Err(_) => (0, id),
    }
}

/// Polls GetEvent until the event is visible; the time it took. The pause
/// between polls is a twentieth of the time waited so far (2 to 50 ms): the
/// figure is within 5% and, unlike a fixed 2 ms poll, the probes do not load
/// the query service and PostgreSQL the more the longer events take.
async fn probe(
    mut query: QueryServiceClient<Connection>,
    id: String,
    acked: Instant,
) -> Option<Duration> {
    let deadline = acked + Duration::from_secs(30);
    loop {
        match query
            .get_event(GetEventRequest {
                event_id: id.clone(),
            })
            .await
        {
            Ok(_) => return Some(acked.elapsed()),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return None;
        }
        let pause =
            (acked.elapsed() / 20).clamp(Duration::from_millis(2), Duration::from_millis(50));
        tokio::time::sleep(pause).await;
    }
}

/// Open loop: each client sends a batch of `batch` new events (ids
/// `<prefix><client>.<n>`) every `interval` for `seconds`, each tick's batch
/// by its own task, so a slow answer does not lower the offered load (no
/// coordinated omission). `on_ack(k, id, at)` runs in that task once the
/// client's k-th batch is acknowledged (id: its first event's; at: when).
/// Answers the events sent and acknowledged.
pub(crate) async fn open_loop<F, Fut>(
    channels: &[Connection],
    prefix: &str,
    batch: usize,
    interval: Duration,
    seconds: Duration,
    on_ack: F,
) -> (u64, u64)
where
    F: Fn(u64, String, Instant) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, ch) in channels.iter().enumerate() {
        let prefix = format!("{prefix}{c}.");
        let client = IngestServiceClient::new(ch.clone());
        let on_ack = on_ack.clone();
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(
                tokio::time::Instant::now() + interval.mul_f64(c as f64 / 4.0),
                interval,
            );
            let (mut sent, mut k) = (0u64, 0u64);
            let mut batches = Vec::new();
            while started.elapsed() < seconds {
                ticker.tick().await;
                let (mut client, prefix, first) = (client.clone(), prefix.clone(), sent);
                let on_ack = on_ack.clone();
                batches.push(tokio::spawn(async move {
                    let (a, id) = send_batch(&mut client, &prefix, first, batch).await;
                    if a > 0 {
                        on_ack(k, id, Instant::now()).await;
                    }
                    a
                }));
                sent += batch as u64;
                k += 1;
            }
            let mut acked = 0u64;
            for b in batches {
                acked += b.await.unwrap_or(0);
            }
            (sent, acked)
        }));
    }
    sum_counts(tasks).await
}

/// received_at → persisted_at of the run's rows from the offset ranges:
/// p50, p99 and p99.9 in milliseconds.
pub(crate) async fn received_to_persisted(
    db: &tokio_postgres::Client,
    run_id: &str,
    from: &[(i32, i64)],
    to: &[(i32, i64)],
) -> anyhow::Result<Value> {
    let condition = topic::run_rows(run_id, from, to);
    let row = db
        .query_one(
            &format!(
                "SELECT percentile_disc(ARRAY[0.5, 0.99, 0.999]::float8[]) WITHIN GROUP
                        (ORDER BY extract(epoch FROM persisted_at - received_at)::float8 * 1000)
                   FROM events WHERE {condition}"
            ),
            &[],
        )
        .await
        .context("received → persisted percentiles")?;
    let p: Vec<f64> = row.get::<_, Option<Vec<f64>>>(0).unwrap_or_default();
    Ok(json!({
        "p50": round3(p.first().copied().unwrap_or(0.0)),
        "p99": round3(p.get(1).copied().unwrap_or(0.0)),
        "p999": round3(p.get(2).copied().unwrap_or(0.0)),
    }))
}

/// Events sent and acknowledged by all clients (a failed client counts 0).
async fn sum_counts(tasks: Vec<tokio::task::JoinHandle<(u64, u64)>>) -> (u64, u64) {
    let (mut sent, mut acked) = (0, 0);
    for t in tasks {
        let (s, a) = t.await.unwrap_or((0, 0));
        sent += s;
        acked += a;
    }
    (sent, acked)
}

pub async fn run(
    options: &Options,
    checks: &mut Checks,
    run_id: &str,
) -> anyhow::Result<(Value, Value)> {
    let deployment = options.deployment();
    let db = crate::connect(&options.database_url).await?;
    let mut channels = Vec::new();
    for _ in 0..options.clients {
        channels.push(options.ingest_connection().await?);
    }
    let batch = if options.quick { 10 } else { 100 };

    // 0. An earlier backlog (the ingest scenario's events, when it ran
    // without persist) is drained first: inside the window it would be
    // counted against this scenario's maximum.
    let waited = Instant::now();
    wait_drained(options, Duration::from_secs(900)).await?;
    let backlog_drain_s = waited.elapsed().as_secs_f64();
    if backlog_drain_s > 1.0 {
        println!(
            "e2e: waited {backlog_drain_s:.1} s for the processor to drain an earlier backlog"
        );
    }

    // 1. The maximum, closed loop.
    let from = ends(options).await?;
    let before = deployment.snapshot();
    let mut tasks = Vec::new();
    for (c, ch) in channels.iter().enumerate() {
        let limit = Limit::for_mode(options, Mode::Batch(batch), options.e2e_seconds);
        let prefix = format!("{run_id}.m.{c}.");
        let mut client = IngestServiceClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut acked) = (0u64, 0u64);
            while limit.more(sent) {
                let (a, _) = send_batch(&mut client, &prefix, sent, batch).await;
                sent += batch as u64;
                acked += a;
            }
            (sent, acked)
        }));
    }
    let (sent, acked) = sum_counts(tasks).await;
    let publish_cpu = deployment.snapshot().cpu_since(&before);
    let footprint = procs::footprint_json(
        &deployment.snapshot(),
        &publish_cpu,
        &format!(
            "the end-to-end maximum run ({} clients, PublishBatch x{batch}, processor running)",
            options.clients
        ),
    );
    wait_drained(options, Duration::from_secs(300)).await?;
    let drained_cpu = deployment.snapshot().cpu_since(&before);
    let to = ends(options).await?;
    let max = stored(&db, run_id, &from, &to).await?;
    checks.check(
        "e2e maximum: every acknowledged event became one row",
        acked > 0 && acked == sent && i64::try_from(acked).ok() == Some(max.rows),
        format!("sent {sent}, acked {acked}, rows {}", max.rows),
    );
    let max_rate = max.rows as f64 / max.receive_to_last_s.max(1e-3);

    // 2. Half of it, open loop: each client sends a batch every `interval`.
    let target = if options.quick {
        200.0
    } else {
        max_rate * options.e2e_load
    };
    let interval = Duration::from_secs_f64(options.clients as f64 * batch as f64 / target.max(1.0));
    let seconds = if options.quick {
        2
    } else {
        options.e2e_seconds
    };
    let probe_every = ((1.0 / interval.as_secs_f64()) * options.clients as f64 / 20.0)
        .ceil()
        .max(1.0) as u64;
    let from = ends(options).await?;
    let before = deployment.snapshot();
    let visible = Arc::new(Mutex::new(Samples::new()));
    let lost_probes = Arc::new(Mutex::new(0u64));
    let probes = {
        let query = QueryServiceClient::new(options.query_connection().await?);
        let (visible, lost_probes) = (visible.clone(), lost_probes.clone());
        move |k: u64, id: String, at: Instant| {
            let (query, visible, lost) = (query.clone(), visible.clone(), lost_probes.clone());
            async move {
                if !k.is_multiple_of(probe_every) {
                    return;
                }
                match probe(query, id, at).await {
                    Some(d) => {
                        if let Ok(mut v) = visible.lock() {
                            v.push(d);
                        }
                    }
                    None => {
                        if let Ok(mut l) = lost.lock() {
                            *l += 1;
                        }
                    }
                }
            }
        }
    };
    let started = Instant::now();
    let (sent, acked) = open_loop(
        &channels,
        &format!("{run_id}.h."),
        batch,
        interval,
        Duration::from_secs(seconds),
        probes,
    )
    .await;
    let publish_s = started.elapsed().as_secs_f64();
    wait_drained(options, Duration::from_secs(120)).await?;
    let steady_cpu = deployment.snapshot().cpu_since(&before);
    let to = ends(options).await?;
    let steady = stored(&db, run_id, &from, &to).await?;
    checks.check(
        "e2e steady: every acknowledged event became one row",
        acked > 0 && acked == sent && i64::try_from(acked).ok() == Some(steady.rows),
        format!("sent {sent}, acked {acked}, rows {}", steady.rows),
    );
    let persisted = received_to_persisted(&db, run_id, &from, &to).await?;
    let mut visible = visible.lock().map(|v| v.clone()).unwrap_or_default();
    let lost = lost_probes.lock().map(|l| *l).unwrap_or(0);
    checks.check(
        "e2e steady: every sampled event became visible through GetEvent",
        !visible.is_empty() && lost == 0,
        format!("{} visible, {lost} not within 30 s", visible.len()),
    );
    let visible_json = visible.summary();
    let achieved = acked as f64 / publish_s.max(1e-3);

    let mut t = Table::new(&["figure", "value"]);
    t.row(vec![
        "maximum, events/s (first received to last persisted)".into(),
        thousands(max_rate),
    ]);
    t.row(vec![
        "maximum run CPU (publish and drain)".into(),
        procs::cpu_line(&drained_cpu),
    ]);
    t.row(vec![
        format!(
            "steady load, events/s (target: {} of the maximum)",
            options.e2e_load
        ),
        format!("{} (target {})", thousands(achieved), thousands(target)),
    ]);
    for (name, v) in [
        ("received → persisted ms", &persisted),
        ("publish ack → visible in GetEvent ms", &visible_json),
    ] {
        t.row(vec![
            format!("{name}, p50 / p99 / p99.9"),
            format!(
                "{:.1} / {:.1} / {:.1}",
                v["p50"].as_f64().unwrap_or(0.0),
                v["p99"].as_f64().unwrap_or(0.0),
                v["p999"].as_f64().unwrap_or(0.0)
            ),
        ]);
    }
    t.row(vec!["steady run CPU".into(), procs::cpu_line(&steady_cpu)]);
    println!(
        "\n## End to end: {} clients, PublishBatch x{batch}, processor running\n\n{}\n",
        options.clients,
        t.render()
    );
    Ok((
        json!({
            "batch": batch,
            "earlier_backlog_drained_s": round3(backlog_drain_s),
            "max_throughput": {
                "events": max.rows,
                "events_per_s": round3(max_rate),
                "cpu": drained_cpu,
            },
            "target_per_s": round3(target),
            "load_fraction": options.e2e_load,
            "achieved_per_s": round3(achieved),
            "events": acked,
            "persisted": steady.rows,
            "received_to_persisted_ms": persisted,
            "ack_to_visible_ms": visible_json,
            "cpu": steady_cpu,
        }),
        footprint,
    ))
}
