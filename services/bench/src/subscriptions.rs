//! Scenario `subscriptions`: push delivery's throughput. A paused push
//! subscription (filter: this run's source) is created, the run's events are
//! published, and then two readers take the same topic range: a raw rdkafka
//! consumer (the baseline: records read, nothing else) and the subscription,
//! resumed, delivering to a local receiver in this process (dispatch decodes
//! and validates each record, filters, encodes the JSON body, signs and POSTs
//! it). The figure is events/s each, and their ratio.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tributary_proto::v1::admin_service_client::AdminServiceClient;
use tributary_proto::v1::ingest_service_client::IngestServiceClient;
use tributary_proto::v1::{
    BatchPolicy, CreateSubscriptionRequest, DeleteSubscriptionRequest, EventFilter,
    PublishBatchRequest, PushConfig, Subscription, UpdateSubscriptionRequest, subscription,
};

use crate::stats::{Table, round3, thousands};
use crate::topic::{self, EVENTS_TOPIC};
use crate::{Checks, Options, conn, data, e2e};

/// What the receiver has seen.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    requests: u64,
    duplicates: u64,
    foreign: u64,
    /// When the first and the last new event arrived.
    first_new: Option<Instant>,
    last_new: Option<Instant>,
}

/// A minimal HTTP/1.1 receiver on 127.0.0.1: answers 200 to each POST and
/// records the event ids of its body.
async fn receiver(prefix: String) -> anyhow::Result<(String, Arc<Mutex<Seen>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/bench", listener.local_addr()?);
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = shared.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let Some(body) = read_request(&mut socket).await else {
                    return;
                };
                let ids: Vec<String> = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["events"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| e["event"]["eventId"].as_str().map(str::to_owned))
                    .collect();
                {
                    let mut s = seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    s.requests += 1;
                    for id in ids {
                        if !id.starts_with(&prefix) {
                            s.foreign += 1;
                        } else if s.ids.insert(id) {
                            let now = Instant::now();
                            s.first_new.get_or_insert(now);
                            s.last_new = Some(now);
                        } else {
                            s.duplicates += 1;
                        }
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    Ok((url, seen))
}

/// The body of one request (headers, then Content-Length bytes).
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())?;
            while raw.len() < end + 4 + length {
                let n = socket.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            return Some(raw[end + 4..end + 4 + length].to_vec());
        }
    }
}

/// Reads every record of [from, to) with a plain consumer: (records,
/// seconds from the first poll to the last record).
fn raw_read(
    kafka: &tributary_kafka::KafkaArgs,
    from: &[(i32, i64)],
    to: &[(i32, i64)],
    limit: Duration,
) -> anyhow::Result<(u64, f64)> {
    let consumer: BaseConsumer = kafka
        .client_config()?
        .set("group.id", "tributary-bench-raw")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the raw consumer")?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = 0i64;
    for (p, start) in from {
        let end = to.iter().find(|(q, _)| q == p).map_or(*start, |(_, e)| *e);
        if end > *start {
            tpl.add_partition_offset(EVENTS_TOPIC, *p, rdkafka::Offset::Offset(*start))?;
            remaining += end - start;
        }
    }
    consumer.assign(&tpl)?;
    let ends: std::collections::HashMap<i32, i64> = to.iter().copied().collect();
    let started = Instant::now();
    let mut records = 0u64;
    while remaining > 0 && started.elapsed() < limit {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if ends.get(&m.partition()).is_some_and(|e| m.offset() < *e) => {
                // Touch the bytes, as any reader would.
                std::hint::black_box(m.payload().map(<[u8]>::len));
                records += 1;
                remaining -= 1;
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => anyhow::bail!("raw consumer: {e}"),
        }
    }
    Ok((records, started.elapsed().as_secs_f64()))
}

