//! Scenario `faults`: the no-loss promise under faults, with the status codes
//! clients see. Never in the default set: it kills parts of the deployment.
//!
//! Publishers send `PublishBatch` calls of their own event ids (source
//! `faults-<run>`) at a steady rate, each with a 5 s deadline, and retry
//! every event that was not acknowledged with the same id (after the
//! RetryInfo delay, else 200 ms), as a careful client does. A ledger keeps
//! every acknowledged id and when. Readers call query (`ListEvents`) and
//! admin (`GetConsumerLag`) meanwhile. Then, one at a time with steady load
//! between: `kill -9` of the processor, of ingest, of the broker (durable
//! engine only); `SIGSTOP`/`SIGCONT` of the broker; an immediate PostgreSQL
//! stop (SIGQUIT to the postmaster) and start; a second processor joining
//! mid-load and then killed (full mode); `kill -9` of query and of admin.
//! Each part is started again with `deploy.sh start PART`.
//!
//! Per fault: events acknowledged during it, stored, lost; the status codes
//! clients saw; fault to first acknowledgement, part back to first
//! acknowledgement, and fault until everything acknowledged before it is
//! stored. At the end, over the whole run: acknowledged, stored, lost,
//! duplicated, stored but never acknowledged. Checks: nothing lost or
//! doubled, no INTERNAL or UNKNOWN, and no publish ended in
//! DEADLINE_EXCEEDED (a broker that is down is answered UNAVAILABLE first).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tonic_types::StatusExt as _;
use tributary_proto::v1::admin_service_client::AdminServiceClient;
use tributary_proto::v1::ingest_service_client::IngestServiceClient;
use tributary_proto::v1::query_service_client::QueryServiceClient;
use tributary_proto::v1::{
    EventFilter, GetConsumerLagRequest, ListEventsRequest, PublishBatchRequest,
};

use crate::conn::{self, Connection, WithKey};
use crate::stats::{Table, round3, thousands};
use crate::{Checks, Options, data, procs};

/// Events per publish call.
const BATCH: usize = 20;
/// Every publish carries this deadline, as a careful client's does.
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// A retry without RetryInfo waits this long.
const RETRY_DEFAULT: Duration = Duration::from_millis(200);

/// Which part a fault hits, and how.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill(&'static str),
    /// SIGSTOP the broker for this long, then SIGCONT.
    PauseBroker(Duration),
    /// SIGQUIT to the postmaster (an immediate stop), down this long.
    StopPostgres(Duration),
    /// A second processor joins for this long, then is killed.
    SecondProcessor(Duration),
}

impl Fault {
    fn name(self) -> String {
        match self {
            Self::Kill(part) => format!("kill -9 {part}"),
            Self::PauseBroker(d) => format!("SIGSTOP broker {} s", d.as_secs()),
            Self::StopPostgres(d) => format!("PostgreSQL immediate stop {} s", d.as_secs()),
            Self::SecondProcessor(d) => {
                format!("second processor joins {} s, then kill -9", d.as_secs())
            }
        }
    }
}

/// What clients saw in one phase of the run.
#[derive(Default)]
struct Phase {
    /// gRPC code name → count, per publish call (the call's status, or OK).
    publish_calls: BTreeMap<String, u64>,
    /// Code name → count, per event (its result in an OK call, else the call's).
    publish_events: BTreeMap<String, u64>,
    /// Code name → count of the readers' calls to query (`ListEvents`).
    query_reads: BTreeMap<String, u64>,
    /// Code name → count of the readers' calls to admin (`GetConsumerLag`).
    admin_reads: BTreeMap<String, u64>,
    /// The first message seen per code that is not OK ("who: message").
    examples: BTreeMap<String, String>,
}

/// Shared by every client task.
struct Ledger {
    start: Instant,
    /// Acknowledged id → when (since `start`).
    acked: Mutex<HashMap<String, Duration>>,
    phases: Mutex<Vec<Phase>>,
    phase: AtomicUsize,
    stop: AtomicBool,
}

