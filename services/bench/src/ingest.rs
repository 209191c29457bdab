//! Scenario 1, ingest: events/s and ack latency through `PublishBatch`
//! (batches of 1, 100 and 1000) and `PublishStream`, several clients at once,
//! against a raw rdkafka producer with ingest's settings into the same broker
//! (its own topic, with the same partition count). The processor is stopped
//! meanwhile, so neither path competes with it; what ingest acknowledged is
//! then the persist scenario's backlog.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tributary_proto::v1::ingest_service_client::IngestServiceClient;
use tributary_proto::v1::{PublishBatchRequest, PublishRequest};

use crate::conn::Connection;
use crate::data;
use crate::procs::{self, Deployment};
use crate::stats::{Samples, Table, ratio, round3, thousands};
use crate::{Checks, Options};

/// The raw producer's topic: never consumed.
pub const RAW_TOPIC: &str = "tributary.bench.raw";
/// Events a stream client keeps unacknowledged (ingest's window is 2000).
const STREAM_WINDOW: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Batch(usize),
    Stream,
}

impl Mode {
    fn path(self) -> &'static str {
        match self {
            Mode::Batch(_) => "PublishBatch",
            Mode::Stream => "PublishStream",
        }
    }

    pub fn batch(self) -> usize {
        match self {
            Mode::Batch(n) => n,
            Mode::Stream => 0,
        }
    }

    pub fn label(self) -> String {
        match self {
            Mode::Batch(n) => format!("PublishBatch x{n}"),
            Mode::Stream => "PublishStream".into(),
        }
    }
}

pub const MODES: [Mode; 4] = [
    Mode::Batch(1),
    Mode::Batch(100),
    Mode::Batch(1000),
    Mode::Stream,
];

/// How long a client goes on: until it sent `events` or `until` passed.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub events: u64,
    pub until: Instant,
}

impl Limit {
    pub fn more(&self, sent: u64) -> bool {
        sent < self.events && Instant::now() < self.until
    }

    /// Full mode runs for a time, quick mode for a count.
    pub fn for_mode(options: &Options, mode: Mode, seconds: u64) -> Self {
        if options.quick {
            let events = match mode {
                Mode::Batch(1) => 20,
                Mode::Batch(n) => n as u64 * 2,
                Mode::Stream => 300,
            };
            Self {
                events,
                until: Instant::now() + Duration::from_secs(120),
            }
        } else {
            Self {
                events: u64::MAX,
                until: Instant::now() + Duration::from_secs(seconds),
            }
        }
    }
}

/// What one client (or all of them, merged) did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub latency: Samples,
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn merge(&mut self, other: Outcome) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.errors += other.errors;
        self.latency.extend(other.latency);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// The merged outcome of client tasks (a failed task is an error).
    pub async fn join(tasks: Vec<tokio::task::JoinHandle<Outcome>>) -> Outcome {
        let mut outcome = Outcome::default();
        for t in tasks {
            match t.await {
                Ok(o) => outcome.merge(o),
                Err(e) => outcome.error(0, format!("client task failed: {e}")),
            }
        }
        outcome
    }

    pub fn error(&mut self, n: u64, why: String) {
        self.errors += n;
        if self.first_error.is_none() {
            self.first_error = Some(why);
        }
    }

    pub fn report(&mut self, path: &str, seconds: f64) -> Value {
        json!({
            "path": path,
            "sent": self.sent,
            "acked": self.acked,
            "errors": self.errors,
            "seconds": round3(seconds),
            "events_per_s": round3(self.acked as f64 / seconds.max(1e-9)),
            "p50_ms": round3(self.latency.quantile_ms(0.5)),
            "p99_ms": round3(self.latency.quantile_ms(0.99)),
            "first_error": self.first_error,
        })
    }
}

