//! Scenario `overload`: three times the callers that reach ingest's
//! maximum, half of them with maximum-size batches, against an ingest of the
//! bench's own (default bounds, set explicitly so the memory ceilings are
//! computed from what runs) over the deployment's broker, processor and
//! database. Never in the default set.
//!
//! 1. **Baseline**: `--clients` callers (the ingest scenario's concurrency,
//!    at which ingest's throughput tops out) publish batches of 100 small
//!    events: events/s and call latency.
//! 2. **Overload**: three times as many callers, half publishing batches of
//!    1000 events of about 4 KiB (about 4 MiB, the batch limit), half small
//!    batches as before. Meanwhile slow clients that never read: PublishStream
//!    senders (ingest stops reading each at its window) and TailEvents
//!    readers on the deployment's query (each dropped once its buffer is
//!    full). Every refused call is retried with the same ids after its
//!    RetryInfo delay.
//! 3. **Recovery**: the baseline callers again; events/s per second, and how
//!    long until it is back to 80% of the baseline.
//!
//! Then every acknowledged id is checked stored, and each service's peak
//! memory (VmHWM, reset when the scenario starts) is printed beside a
//! ceiling computed from its configured bounds. Checks: nothing lost; no
//! INTERNAL, UNKNOWN or broken connection; every RESOURCE_EXHAUSTED carries
//! RetryInfo; each peak under its ceiling; nothing crashed. How fast is
//! reported, never checked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::{Value, json};
use tonic_types::StatusExt as _;
use tributary_platform::tls::ClientTlsArgs;
use tributary_proto::v1::ingest_service_client::IngestServiceClient;
use tributary_proto::v1::query_service_client::QueryServiceClient;
use tributary_proto::v1::{
    Event, EventFilter, PublishBatchRequest, PublishRequest, TailEventsRequest,
};

use crate::conn::{self, Connection, WithKey};
use crate::stats::{Samples, Table, ratio, round3, thousands};
use crate::{Checks, Options, data, faults::status_key};

const SMALL_BATCH: usize = 100;
const BIG_BATCH: usize = 1000;
/// The text in each big event's payload: a batch of 1000 stays just under
/// the 4 MiB batch limit.
const BIG_PAYLOAD_BYTES: usize = 4_000;
const CALL_DEADLINE: Duration = Duration::from_secs(5);
const RETRY_DEFAULT: Duration = Duration::from_millis(200);
/// Slow clients of each kind, during the overload.
const SLOW_STREAMS: usize = 8;
const SLOW_TAILS: usize = 8;

const MIB: f64 = 1024.0 * 1024.0;

/// The bounds the bench's ingest runs with (the defaults of its flags).
const MAX_CONCURRENT_CALLS: u64 = 64;
const MAX_STREAMS: u64 = 256;
const MAX_IN_FLIGHT_BYTES: u64 = 256 * 1024 * 1024;
const STREAM_WINDOW: u64 = 2_000;
/// ingest's decode limit per request (4 × the batch limit).
const MAX_REQUEST_BYTES: u64 = 16 * 1024 * 1024;
/// HTTP/2 receive window per stream (hyper's default, which tonic keeps).
const H2_WINDOW: u64 = 1024 * 1024;
/// An answer of PublishStream waiting to be read: an index, an id, a status.
const STREAM_RESULT_BYTES: u64 = 256;
/// query's per-tail buffer (events), past which a tail is ended.
const TAIL_BUFFER: u64 = 1024;
/// The processor's: librdkafka's prefetch bound (queued.max.messages.kbytes
/// default), batch size, batches stored at once.
const CONSUMER_QUEUE_BYTES: u64 = 64 * 1024 * 1024;
const PROCESSOR_BATCH: u64 = 1000;
const PROCESSOR_STORE_CONCURRENCY: u64 = 2;