impl Ledger {
    fn phases(&self) -> MutexGuard<'_, Vec<Phase>> {
        self.phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn acked(&self) -> MutexGuard<'_, HashMap<String, Duration>> {
        self.acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self, pick: impl Fn(&mut Phase) -> &mut BTreeMap<String, u64>, key: &str, n: u64) {
        let i = self.phase.load(Ordering::Relaxed);
        let mut phases = self.phases();
        if let Some(phase) = phases.get_mut(i) {
            *pick(phase).entry(key.to_owned()).or_default() += n;
        }
    }

    /// Keeps the first message of each code that is not OK, per phase.
    fn example(&self, who: &str, key: &str, message: &str) {
        if key == "Ok" {
            return;
        }
        let i = self.phase.load(Ordering::Relaxed);
        let mut phases = self.phases();
        if let Some(phase) = phases.get_mut(i) {
            phase
                .examples
                .entry(key.to_owned())
                .or_insert_with(|| format!("{who}: {message}"));
        }
    }

    /// The first acknowledgement at or after `since` (both since `start`).
    fn first_ack_after(&self, since: Duration) -> Option<Duration> {
        self.acked()
            .values()
            .filter(|&&t| t >= since)
            .min()
            .copied()
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// How a failed call is counted: its code, except that a connection broken
/// in the middle of a call (the server was killed) is `ConnectionLost`.
/// tonic's client reports that as UNKNOWN "transport error", made up on the
/// client side (grpc-go and grpc-java say UNAVAILABLE); no server sent it.
pub(crate) fn status_key(status: &tonic::Status) -> String {
    if status.code() == tonic::Code::Unknown && std::error::Error::source(status).is_some() {
        "ConnectionLost".to_owned()
    } else {
        code_name(status.code())
    }
}

/// One publisher: a batch of new ids every `every`; what was not
/// acknowledged is sent again, same ids, before anything new.
async fn publisher(
    ledger: Arc<Ledger>,
    channel: Connection,
    prefix: String,
    source: String,
    every: Duration,
) {
    let mut client = IngestServiceClient::new(channel);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0u64;
    let mut pending: Vec<u64> = Vec::new();
    while !ledger.stop.load(Ordering::Relaxed) {
        if pending.is_empty() {
            tick.tick().await;
            pending = (next..next + BATCH as u64).collect();
            next += BATCH as u64;
        }
        let now = SystemTime::now();
        let events = pending
            .iter()
            .map(|&n| {
                let mut e = data::event(&prefix, n, now);
                e.source.clone_from(&source);
                e
            })
            .collect();
        let mut request = tonic::Request::new(PublishBatchRequest { events });
        request.set_timeout(CALL_DEADLINE);
        let mut wait = None;
        match client.publish_batch(request).await {
            Ok(response) => {
                ledger.count(|p| &mut p.publish_calls, "Ok", 1);
                let results = response.into_inner().results;
                let at = ledger.start.elapsed();
                let mut left = Vec::new();
                for (n, r) in pending.iter().zip(&results) {
                    let code = r
                        .status
                        .as_ref()
                        .map_or(tonic::Code::Ok, |s| tonic::Code::from(s.code));
                    let key = code_name(code);
                    ledger.count(|p| &mut p.publish_events, &key, 1);
                    if let Some(s) = &r.status {
                        ledger.example("publish (event)", &key, &s.message);
                    }
                    if code == tonic::Code::Ok {
                        ledger.acked().insert(data::event_id(&prefix, *n), at);
                    } else {
                        left.push(*n);
                    }
                }
                // An answer with fewer results than events: retry the rest.
                left.extend(pending.iter().skip(results.len()));
                pending = left;
            }
            Err(status) => {
                let key = status_key(&status);
                ledger.count(|p| &mut p.publish_calls, &key, 1);
                ledger.example("publish", &key, status.message());
                ledger.count(|p| &mut p.publish_events, &key, pending.len() as u64);
                wait = status.get_details_retry_info().and_then(|r| r.retry_delay);
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(wait.unwrap_or(RETRY_DEFAULT).min(Duration::from_secs(2))).await;
        }
    }
}

/// One reader of query and admin, every 100 ms; reconnects as needed.
async fn reader(ledger: Arc<Ledger>, options: Options, source: String) {
    let key = WithKey::new(options.api_key.as_deref()).unwrap_or_default();
    let mut query: Option<QueryServiceClient<Connection>> = None;
    let mut admin: Option<AdminServiceClient<Connection>> = None;
    let mut n = 0u64;
    while !ledger.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
        let (who, answer) = if n.is_multiple_of(2) {
            if query.is_none() {
                query = conn::connect(&options.query, &options.tls, &key)
                    .await
                    .ok()
                    .map(QueryServiceClient::new);
            }
            let answer = match query.as_mut() {
                None => Err(tonic::Status::unavailable("cannot connect")),
                Some(q) => {
                    let mut request = tonic::Request::new(ListEventsRequest {
                        filter: Some(EventFilter {
                            source: source.clone(),
                            ..Default::default()
                        }),
                        page_size: 10,
                        page_token: String::new(),
                    });
                    request.set_timeout(CALL_DEADLINE);
                    q.list_events(request).await.map(|_| ())
                }
            };
            ("query", answer)
        } else {
            if admin.is_none() {
                admin = conn::connect(&options.admin, &options.tls, &key)
                    .await
                    .ok()
                    .map(AdminServiceClient::new);
            }
            let answer = match admin.as_mut() {
                None => Err(tonic::Status::unavailable("cannot connect")),
                Some(a) => {
                    let mut request = tonic::Request::new(GetConsumerLagRequest {
                        group: crate::topic::PROCESSOR_GROUP.to_owned(),
                        topic: String::new(),
                    });
                    request.set_timeout(CALL_DEADLINE);
                    a.get_consumer_lag(request).await.map(|_| ())
                }
            };
            ("admin", answer)
        };
        let key = answer
            .as_ref()
            .err()
            .map_or_else(|| "Ok".to_owned(), status_key);
        if let Err(status) = &answer {
            ledger.example(who, &key, status.message());
        }
        if who == "query" {
            ledger.count(|p| &mut p.query_reads, &key, 1);
        } else {
            ledger.count(|p| &mut p.admin_reads, &key, 1);
        }
    }
}

/// `deploy.sh start PART` (waits until it is healthy).
async fn start(options: &Options, part: &str) -> anyhow::Result<()> {
    crate::deploy(options, "start", part).await
}

pub(crate) fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{name} {pid}: {status}");
    Ok(())
}