/// One ingest client through `PublishBatch`.
pub async fn ours_batch(
    channel: Connection,
    prefix: String,
    batch: usize,
    limit: Limit,
) -> Outcome {
    let mut client = IngestServiceClient::new(channel);
    let mut out = Outcome::default();
    let mut n = 0u64;
    while limit.more(out.sent) {
        let now = SystemTime::now();
        let events = (0..batch as u64)
            .map(|i| data::event(&prefix, n + i, now))
            .collect();
        n += batch as u64;
        out.sent += batch as u64;
        let start = Instant::now();
        match client.publish_batch(PublishBatchRequest { events }).await {
            Ok(r) => {
                let r = r.into_inner();
                out.latency.push(start.elapsed());
                out.acked += u64::try_from(r.accepted).unwrap_or(0);
                if r.rejected > 0 {
                    let why = r
                        .results
                        .iter()
                        .find_map(|x| x.status.as_ref().filter(|s| s.code != 0))
                        .map(|s| s.message.clone())
                        .unwrap_or_default();
                    out.error(u64::try_from(r.rejected).unwrap_or(0), why);
                }
            }
            Err(status) => {
                out.error(
                    batch as u64,
                    format!("{:?}: {}", status.code(), status.message()),
                );
                if status.code() == tonic::Code::ResourceExhausted {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    out
}

/// A `PublishBatch` client on each of `connections` (ids
/// `<prefix><client>.<n>`), each until `limit`; their merged outcome.
pub async fn batch_clients(
    connections: &[Connection],
    prefix: &str,
    batch: usize,
    limit: Limit,
) -> Outcome {
    let tasks = connections
        .iter()
        .enumerate()
        .map(|(c, ch)| {
            tokio::spawn(ours_batch(
                ch.clone(),
                format!("{prefix}{c}."),
                batch,
                limit,
            ))
        })
        .collect();
    Outcome::join(tasks).await
}

/// One ingest client through `PublishStream`, at most `STREAM_WINDOW` events
/// unacknowledged; latency is per event, send to result.
async fn ours_stream(channel: Connection, prefix: String, limit: Limit) -> Outcome {
    let mut client = IngestServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(STREAM_WINDOW);
    let window = Arc::new(Semaphore::new(STREAM_WINDOW));
    let sent_at: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let mut out = Outcome::default();
    let response = match client.publish_stream(tokio_stream_from(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            out.error(0, format!("{:?}: {}", status.code(), status.message()));
            return out;
        }
    };
    let sender = {
        let (window, sent_at) = (window.clone(), sent_at.clone());
        tokio::spawn(async move {
            let mut sent = 0u64;
            while limit.more(sent) {
                let Ok(permit) = window.clone().acquire_owned().await else {
                    break;
                };
                permit.forget();
                let event = data::event(&prefix, sent, SystemTime::now());
                if let Ok(mut v) = sent_at.lock() {
                    v.push(Instant::now());
                }
                if tx
                    .send(PublishRequest { event: Some(event) })
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            sent
        })
    };
    let mut results = response;
    loop {
        match results.next().await {
            Some(Ok(r)) => {
                window.add_permits(1);
                let at = sent_at
                    .lock()
                    .ok()
                    .and_then(|v| v.get(usize::try_from(r.index).ok()?).copied());
                match r.status.as_ref().map(|s| s.code) {
                    Some(0) | None => {
                        out.acked += 1;
                        if let Some(at) = at {
                            out.latency.push(at.elapsed());
                        }
                    }
                    Some(_) => out.error(1, r.status.map(|s| s.message).unwrap_or_default()),
                }
            }
            Some(Err(status)) => {
                out.error(0, format!("{:?}: {}", status.code(), status.message()));
                break;
            }
            None => break,
        }
    }
    // The stream ended (all answered, or the server gave up): a sender still
    // waiting for window room must stop.
    window.close();
    out.sent = sender.await.unwrap_or(0);
    let unanswered = out.sent.saturating_sub(out.acked + out.errors);
    if unanswered > 0 {
        out.error(unanswered, "no result for some events".into());
    }
    out
}

pub(crate) fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<PublishRequest>,
) -> impl futures_util::Stream<Item = PublishRequest> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The baseline producer: ingest's settings (idempotent, acks=all, linger 2
/// ms, same queue bound), no gRPC, no validation.
pub fn raw_producer(kafka: &tributary_kafka::KafkaArgs) -> anyhow::Result<FutureProducer> {
    kafka
        .client_config()?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("allow.auto.create.topics", "false")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "10000")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .context("creating the raw producer")
}

fn raw_send(
    producer: &FutureProducer,
    prefix: &str,
    n: u64,
) -> Result<rdkafka::producer::DeliveryFuture, String> {
    let r = data::raw_record(prefix, n, SystemTime::now());
    let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
        key: "traceparent",
        value: Some(data::TRACEPARENT),
    });
    let record = FutureRecord::to(RAW_TOPIC)
        .key(r.key.as_bytes())
        .payload(r.value.as_slice())
        .headers(headers);
    producer.send_result(record).map_err(|(e, _)| e.to_string())
}

/// One raw client: `batch` records handed over, then all their acks awaited
/// (batch 0: a window of `STREAM_WINDOW` records, latency per record).
async fn raw_client(producer: FutureProducer, prefix: String, mode: Mode, limit: Limit) -> Outcome {
    let mut out = Outcome::default();
    let mut n = 0u64;
    match mode {
        Mode::Batch(batch) => {
            while limit.more(out.sent) {
                let start = Instant::now();
                let mut pending = Vec::with_capacity(batch);
                for _ in 0..batch {
                    match raw_send(&producer, &prefix, n) {
                        Ok(f) => pending.push(f),
                        Err(e) => out.error(1, e),
                    }
                    n += 1;
                }
                out.sent += batch as u64;
                let mut acked = 0;
                for f in futures_util::future::join_all(pending).await {
                    match f {
                        Ok(Ok(_)) => acked += 1,
                        Ok(Err((e, _))) => out.error(1, e.to_string()),
                        Err(_) => out.error(1, "delivery cancelled".into()),
                    }
                }
                out.acked += acked;
                out.latency.push(start.elapsed());
            }
        }
        Mode::Stream => {
            let mut inflight = FuturesUnordered::new();
            loop {
                while inflight.len() < STREAM_WINDOW && limit.more(out.sent) {
                    let start = Instant::now();
                    match raw_send(&producer, &prefix, n) {
                        Ok(f) => inflight.push(async move { (f.await, start) }),
                        Err(e) => out.error(1, e),
                    }
                    n += 1;
                    out.sent += 1;
                }
                let Some((result, start)) = inflight.next().await else {
                    break;
                };
                match result {
                    Ok(Ok(_)) => {
                        out.acked += 1;
                        out.latency.push(start.elapsed());
                    }
                    Ok(Err((e, _))) => out.error(1, e.to_string()),
                    Err(_) => out.error(1, "delivery cancelled".into()),
                }
            }
        }
    }
    out
}

/// The figures of one path in one mode, all clients merged.
struct Measured {
    outcome: Outcome,
    seconds: f64,
    cpu: Value,
}

async fn measure<F, Fut>(deployment: &Deployment, clients: usize, f: F) -> Measured
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let before = deployment.snapshot();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients).map(|c| tokio::spawn(f(c))).collect();
    let outcome = Outcome::join(tasks).await;
    let seconds = start.elapsed().as_secs_f64();
    Measured {
        outcome,
        seconds,
        cpu: deployment.snapshot().cpu_since(&before),
    }
}