/// What one caller saw.
#[derive(Default)]
struct Tally {
    acked: Vec<String>,
    calls_ok: u64,
    latency: Samples,
    /// Code → count, per call (its status) and per event (in OK calls).
    call_codes: BTreeMap<String, u64>,
    event_codes: BTreeMap<String, u64>,
    /// RESOURCE_EXHAUSTED answers without RetryInfo.
    exhausted_without_retry_info: u64,
    /// Acknowledged events per second since the scenario's start.
    per_second: Vec<u64>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.acked.extend(other.acked);
        self.calls_ok += other.calls_ok;
        self.latency.extend(other.latency);
        for (k, v) in other.call_codes {
            *self.call_codes.entry(k).or_default() += v;
        }
        for (k, v) in other.event_codes {
            *self.event_codes.entry(k).or_default() += v;
        }
        self.exhausted_without_retry_info += other.exhausted_without_retry_info;
        if self.per_second.len() < other.per_second.len() {
            self.per_second.resize(other.per_second.len(), 0);
        }
        for (i, n) in other.per_second.into_iter().enumerate() {
            self.per_second[i] += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn codes_line(&self) -> String {
        let calls: u64 = self.call_codes.values().sum();
        self.call_codes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
            + &format!(" (of {calls} calls)")
    }
}

fn big_event(prefix: &str, n: u64, now: SystemTime) -> Event {
    let mut e = data::event(prefix, n, now);
    let mut fields = BTreeMap::new();
    fields.insert(
        "blob".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(
                "x".repeat(BIG_PAYLOAD_BYTES),
            )),
        },
    );
    e.payload = Some(prost_types::Struct { fields });
    e
}

/// One caller until `until`: batches of new ids; what was not acknowledged
/// is sent again with the same ids (after the RetryInfo delay) first.
async fn caller(
    channel: Connection,
    prefix: String,
    source: String,
    big: bool,
    t0: Instant,
    until: Instant,
) -> Tally {
    let mut client = IngestServiceClient::new(channel);
    let batch = if big { BIG_BATCH } else { SMALL_BATCH };
    let mut tally = Tally::default();
    let mut next = 0u64;
    let mut pending: Vec<u64> = Vec::new();
    while Instant::now() < until {
        if pending.is_empty() {
            pending = (next..next + batch as u64).collect();
            next += batch as u64;
        }
        let now = SystemTime::now();
        let events = pending
            .iter()
            .map(|&n| {
                let mut e = if big {
                    big_event(&prefix, n, now)
                } else {
                    data::event(&prefix, n, now)
                };
                e.source.clone_from(&source);
                e
            })
            .collect();
        let mut request = tonic::Request::new(PublishBatchRequest { events });
        request.set_timeout(CALL_DEADLINE);
        let started = Instant::now();
        let mut wait = None;
        match client.publish_batch(request).await {
            Ok(response) => {
                tally.calls_ok += 1;
                tally.latency.push(started.elapsed());
                *tally.call_codes.entry("Ok".into()).or_default() += 1;
                let results = response.into_inner().results;
                let second = usize::try_from(t0.elapsed().as_secs()).unwrap_or(usize::MAX);
                let mut left = Vec::new();
                for (n, r) in pending.iter().zip(&results) {
                    let code = r
                        .status
                        .as_ref()
                        .map_or(tonic::Code::Ok, |s| tonic::Code::from(s.code));
                    *tally.event_codes.entry(format!("{code:?}")).or_default() += 1;
                    if code == tonic::Code::Ok {
                        tally.acked.push(data::event_id(&prefix, *n));
                        if tally.per_second.len() <= second {
                            tally.per_second.resize(second + 1, 0);
                        }
                        tally.per_second[second] += 1;
                    } else {
                        left.push(*n);
                    }
                }
                left.extend(pending.iter().skip(results.len()));
                pending = left;
            }
            Err(status) => {
                let key = status_key(&status);
                *tally.call_codes.entry(key.clone()).or_default() += 1;
                wait = status.get_details_retry_info().and_then(|r| r.retry_delay);
                if status.code() == tonic::Code::ResourceExhausted && wait.is_none() {
                    tally.exhausted_without_retry_info += 1;
                }
                if key != "ResourceExhausted" && tally.first_error.is_none() {
                    tally.first_error = Some(format!("{key}: {}", status.message()));
                }
            }
        }
        if !pending.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(wait.unwrap_or(RETRY_DEFAULT).min(left)).await;
        }
    }
    tally
}