/// The pid of a running part, or an error naming it.
fn pid(deployment: &procs::Deployment, part: &str) -> anyhow::Result<u32> {
    deployment
        .pid(part)
        .with_context(|| format!("{part} is not running"))
}

/// Injects `fault` and repairs it; answers when the part was back (since the
/// ledger's start).
async fn inject(options: &Options, ledger: &Ledger, fault: Fault) -> anyhow::Result<Duration> {
    let deployment = options.deployment();
    match fault {
        Fault::Kill(part) => {
            signal(pid(&deployment, part)?, "KILL")?;
            // Long enough for clients to notice.
            tokio::time::sleep(Duration::from_secs(1)).await;
            start(options, part).await?;
        }
        Fault::PauseBroker(down) => {
            let broker = pid(&deployment, "broker")?;
            signal(broker, "STOP")?;
            tokio::time::sleep(down).await;
            signal(broker, "CONT")?;
        }
        Fault::StopPostgres(down) => {
            signal(pid(&deployment, "postgres")?, "QUIT")?;
            tokio::time::sleep(down).await;
            start(options, "postgres").await?;
        }
        Fault::SecondProcessor(joined) => {
            let mut second = second_processor(options).await?;
            tokio::time::sleep(joined).await;
            second
                .start_kill()
                .context("killing the second processor")?;
            let _ = second.wait().await;
        }
    }
    Ok(ledger.start.elapsed())
}