pub async fn run(options: &Options, checks: &mut Checks, run_id: &str) -> anyhow::Result<Value> {
    let events: u64 = if options.quick { 2_000 } else { 50_000 };
    let limit = Duration::from_secs(if options.quick { 120 } else { 900 });
    let prefix = format!("{run_id}.sub.");
    let source = format!("{run_id}.sub");
    let name = format!("{run_id}-sub");
    let (url, seen) = receiver(prefix.clone()).await?;
    let key = conn::WithKey::new(options.api_key.as_deref())?;
    let mut admin =
        AdminServiceClient::new(conn::connect(&options.admin, &options.tls, &key).await?);
    // Paused: nothing is delivered while the events are published.
    admin
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                name: name.clone(),
                filter: Some(EventFilter {
                    source: source.clone(),
                    ..Default::default()
                }),
                delivery: Some(subscription::Delivery::Push(PushConfig {
                    url,
                    ..Default::default()
                })),
                batch: Some(BatchPolicy {
                    max_events: 1000,
                    max_bytes: 4 << 20,
                    max_wait: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 200_000_000,
                    }),
                }),
                paused: true,
                ..Default::default()
            }),
        })
        .await
        .context("CreateSubscription")?;
    let measured = measure(
        options, checks, &mut admin, &name, &source, &prefix, events, limit, &seen,
    )
    .await;
    // The subscription goes whatever happened.
    let _ = admin
        .delete_subscription(DeleteSubscriptionRequest { name: name.clone() })
        .await;
    measured
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    options: &Options,
    checks: &mut Checks,
    admin: &mut AdminServiceClient<conn::Connection>,
    name: &str,
    source: &str,
    prefix: &str,
    events: u64,
    limit: Duration,
    seen: &Arc<Mutex<Seen>>,
) -> anyhow::Result<Value> {
    let from = e2e::topic_ends(options).await?;
    let mut ingest = IngestServiceClient::new(options.ingest_connection().await?);
    let now = SystemTime::now();
    let mut acked = 0u64;
    for chunk in (0..events).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|n| {
                let mut e = data::event(prefix, *n, now);
                e.source = source.to_owned();
                e
            })
            .collect();
        let r = ingest
            .publish_batch(PublishBatchRequest { events: batch })
            .await
            .context("PublishBatch")?;
        acked += u64::try_from(r.into_inner().accepted).unwrap_or(0);
    }
    let to = e2e::topic_ends(options).await?;
    let (_, records) = topic::range_condition(&from, &to);

    // The baseline: a raw consumer over the same range.
    let kafka = options.kafka();
    let (f, t) = (from.clone(), to.clone());
    let (raw_records, raw_seconds) =
        topic::blocking(move || raw_read(&kafka, &f, &t, limit)).await?;

    // The subscription, resumed.
    let started = Instant::now();
    admin
        .update_subscription(UpdateSubscriptionRequest {
            subscription: Some(Subscription {
                name: name.to_owned(),
                paused: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["paused".into()],
            }),
            ..Default::default()
        })
        .await
        .context("UpdateSubscription (resume)")?;
    loop {
        let done = seen
            .lock()
            .map(|s| s.ids.len() as u64 >= acked)
            .unwrap_or(true);
        if done || started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let delivered = s.ids.len() as u64;
    let seconds = s
        .last_new
        .map_or(limit, |at| at.saturating_duration_since(started))
        .as_secs_f64();
    // From the first arrival: without the resume's pick-up (dispatch polls
    // the table every --poll-interval, then joins the group).
    let flowing = match (s.first_new, s.last_new) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let per_s = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let (raw_rate, sub_rate) = (per_s(raw_records, raw_seconds), per_s(delivered, seconds));
    let flowing_rate = per_s(delivered, flowing);
    checks.check(
        "subscriptions: every acknowledged event delivered",
        delivered == acked && acked == events,
        format!("{delivered} delivered of {acked} acknowledged ({events} published)"),
    );
    checks.check(
        "subscriptions: nothing outside the filter delivered",
        s.foreign == 0,
        format!("{} foreign events", s.foreign),
    );
    checks.check(
        "subscriptions: the raw consumer read the whole range",
        i64::try_from(raw_records).ok() == Some(records),
        format!("{raw_records} of {records} records"),
    );
    let mut table = Table::new(&["reader", "events", "seconds", "events/s"]);
    table.row(vec![
        "raw consumer (baseline)".into(),
        thousands(raw_records as f64),
        format!("{raw_seconds:.2}"),
        thousands(raw_rate),
    ]);
    table.row(vec![
        "push subscription, from the resume (dispatch → local receiver)".into(),
        thousands(delivered as f64),
        format!("{seconds:.2}"),
        thousands(sub_rate),
    ]);
    table.row(vec![
        "push subscription, first to last arrival".into(),
        thousands(delivered as f64),
        format!("{flowing:.2}"),
        thousands(flowing_rate),
    ]);
    println!(
        "\n## subscriptions: delivered events/s against a raw consumer of the same range\n{}",
        table.render()
    );
    Ok(json!({
        "events": events,
        "acknowledged": acked,
        "raw_consumer": {"records": raw_records, "seconds": round3(raw_seconds), "per_second": round3(raw_rate)},
        "push": {
            "delivered": delivered,
            "seconds": round3(seconds),
            "per_second": round3(sub_rate),
            "flowing_seconds": round3(flowing),
            "flowing_per_second": round3(flowing_rate),
            "requests": s.requests,
            "duplicates": s.duplicates,
            "batch": {"max_events": 1000, "max_wait_ms": 200},
        },
        "ratio_push_to_raw": round3(if raw_rate > 0.0 { sub_rate / raw_rate } else { 0.0 }),
    }))
}