/// Where the callers of a phase publish, and under which names.
struct Target<'a> {
    url: &'a str,
    run: &'a str,
    source: &'a str,
    /// The scenario's start (the per-second counts are since it).
    t0: Instant,
}

/// `callers` callers (`big` of them with big batches) for `seconds`:
/// (the small callers' tally, the big ones', seconds).
async fn phase(
    target: &Target<'_>,
    name: &str,
    callers: usize,
    big: usize,
    seconds: u64,
) -> anyhow::Result<(Tally, Tally, f64)> {
    let Target {
        url,
        run,
        source,
        t0,
    } = *target;
    let mut connections = Vec::new();
    for _ in 0..callers {
        connections.push(conn::plain(url).await?);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(c, channel)| {
            let is_big = c < big;
            tokio::spawn(caller(
                channel,
                format!("{run}.ov.{name}.{c}."),
                source.to_owned(),
                is_big,
                t0,
                until,
            ))
        })
        .collect();
    let (mut small, mut large) = (Tally::default(), Tally::default());
    for (c, t) in tasks.into_iter().enumerate() {
        let tally = t.await.context("a caller task failed")?;
        if c < big {
            large.merge(tally);
        } else {
            small.merge(tally);
        }
    }
    Ok((small, large, started.elapsed().as_secs_f64()))
}

/// Slow PublishStream senders: each sends small events as fast as the
/// connection takes them and never reads an answer.
fn slow_streams(
    url: &str,
    run: &str,
    source: &str,
    until: Instant,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..SLOW_STREAMS)
        .map(|s| {
            let url = url.to_owned();
            let prefix = format!("{run}.ov.slowstream.{s}.");
            let source = source.to_owned();
            tokio::spawn(async move {
                let Ok(channel) = conn::plain(&url).await else {
                    return 0;
                };
                let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(64);
                let feeder = tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < until {
                        let mut e = data::event(&prefix, n, SystemTime::now());
                        e.source.clone_from(&source);
                        let sent = tokio::time::timeout(
                            Duration::from_millis(200),
                            tx.send(PublishRequest { event: Some(e) }),
                        )
                        .await;
                        match sent {
                            Ok(Ok(())) => n += 1,
                            Ok(Err(_)) => break,
                            Err(_) => {} // blocked: the server stopped reading
                        }
                    }
                    n
                });
                let mut client = IngestServiceClient::new(channel);
                let held = client
                    .publish_stream(crate::ingest::tokio_stream_from(rx))
                    .await;
                let sent = feeder.await.unwrap_or(0);
                drop(held);
                sent
            })
        })
        .collect()
}

/// Slow TailEvents readers on the deployment's query: opened, never read
/// until the overload ends; then read to see where the server ended them.
async fn open_tails(
    options: &Options,
    source: &str,
) -> Vec<tonic::Streaming<tributary_proto::v1::StoredEvent>> {
    let key = WithKey::new(options.api_key.as_deref()).unwrap_or_default();
    let mut tails = Vec::new();
    for _ in 0..SLOW_TAILS {
        let Ok(channel) = conn::connect(&options.query, &options.tls, &key).await else {
            continue;
        };
        let mut client = QueryServiceClient::new(channel);
        let request = TailEventsRequest {
            filter: Some(EventFilter {
                source: source.to_owned(),
                ..Default::default()
            }),
        };
        if let Ok(response) = client.tail_events(request).await {
            tails.push(response.into_inner());
        }
    }
    tails
}

/// Reads a tail that was never read: events until the server's final
/// status (or 5 s of silence).
async fn drain_tail(
    mut tail: tonic::Streaming<tributary_proto::v1::StoredEvent>,
) -> (u64, Option<String>) {
    let mut events = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tail.message()).await {
            Ok(Ok(Some(_))) => events += 1,
            Ok(Ok(None)) => return (events, Some("ended OK".into())),
            Ok(Err(status)) => {
                return (
                    events,
                    Some(format!("{:?}: {}", status.code(), status.message())),
                );
            }
            Err(_) => return (events, None),
        }
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets a process's VmHWM to its current RSS (`/proc/PID/clear_refs`).
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// One service's memory: idle RSS at the start, and the ceiling's parts.
struct Watched {
    name: &'static str,
    pid: u32,
    idle_mib: f64,
    /// (what, MiB) the ceiling adds to the idle RSS.
    bounds: Vec<(String, f64)>,
    /// The peak could be reset (else VmHWM is the process's lifetime peak).
    reset: bool,
}