/// A second processor in the deployment's group, on free ports.
async fn second_processor(options: &Options) -> anyhow::Result<tokio::process::Child> {
    let binary = crate::bin_dir(options)?.join("tributary-processor");
    crate::own_service(options, &binary, crate::free_port()?)?
        .env("TRIBUTARY_AUTH", "off")
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// How many of `ids` are stored.
pub(crate) async fn stored_of(db: &tokio_postgres::Client, ids: &[String]) -> anyhow::Result<u64> {
    let mut stored = 0u64;
    for chunk in ids.chunks(10_000) {
        let row = db
            .query_one(
                "SELECT count(*) FROM events WHERE event_id = ANY($1)",
                &[&chunk],
            )
            .await
            .context("counting stored events")?;
        stored += u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    }
    Ok(stored)
}

/// Waits until every id in `ids` is stored; how long that took from `since`
/// (ledger time), or `None` within `limit`. Connects afresh each try:
/// PostgreSQL may be the part that is down.
pub(crate) async fn wait_stored(
    options: &Options,
    ids: &[String],
    limit: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(db) = crate::connect(&options.database_url).await
            && let Ok(n) = stored_of(&db, ids).await
            && n == ids.len() as u64
        {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

fn faults(options: &Options, durable: bool) -> Vec<Fault> {
    let (pause, pg_down, second) = if options.quick {
        (Duration::from_secs(5), Duration::from_secs(5), None)
    } else {
        (
            Duration::from_secs(10),
            Duration::from_secs(15),
            Some(Duration::from_secs(15)),
        )
    };
    let mut list = vec![Fault::Kill("processor"), Fault::Kill("ingest")];
    // The memory engine loses what it holds when it dies, by design: the
    // broker faults run on the durable engine only.
    if durable {
        list.push(Fault::Kill("broker"));
        list.push(Fault::PauseBroker(pause));
    }
    list.push(Fault::StopPostgres(pg_down));
    if let Some(d) = second {
        list.push(Fault::SecondProcessor(d));
    }
    list.push(Fault::Kill("query"));
    list.push(Fault::Kill("admin"));
    list
}

pub async fn run(options: &Options, checks: &mut Checks, run_id: &str) -> anyhow::Result<Value> {
    let deployment = options.deployment();
    // Every part of the deployment (procs::PARTS less the bench itself).
    for &part in procs::PARTS.iter().filter(|&&p| p != "client") {
        if deployment.pid(part).is_none() {
            bail!("the faults scenario needs the whole deployment running: {part} is not");
        }
    }
    let durable = procs::broker_engine(&deployment) == "postgres";
    let list = faults(options, durable);
    let (rate, settle) = if options.quick {
        (400.0, Duration::from_secs(4))
    } else {
        (1200.0, Duration::from_secs(10))
    };
    let source = format!("faults-{run_id}");
    let ledger = Arc::new(Ledger {
        start: Instant::now(),
        acked: Mutex::new(HashMap::new()),
        phases: Mutex::new((0..=list.len()).map(|_| Phase::default()).collect()),
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let every = Duration::from_secs_f64(BATCH as f64 * options.clients as f64 / rate);
    let mut tasks = Vec::new();
    for c in 0..options.clients {
        let channel = options.ingest_connection().await?;
        tasks.push(tokio::spawn(publisher(
            ledger.clone(),
            channel,
            format!("{source}-{c}-"),
            source.clone(),
            every,
        )));
    }
    tasks.push(tokio::spawn(reader(
        ledger.clone(),
        options.clone(),
        source.clone(),
    )));
    println!(
        "faults: {} publishers at {rate} events/s in batches of {BATCH} (5 s deadline, retries with the same ids); broker engine {}",
        options.clients,
        if durable {
            "postgres"
        } else {
            "memory (broker faults skipped)"
        }
    );

    // Steady load first (phase 0), then one fault per phase.
    tokio::time::sleep(settle).await;
    let mut timeline = Vec::new();
    let mut failure = None;
    for (i, fault) in list.iter().enumerate() {
        ledger.phase.store(i + 1, Ordering::Relaxed);
        let before: Vec<String> = ledger.acked().keys().cloned().collect();
        let at = ledger.start.elapsed();
        let at_instant = Instant::now();
        println!("faults: {} ...", fault.name());
        let back = match inject(options, &ledger, *fault).await {
            Ok(back) => back,
            Err(e) => {
                failure = Some(e.context(format!("injecting {}", fault.name())));
                break;
            }
        };
        // Publishes go through again (or 90 s pass), then steady load.
        let recovery = Instant::now() + Duration::from_secs(90);
        while ledger.first_ack_after(back).is_none() && Instant::now() < recovery {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(settle).await;
        let stored_at = wait_stored(options, &before, Duration::from_secs(120)).await;
        let first_ack = ledger.first_ack_after(at);
        let back_ack = ledger.first_ack_after(back);
        let secs = |d: Option<Duration>| d.map(|d| round3(d.as_secs_f64()));
        timeline.push(json!({
            "fault": fault.name(),
            "at_s": round3(at.as_secs_f64()),
            "back_s": round3(back.as_secs_f64()),
            "fault_to_first_ack_s": secs(first_ack.map(|t| t.saturating_sub(at))),
            "back_to_first_ack_s": secs(back_ack.map(|t| t.saturating_sub(back))),
            "fault_to_all_stored_s": secs(stored_at.map(|t| t.duration_since(at_instant))),
            "acked_before": before.len(),
        }));
    }
    ledger.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    if let Some(e) = failure {
        return Err(e);
    }

    // The verdict over the whole run: everything acknowledged is stored once.
    let acked: Vec<(String, Duration)> = ledger
        .acked()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let ids: Vec<String> = acked.iter().map(|(k, _)| k.clone()).collect();
    let drained = wait_stored(options, &ids, Duration::from_secs(180))
        .await
        .is_some();
    let db = crate::connect(&options.database_url).await?;
    let stored = stored_of(&db, &ids).await?;
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT event_id) FROM events WHERE source = $1",
            &[&source],
        )
        .await
        .context("counting the run's rows")?;
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    let rows = u64::try_from(rows).unwrap_or(0);
    let duplicated = rows.saturating_sub(u64::try_from(distinct).unwrap_or(0));
    let lost = ids.len() as u64 - stored.min(ids.len() as u64);
    let never_acked = rows.saturating_sub(stored);

    // Per phase: what was acknowledged during it, and the codes seen.
    let bounds: Vec<Duration> = timeline
        .iter()
        .filter_map(|t| t["at_s"].as_f64().map(Duration::from_secs_f64))
        .collect();
    let phase_of = |t: Duration| bounds.iter().filter(|&&b| t >= b).count();
    let mut per_phase = vec![0u64; list.len() + 1];
    for (_, t) in &acked {
        if let Some(n) = per_phase.get_mut(phase_of(*t)) {
            *n += 1;
        }
    }
    let phases = ledger.phases();
    let mut table = Table::new(&[
        "phase",
        "acked",
        "publish calls (code: count)",
        "events not acked (code: count)",
        "query reads",
        "admin reads",
        "fault → 1st ack s",
        "back → 1st ack s",
        "fault → acked before it stored s",
    ]);
    let mut json_phases = Vec::new();
    let fmt_codes = |m: &BTreeMap<String, u64>, skip_ok: bool| {
        m.iter()
            .filter(|(k, _)| !(skip_ok && k.as_str() == "Ok"))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, phase) in phases.iter().enumerate() {
        let name = if i == 0 {
            "steady load".to_owned()
        } else {
            list[i - 1].name()
        };
        let t = if i == 0 {
            &Value::Null
        } else {
            &timeline[i - 1]
        };
        let cell = |k: &str| match &t[k] {
            Value::Null => "-".to_owned(),
            v => v.to_string(),
        };
        table.row(vec![
            name.clone(),
            thousands(per_phase[i] as f64),
            fmt_codes(&phase.publish_calls, false),
            fmt_codes(&phase.publish_events, true),
            fmt_codes(&phase.query_reads, false),
            fmt_codes(&phase.admin_reads, false),
            cell("fault_to_first_ack_s"),
            cell("back_to_first_ack_s"),
            cell("fault_to_all_stored_s"),
        ]);
        json_phases.push(json!({
            "phase": name,
            "acked": per_phase[i],
            "publish_calls": phase.publish_calls,
            "publish_events": phase.publish_events,
            "query_reads": phase.query_reads,
            "admin_reads": phase.admin_reads,
            "examples": phase.examples,
            "timeline": t,
        }));
    }
    let seen = |code: &str| -> u64 {
        phases
            .iter()
            .map(|p| {
                p.publish_calls.get(code).copied().unwrap_or(0)
                    + p.publish_events.get(code).copied().unwrap_or(0)
                    + p.query_reads.get(code).copied().unwrap_or(0)
                    + p.admin_reads.get(code).copied().unwrap_or(0)
            })
            .sum()
    };
    let publish_deadlines: u64 = phases
        .iter()
        .map(|p| {
            p.publish_calls
                .get("DeadlineExceeded")
                .copied()
                .unwrap_or(0)
        })
        .sum();
    let (internal, unknown) = (seen("Internal"), seen("Unknown"));
    drop(phases);

    println!(
        "\n## Faults: {} publishers, {rate} events/s, batches of {BATCH}, 5 s deadline, retries with the same ids\n",
        options.clients
    );
    println!("{}", table.render());
    println!(
        "\nwhole run: acknowledged {}, stored {}, lost {lost}, duplicated {duplicated}, stored but never acknowledged {never_acked}",
        ids.len(),
        stored
    );
    checks.check(
        "faults: every acknowledged event is stored (lost 0)",
        drained && lost == 0,
        format!("acknowledged {}, stored {stored}, lost {lost}", ids.len()),
    );
    checks.check(
        "faults: no event is stored twice (duplicated 0)",
        duplicated == 0,
        format!("{rows} rows, {duplicated} duplicated"),
    );
    checks.check(
        "faults: no client saw INTERNAL or UNKNOWN",
        internal + unknown == 0,
        format!("Internal {internal}, Unknown {unknown}"),
    );
    checks.check(
        "faults: no publish ended in DEADLINE_EXCEEDED",
        publish_deadlines == 0,
        format!("{publish_deadlines} publish calls"),
    );
    checks.check(
        "faults: every fault was followed by an acknowledgement",
        timeline.iter().all(|t| !t["back_to_first_ack_s"].is_null()),
        format!("{timeline:?}"),
    );
    Ok(json!({
        "source": source,
        "clients": options.clients,
        "rate_events_per_s": rate,
        "batch": BATCH,
        "broker_engine": if durable { "postgres" } else { "memory" },
        "acknowledged": ids.len(),
        "stored": stored,
        "lost": lost,
        "duplicated": duplicated,
        "stored_never_acknowledged": never_acked,
        "phases": json_phases,
    }))
}