/// Runs every mode, ours then the raw producer; answers the scenario's JSON
/// and the number of events ingest acknowledged (now in the events topic).
pub async fn run(
    options: &Options,
    checks: &mut Checks,
    run_id: &str,
) -> anyhow::Result<(Value, u64)> {
    let deployment = options.deployment();
    crate::topic::ensure_like_events(&options.kafka(), RAW_TOPIC, None).await?;
    let producer = raw_producer(&options.kafka())?;
    let mut channels = Vec::new();
    for _ in 0..options.clients {
        channels.push(options.ingest_connection().await?);
    }

    let mut runs = Vec::new();
    let mut table = Table::new(&[
        "path",
        "ours ev/s",
        "p50 ms",
        "p99 ms",
        "raw ev/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "CPU (ours)",
    ]);
    let mut ingested = 0u64;
    for mode in MODES {
        let tag = match mode {
            Mode::Batch(n) => format!("b{n}"),
            Mode::Stream => "s".into(),
        };
        let ours = {
            let channels = channels.clone();
            let tag = tag.clone();
            measure(&deployment, options.clients, move |c| {
                let limit = Limit::for_mode(options, mode, options.seconds);
                let prefix = format!("{run_id}.i{tag}.{c}.");
                let ch = channels[c].clone();
                async move {
                    match mode {
                        Mode::Batch(n) => ours_batch(ch, prefix, n, limit).await,
                        Mode::Stream => ours_stream(ch, prefix, limit).await,
                    }
                }
            })
            .await
        };
        let raw = {
            let producer = producer.clone();
            measure(&deployment, options.clients, move |c| {
                let limit = Limit::for_mode(options, mode, options.seconds);
                raw_client(
                    producer.clone(),
                    format!("{run_id}.r{tag}.{c}."),
                    mode,
                    limit,
                )
            })
            .await
        };
        let Measured {
            outcome: mut o,
            seconds: os,
            cpu: ocpu,
        } = ours;
        let Measured {
            outcome: mut r,
            seconds: rs,
            cpu: rcpu,
        } = raw;
        ingested += o.acked;
        checks.check(
            format!("ingest {}: every event sent was acknowledged", mode.label()),
            o.sent > 0 && o.acked == o.sent,
            format!(
                "sent {}, acked {}, first error {:?}",
                o.sent, o.acked, o.first_error
            ),
        );
        checks.check(
            format!(
                "raw producer {}: every record sent was acknowledged",
                mode.label()
            ),
            r.sent > 0 && r.acked == r.sent,
            format!(
                "sent {}, acked {}, first error {:?}",
                r.sent, r.acked, r.first_error
            ),
        );
        let mut ours_json = o.report(mode.path(), os);
        let raw_json = r.report("raw rdkafka", rs);
        let ours_rate = ours_json["events_per_s"].as_f64().unwrap_or(0.0);
        let raw_rate = raw_json["events_per_s"].as_f64().unwrap_or(0.0);
        table.row(vec![
            mode.label(),
            thousands(ours_rate),
            format!("{:.1}", ours_json["p50_ms"].as_f64().unwrap_or(0.0)),
            format!("{:.1}", ours_json["p99_ms"].as_f64().unwrap_or(0.0)),
            thousands(raw_rate),
            format!("{:.1}", raw_json["p50_ms"].as_f64().unwrap_or(0.0)),
            format!("{:.1}", raw_json["p99_ms"].as_f64().unwrap_or(0.0)),
            format!("{:.2}", ratio(ours_rate, raw_rate)),
            procs::cpu_line(&ocpu),
        ]);
        if let Value::Object(m) = &mut ours_json {
            m.insert("batch".into(), json!(mode.batch()));
            m.insert("ratio".into(), json!(ratio(ours_rate, raw_rate)));
            m.insert("cpu".into(), ocpu);
            let mut raw_json = raw_json;
            if let Value::Object(rm) = &mut raw_json {
                rm.insert("cpu".into(), rcpu);
            }
            m.insert("baseline".into(), raw_json);
        }
        runs.push(ours_json);
    }
    println!(
        "\n## Ingest: {} clients, {} (ratio = ours / raw producer)\n\n{}\n",
        options.clients,
        if options.quick {
            "quick counts".to_owned()
        } else {
            format!("{} s per path", options.seconds)
        },
        table.render()
    );
    Ok((
        json!({ "clients": options.clients, "runs": runs }),
        ingested,
    ))
}