impl Watched {
    fn new(name: &'static str, pid: u32, bounds: Vec<(String, f64)>) -> Self {
        let reset = reset_peak(pid);
        Self {
            name,
            pid,
            idle_mib: status_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
            bounds,
            reset,
        }
    }

    fn ceiling_mib(&self) -> f64 {
        self.idle_mib + self.bounds.iter().map(|(_, m)| m).sum::<f64>()
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// The quick mode's short overload might not build a queue of the default
/// 500 ms on a fast broker: it sheds sooner, so the refusal path is always
/// exercised. The full mode runs the default.
fn max_queue_delay(options: &Options) -> &'static str {
    if options.quick { "200ms" } else { "500ms" }
}

pub async fn run(options: &Options, checks: &mut Checks, run_id: &str) -> anyhow::Result<Value> {
    let binary = crate::bin_dir(options)?.join("tributary-ingest");
    let bounds = [
        ("TRIBUTARY_AUTH", "off".to_owned()),
        (
            "TRIBUTARY_MAX_QUEUE_DELAY",
            max_queue_delay(options).to_owned(),
        ),
        (
            "TRIBUTARY_MAX_CONCURRENT_CALLS",
            MAX_CONCURRENT_CALLS.to_string(),
        ),
        ("TRIBUTARY_MAX_STREAMS", MAX_STREAMS.to_string()),
        (
            "TRIBUTARY_MAX_IN_FLIGHT_BYTES",
            MAX_IN_FLIGHT_BYTES.to_string(),
        ),
        ("TRIBUTARY_STREAM_WINDOW", STREAM_WINDOW.to_string()),
    ];
    let mut ingest = crate::security::start(
        options,
        &binary,
        "overload",
        &bounds,
        &ClientTlsArgs::default(),
        &WithKey::default(),
    )
    .await?;
    let measured = measure(options, checks, run_id, &ingest).await;
    let alive = matches!(ingest.child.try_wait(), Ok(None));
    let _ = ingest.child.start_kill();
    let _ = ingest.child.wait().await;
    let mut report = measured?;
    checks.check(
        "overload: the bench's ingest is still running after the overload",
        alive,
        if alive { "running" } else { "it exited" },
    );
    if let Value::Object(r) = &mut report {
        r.insert("ingest_survived".into(), json!(alive));
    }
    Ok(report)
}

async fn measure(
    options: &Options,
    checks: &mut Checks,
    run_id: &str,
    ingest: &crate::security::Variant,
) -> anyhow::Result<Value> {
    let deployment = options.deployment();
    let (base_s, over_s, recover_s) = if options.quick {
        (3, 6, 6)
    } else {
        (10, 30, 15)
    };
    let c = options.clients.max(1);
    let source = format!("overload-{run_id}");
    let mut watched = vec![Watched::new(
        "ingest (the bench's)",
        ingest.pid,
        vec![
            (
                format!(
                    "{MAX_CONCURRENT_CALLS} calls × 2 × {} MiB request",
                    MAX_REQUEST_BYTES >> 20
                ),
                mib(MAX_CONCURRENT_CALLS * 2 * MAX_REQUEST_BYTES),
            ),
            (
                format!(
                    "{MAX_STREAMS} streams × ({} MiB HTTP/2 window + {STREAM_WINDOW} answers)",
                    H2_WINDOW >> 20
                ),
                mib(MAX_STREAMS * (H2_WINDOW + STREAM_WINDOW * STREAM_RESULT_BYTES)),
            ),
            (
                format!(
                    "in-flight bytes {} MiB × 2.25 (envelopes + librdkafka's copy)",
                    MAX_IN_FLIGHT_BYTES >> 20
                ),
                mib(MAX_IN_FLIGHT_BYTES) * 2.25,
            ),
        ],
    )];
    let largest_event = (BIG_PAYLOAD_BYTES + 1024) as u64;
    if let Some(pid) = deployment.pid("query") {
        watched.push(Watched::new(
            "query",
            pid,
            vec![
                (
                    format!("{MAX_CONCURRENT_CALLS} calls × 2 × 4 MiB message"),
                    mib(MAX_CONCURRENT_CALLS * 2 * 4 * 1024 * 1024),
                ),
                (
                    format!(
                        "{MAX_STREAMS} tails × {TAIL_BUFFER} buffered events of ≤ {largest_event} B (this run's largest) × 2"
                    ),
                    mib(MAX_STREAMS * TAIL_BUFFER * largest_event * 2),
                ),
            ],
        ));
    }
    if let Some(pid) = deployment.pid("processor") {
        watched.push(Watched::new(
            "processor",
            pid,
            vec![
                (
                    format!("consumer prefetch {} MiB", CONSUMER_QUEUE_BYTES >> 20),
                    mib(CONSUMER_QUEUE_BYTES),
                ),
                (
                    format!(
                        "({PROCESSOR_STORE_CONCURRENCY} stored + 1 filling) batches × {PROCESSOR_BATCH} events of ≤ {largest_event} B × 3 (record, row, statement)"
                    ),
                    mib((PROCESSOR_STORE_CONCURRENCY + 1) * PROCESSOR_BATCH * largest_event * 3),
                ),
            ],
        ));
    }
    if let Some(pid) = deployment.pid("admin") {
        watched.push(Watched::new(
            "admin",
            pid,
            vec![(
                format!("{MAX_CONCURRENT_CALLS} calls × 2 × 4 MiB message"),
                mib(MAX_CONCURRENT_CALLS * 2 * 4 * 1024 * 1024),
            )],
        ));
    }

    let target = Target {
        url: &ingest.url,
        run: run_id,
        source: &source,
        t0: Instant::now(),
    };
    let t0 = target.t0;
    let (mut baseline, _, base_secs) = phase(&target, "base", c, 0, base_s).await?;
    let over_from = t0.elapsed().as_secs();
    let over_until = Instant::now() + Duration::from_secs(over_s);
    let streams = slow_streams(&ingest.url, run_id, &source, over_until);
    let tails = open_tails(options, &source).await;
    let tails_opened = tails.len();
    let (mut small, mut big, over_secs) = phase(&target, "over", 3 * c, 3 * c / 2, over_s).await?;
    let mut stream_events = 0u64;
    for s in streams {
        stream_events += s.await.unwrap_or(0);
    }
    // Drain only once the processor has stored what was acknowledged so far:
    // a tail read while events still arrive keeps up and is rightly not
    // ended, which would say nothing about the server's bound.
    let acked_so_far: Vec<String> = [&baseline, &small, &big]
        .iter()
        .flat_map(|t| t.acked.iter().cloned())
        .collect();
    let _ = crate::faults::wait_stored(
        options,
        &acked_so_far,
        Duration::from_secs(if options.quick { 120 } else { 300 }),
    )
    .await;
    let mut tail_ends = Vec::new();
    for t in tails {
        tail_ends.push(drain_tail(t).await);
    }
    // A tail that had more to deliver than its buffer holds must have been
    // ended by the server, not buffered without bound.
    let unbounded: Vec<String> = tail_ends
        .iter()
        .filter(|(n, end)| {
            *n > TAIL_BUFFER
                && !end
                    .as_deref()
                    .is_some_and(|e| e.contains("ResourceExhausted"))
        })
        .map(|(n, end)| format!("{n} events, {end:?}"))
        .collect();
    checks.check(
        "overload: each slow tail was ended by query (RESOURCE_EXHAUSTED, too slow) once past its buffer",
        tails_opened == SLOW_TAILS && unbounded.is_empty(),
        format!("{tails_opened} of {SLOW_TAILS} opened; past the buffer and not ended: {unbounded:?}"),
    );
    let recover_from = t0.elapsed().as_secs();
    let (mut recovery, _, recover_secs) = phase(&target, "recover", c, 0, recover_s).await?;

    // Everything acknowledged must be stored.
    let mut acked: Vec<String> = Vec::new();
    for t in [&baseline, &small, &big, &recovery] {
        acked.extend(t.acked.iter().cloned());
    }
    let stored_by = crate::faults::wait_stored(
        options,
        &acked,
        Duration::from_secs(if options.quick { 120 } else { 300 }),
    )
    .await;
    let stored = match crate::connect(&options.database_url).await {
        Ok(db) => crate::faults::stored_of(&db, &acked).await.unwrap_or(0),
        Err(_) => 0,
    };
    checks.check(
        "overload: every acknowledged event is stored",
        stored_by.is_some() && stored == acked.len() as u64,
        format!("{stored} of {} stored", acked.len()),
    );

    // Status codes.
    let mut all = Tally::default();
    for t in [&baseline, &small, &big, &recovery] {
        for (k, v) in &t.call_codes {
            *all.call_codes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &t.event_codes {
            *all.event_codes.entry(k.clone()).or_default() += v;
        }
        all.exhausted_without_retry_info += t.exhausted_without_retry_info;
    }
    let bad: Vec<String> = all
        .call_codes
        .iter()
        .chain(&all.event_codes)
        .filter(|(k, _)| matches!(k.as_str(), "Internal" | "Unknown" | "ConnectionLost"))
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    checks.check(
        "overload: no INTERNAL, UNKNOWN or broken connection",
        bad.is_empty(),
        format!(
            "{bad:?}; first errors: {:?} / {:?}",
            small.first_error, big.first_error
        ),
    );
    checks.check(
        "overload: every RESOURCE_EXHAUSTED carries RetryInfo",
        all.exhausted_without_retry_info == 0,
        format!("{} without", all.exhausted_without_retry_info),
    );
    let exhausted = all
        .call_codes
        .get("ResourceExhausted")
        .copied()
        .unwrap_or(0);

    // Memory.
    let mut memory = Vec::new();
    let mut mem_table = Table::new(&[
        "service",
        "idle RSS MiB",
        "peak (VmHWM) MiB",
        "ceiling MiB",
        "ceiling = idle +",
    ]);
    for w in &watched {
        let peak = status_kib(w.pid, "VmHWM:").map(|k| k as f64 / 1024.0);
        let ceiling = w.ceiling_mib();
        let alive = peak.is_some();
        checks.check(
            format!("overload: {} peak memory under its ceiling", w.name),
            alive && peak.unwrap_or(f64::MAX) <= ceiling,
            format!(
                "peak {peak:?} MiB, ceiling {ceiling:.0} MiB{}",
                if w.reset {
                    ""
                } else {
                    " (peak not reset: lifetime peak)"
                }
            ),
        );
        mem_table.row(vec![
            w.name.to_owned(),
            format!("{:.0}", w.idle_mib),
            peak.map_or("gone".into(), |p| format!("{p:.0}")),
            format!("{ceiling:.0}"),
            w.bounds
                .iter()
                .map(|(what, m)| format!("{what} ({m:.0})"))
                .collect::<Vec<_>>()
                .join(" + "),
        ]);
        memory.push(json!({
            "service": w.name,
            "idle_rss_mib": round3(w.idle_mib),
            "peak_mib": peak.map(round3),
            "ceiling_mib": round3(ceiling),
            "peak_reset": w.reset,
            "bounds": w.bounds.iter().map(|(what, m)| json!({"what": what, "mib": round3(*m)})).collect::<Vec<_>>(),
        }));
    }

    // Throughput and latency.
    let base_rate = baseline.acked.len() as f64 / base_secs.max(1e-9);
    let small_rate = small.acked.len() as f64 / over_secs.max(1e-9);
    let big_rate = big.acked.len() as f64 / over_secs.max(1e-9);
    let recover_rate = recovery.acked.len() as f64 / recover_secs.max(1e-9);
    let per_second = recovery.per_second.clone();
    let back_after = per_second
        .iter()
        .enumerate()
        .skip(usize::try_from(recover_from).unwrap_or(0))
        .find(|(_, n)| **n as f64 >= 0.8 * base_rate)
        .map(|(s, _)| s as u64 - recover_from);
    let mut table = Table::new(&[
        "phase",
        "callers",
        "events/s",
        "ratio",
        "p50 / p99 ms",
        "call codes",
    ]);
    let row = |table: &mut Table, name: &str, callers: String, rate: f64, t: &mut Tally| {
        table.row(vec![
            name.to_owned(),
            callers,
            thousands(rate),
            format!("{:.2}", ratio(rate, base_rate)),
            format!(
                "{:.0} / {:.0}",
                t.latency.quantile_ms(0.5),
                t.latency.quantile_ms(0.99)
            ),
            t.codes_line(),
        ]);
    };
    row(
        &mut table,
        "baseline: batches of 100",
        c.to_string(),
        base_rate,
        &mut baseline,
    );
    row(
        &mut table,
        "overload: batches of 100",
        (3 * c - 3 * c / 2).to_string(),
        small_rate,
        &mut small,
    );
    row(
        &mut table,
        "overload: batches of 1000 × 4 KiB",
        (3 * c / 2).to_string(),
        big_rate,
        &mut big,
    );
    row(
        &mut table,
        "recovery: batches of 100",
        c.to_string(),
        recover_rate,
        &mut recovery,
    );
    // Tails grouped by how they ended: "N ended <how> after A–B events".
    let mut ends: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (n, end) in &tail_ends {
        ends.entry(end.clone().unwrap_or_else(|| "still open".into()))
            .or_default()
            .push(*n);
    }
    let tails_line: Vec<String> = ends
        .iter()
        .map(|(end, counts)| {
            let (lo, hi) = (
                counts.iter().min().copied().unwrap_or(0),
                counts.iter().max().copied().unwrap_or(0),
            );
            format!("{} after {lo}–{hi} events read: {end}", counts.len())
        })
        .collect();
    println!(
        "\n## Overload: {c} callers, then {} (half with 4 MiB batches) for {over_s} s, then {c} again \
         (ingest --max-queue-delay {})\n\n{}\n\
         RESOURCE_EXHAUSTED (with RetryInfo) answered {exhausted} calls; back to 80% of the baseline \
         {} after the overload.\n\
         Slow clients meanwhile: {SLOW_STREAMS} PublishStream senders that never read (they got {stream_events} events \
         onto the wire in all: ingest stops reading each at its window of {STREAM_WINDOW}); {tails_opened} TailEvents \
         readers that never read, then drained: {}.\n\n{}\n",
        3 * c,
        max_queue_delay(options),
        table.render(),
        back_after.map_or("not within the recovery phase".into(), |s| format!(
            "within {s} s"
        )),
        tails_line.join("; "),
        mem_table.render()
    );
    let per_second_json: Vec<u64> = {
        let mut all_seconds = baseline.per_second.clone();
        for t in [&small, &big, &recovery] {
            if all_seconds.len() < t.per_second.len() {
                all_seconds.resize(t.per_second.len(), 0);
            }
            for (i, n) in t.per_second.iter().enumerate() {
                all_seconds[i] += n;
            }
        }
        all_seconds
    };
    let phase_json = |t: &mut Tally, callers: usize, rate: f64| {
        json!({
            "callers": callers,
            "acked": t.acked.len(),
            "events_per_s": round3(rate),
            "p50_ms": round3(t.latency.quantile_ms(0.5)),
            "p99_ms": round3(t.latency.quantile_ms(0.99)),
            "call_codes": t.call_codes,
            "event_codes": t.event_codes,
        })
    };
    Ok(json!({
        "baseline": phase_json(&mut baseline, c, base_rate),
        "overload_small": phase_json(&mut small, 3 * c - 3 * c / 2, small_rate),
        "overload_big": phase_json(&mut big, 3 * c / 2, big_rate),
        "recovery": phase_json(&mut recovery, c, recover_rate),
        "seconds": {"baseline": base_s, "overload": over_s, "recovery": recover_s, "overload_from": over_from, "recovery_from": recover_from},
        "acked_per_second": per_second_json,
        "recovered_within_s": back_after,
        "resource_exhausted_calls": exhausted,
        "max_queue_delay": max_queue_delay(options),
        "acked": acked.len(),
        "stored": stored,
        "slow_publish_streams": {"clients": SLOW_STREAMS, "events_sent": stream_events, "window": STREAM_WINDOW},
        "slow_tails": tail_ends.iter().map(|(n, end)| json!({"events": n, "end": end})).collect::<Vec<_>>(),
        "memory": memory,
    }))
}
