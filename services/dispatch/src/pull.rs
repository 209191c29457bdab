//! Pull delivery: `tributary.v1.SubscriberService/Pull`. Each stream is a
//! member of the subscription's consumer group, so several clients share the
//! partitions and one that goes away gives them back. The stream keeps, per
//! partition, the events sent and not yet acknowledged; it stores (for
//! commit) only the offset of the lowest of them, re-sends any not
//! acknowledged within the ack deadline, and reads no further ahead than the
//! client's `max_outstanding_events`, so a slow client never makes it buffer
//! without bound.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tributary_kafka::consumer::{self, ConsumerSettings};
use tributary_platform::record::{self, Decoded};
use tributary_platform::status::{self as pstatus, violation};
use tributary_proto::json::json_to_struct;
use tributary_proto::v1::subscriber_service_server::SubscriberService;
use tributary_proto::v1::{
    Event, PullRequest, PullResponse, ReceivedEvent, StoredEvent, Subscription, subscription,
};
use tributary_store::events::{EventFilter, NewEvent};
use tributary_store::subscriptions as store;

use crate::context::{Shared, matching};

const DEFAULT_OUTSTANDING: usize = 1000;
const MAX_OUTSTANDING: i32 = 10_000;
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(200);
/// How often the subscription (paused? changed? deleted?) and the stream's
/// partition assignment are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a new stream waits for dispatch's first read of the erasure
/// tombstones (only just after start).
const TOMBSTONES_WAIT: Duration = Duration::from_secs(5);

pub struct PullApi {
    shared: Arc<Shared>,
    /// Cancelled at shutdown: every stream ends with UNAVAILABLE.
    token: CancellationToken,
}

impl PullApi {
    pub fn new(shared: Arc<Shared>, token: CancellationToken) -> Self {
        Self { shared, token }
    }
}

#[tonic::async_trait]
impl SubscriberService for PullApi {
    type PullStream = ReceiverStream<Result<PullResponse, Status>>;

    async fn pull(
        &self,
        request: Request<Streaming<PullRequest>>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            violation("subscription", "the stream ended before its first request")
        })?;
        if first.subscription.is_empty() {
            return Err(violation(
                "subscription",
                "is required in the first request",
            ));
        }
        let max_outstanding = match first.max_outstanding_events {
            0 => DEFAULT_OUTSTANDING,
            n @ 1..=MAX_OUTSTANDING => usize::try_from(n).unwrap_or(DEFAULT_OUTSTANDING),
            n => {
                return Err(violation(
                    "max_outstanding_events",
                    format!("is {n}; must be 0 (the default, 1000) to {MAX_OUTSTANDING}"),
                ));
            }
        };
        let name = first.subscription.clone();
        let n = name.clone();
        let row = self
            .shared
            .pool
            .run(async |c| store::get(c, &n).await)
            .await
            .map_err(|e| pstatus::unavailable("cannot read the subscription", &e))?
            .ok_or_else(|| Status::not_found(format!("no subscription {name:?}")))?;
        let spec = Subscription::decode(row.spec.as_slice()).unwrap_or_default();
        let Some(subscription::Delivery::Pull(pull)) = &spec.delivery else {
            return Err(Status::failed_precondition(format!(
                "subscription {name:?} is a push subscription: dispatch delivers it to its webhook"
            )));
        };
        let ack_deadline = pull
            .ack_deadline
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(30));
        let filter =
            tributary_platform::filter::store_filter(&spec.filter.clone().unwrap_or_default())
                .map_err(|_| {
                    Status::failed_precondition("the subscription's filter is not valid")
                })?;
        let max_events = spec
            .batch
            .as_ref()
            .map_or(100, |b| usize::try_from(b.max_events).unwrap_or(100))
            .clamp(1, 1000);
        // Nothing is known erased before the tombstones are read (just
        // after start): wait for them a while, as for the subscription.
        let loading = tokio::time::Instant::now();
        while !self.shared.tombstones.loaded() {
            if loading.elapsed() >= TOMBSTONES_WAIT {
                return Err(pstatus::unavailable_retry(
                    "dispatch has not read the erasure tombstones yet (PostgreSQL?); retry",
                    Duration::from_secs(1),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let consumer = consumer::build(
            &self.shared.kafka,
            &ConsumerSettings {
                group: store::consumer_group(&name),
                session_timeout: Duration::from_secs(10),
                auto_commit_interval: Duration::from_secs(1),
            },
        )
        .map_err(|e| pstatus::unavailable("cannot join the subscription's consumer group", &e))?;
        consumer
            .subscribe(&[self.shared.kafka.topic.as_str()])
            .map_err(|e| pstatus::unavailable("cannot subscribe to the topic", &e))?;
        tracing::info!(subscription = %name, max_outstanding, "pull stream opened");
        let (tx, rx) = mpsc::channel(2);
        let mut session = Session {
            shared: self.shared.clone(),
            name,
            generation: row.generation,
            spec: row.spec,
            paused: row.paused,
            filter,
            ack_deadline,
            max_events,
            max_outstanding,
            consumer: Arc::new(consumer),
            partitions: HashMap::new(),
            resend: VecDeque::new(),
            fresh: VecDeque::new(),
        };
        session.acknowledge(&first);
        let token = self.token.child_token();
        tokio::spawn(async move {
            let ended = session.run(inbound, &tx, &token).await;
            if let Err(status) = ended {
                let _ = tx.send(Err(status)).await;
            }
            session.close().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// An event read and not yet acknowledged.
struct Pending {
    event: StoredEvent,
    /// When it was sent (None: waiting to be sent).
    sent_at: Option<Instant>,
    attempt: i32,
}

#[derive(Default)]
struct Partition {
    /// The next offset to read; records below it that are not pending were
    /// acknowledged or filtered, and are skipped if read again.
    next: i64,
    pending: BTreeMap<i64, Pending>,
    /// The offset last stored for commit.
    stored: i64,
}

struct Session {
    shared: Arc<Shared>,
    name: String,
    generation: i64,
    spec: Vec<u8>,
    paused: bool,
    filter: EventFilter,
    ack_deadline: Duration,
    max_events: usize,
    max_outstanding: usize,
    consumer: Arc<consumer::Consumer>,
    partitions: HashMap<i32, Partition>,
    /// Nacked or expired, to send again first.
    resend: VecDeque<(i32, i64)>,
    /// Read, not sent yet.
    fresh: VecDeque<(i32, i64)>,
}

impl Session {
    async fn run(
        &mut self,
        mut inbound: Streaming<PullRequest>,
        tx: &mpsc::Sender<Result<PullResponse, Status>>,
        token: &CancellationToken,
    ) -> Result<(), Status> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checked = Instant::now();
        let mut out: Option<PullResponse> = None;
        loop {
            if out.is_none() {
                out = self.next_batch();
            }
            let room = !self.paused && out.is_none() && self.outstanding() < self.max_outstanding;
            tokio::select! {
                biased;
                () = token.cancelled() => {
                    return Err(Status::unavailable("dispatch is stopping; pull again"));
                }
                m = inbound.message() => match m {
                    Ok(Some(request)) => self.acknowledge(&request),
                    // The client closed its side or went away.
                    Ok(None) | Err(_) => return Ok(()),
                },
                permit = tx.reserve(), if out.is_some() => match (permit, out.take()) {
                    (Ok(permit), Some(batch)) => {
                        self.sent(&batch);
                        permit.send(Ok(batch));
                    }
                    _ => return Ok(()),
                },
                m = self.consumer.recv(), if room => match m {
                    Ok(m) => {
                        let m = m.detach();
                        self.read(&m);
                        // Whatever else is waiting already, up to a batch.
                        while self.fresh.len() < self.max_events
                            && self.outstanding() < self.max_outstanding
                        {
                            match self.consumer.recv().now_or_never() {
                                Some(Ok(m)) => {
                                    let m = m.detach();
                                    self.read(&m);
                                }
                                _ => break,
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(subscription = %self.name, error = %e, "cannot read the topic");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = tick.tick() => self.expire(),
            }
            if checked.elapsed() >= CHECK_EVERY {
                checked = Instant::now();
                self.follow_assignment();
                self.follow_subscription().await?;
            }
            self.store_offsets();
        }
    }

    /// Sent and unacknowledged, plus read and not yet sent.
    fn outstanding(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }

    /// Judges a record: a matching event waits to be sent, anything else is
    /// passed over (counted as filtered).
    fn read(&mut self, m: &rdkafka::message::OwnedMessage) {
        let (partition, offset) = (m.partition(), m.offset());
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Partition {
                next: offset,
                stored: offset,
                ..Partition::default()
            });
        if offset < p.next {
            // Read again after the partition came back: skip what was
            // acknowledged or filtered, and what is pending already.
            return;
        }
        p.next = offset + 1;
        let event = match record::decode(m, &self.shared.schemas) {
            Decoded::Event(e)
                if self.shared.tombstones.is_erased(
                    &self.shared.kafka.topic,
                    &e.row.user_id,
                    partition,
                    offset,
                ) =>
            {
                self.shared
                    .metrics
                    .events
                    .with_label_values(&[&self.name, "erased"])
                    .inc();
                return;
            }
            Decoded::Event(e) => {
                matching(&self.filter, &e.row).map(|payload| stored_event(&e.row, payload))
            }
            Decoded::Poison(_) => None,
        };
        match event {
            Some(event) => {
                p.pending.insert(
                    offset,
                    Pending {
                        event,
                        sent_at: None,
                        attempt: 0,
                    },
                );
                self.fresh.push_back((partition, offset));
            }
            None => self
                .shared
                .metrics
                .events
                .with_label_values(&[&self.name, "filtered"])
                .inc(),
        }
    }

    /// The next batch to send: events to send again first, then fresh ones.
    fn next_batch(&mut self) -> Option<PullResponse> {
        let mut events = Vec::new();
        for queue in [&mut self.resend, &mut self.fresh] {
            while events.len() < self.max_events {
                let Some((partition, offset)) = queue.pop_front() else {
                    break;
                };
                let Some(p) = self
                    .partitions
                    .get(&partition)
                    .and_then(|p| p.pending.get(&offset))
                else {
                    continue; // acknowledged, or its partition left
                };
                events.push(ReceivedEvent {
                    ack_id: format!("{partition}.{offset}"),
                    event: Some(p.event.clone()),
                    delivery_attempt: p.attempt + 1,
                });
            }
        }
        (!events.is_empty()).then_some(PullResponse { events })
    }

    /// The batch is on its way: its deadlines start now.
    fn sent(&mut self, batch: &PullResponse) {
        let now = Instant::now();
        for e in &batch.events {
            if let Some(p) = ack_position(&e.ack_id).and_then(|(partition, offset)| {
                self.partitions
                    .get_mut(&partition)
                    .and_then(|p| p.pending.get_mut(&offset))
            }) {
                p.sent_at = Some(now);
                p.attempt = e.delivery_attempt;
            }
        }
    }

    fn acknowledge(&mut self, request: &PullRequest) {
        let m = &self.shared.metrics;
        for id in &request.ack_ids {
            let Some((partition, offset)) = ack_position(id) else {
                continue;
            };
            if let Some(done) = self
                .partitions
                .get_mut(&partition)
                .and_then(|p| p.pending.remove(&offset))
            {
                m.deliveries.with_label_values(&[&self.name, "acked"]).inc();
                m.events.with_label_values(&[&self.name, "delivered"]).inc();
                if let Some(at) = done.sent_at {
                    m.duration
                        .with_label_values(&[&self.name])
                        .observe(at.elapsed().as_secs_f64());
                }
            }
        }
        for id in &request.nack_ids {
            let Some((partition, offset)) = ack_position(id) else {
                continue;
            };
            if let Some(p) = self
                .partitions
                .get_mut(&partition)
                .and_then(|p| p.pending.get_mut(&offset))
                .filter(|p| p.sent_at.is_some())
            {
                p.sent_at = None;
                self.resend.push_back((partition, offset));
                m.deliveries
                    .with_label_values(&[&self.name, "nacked"])
                    .inc();
            }
        }
    }

    /// Sends again what was not acknowledged within the deadline.
    fn expire(&mut self) {
        let mut expired = 0u64;
        for (partition, p) in &mut self.partitions {
            for (offset, e) in &mut p.pending {
                if e.sent_at
                    .is_some_and(|at| at.elapsed() >= self.ack_deadline)
                {
                    e.sent_at = None;
                    self.resend.push_back((*partition, *offset));
                    expired += 1;
                }
            }
        }
        if expired > 0 {
            self.shared
                .metrics
                .deliveries
                .with_label_values(&[&self.name, "expired"])
                .inc_by(expired);
        }
    }

    /// Forgets partitions the group moved to another stream: their pending
    /// events are that stream's now (from the committed offset).
    fn follow_assignment(&mut self) {
        let Ok(assigned) = self.consumer.assignment() else {
            return;
        };
        let mine: HashSet<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        self.partitions.retain(|p, _| mine.contains(p));
    }

    /// Pause and resume take effect; any other change, or a delete, ends the
    /// stream (the client pulls again and gets the new settings).
    async fn follow_subscription(&mut self) -> Result<(), Status> {
        let name = self.name.clone();
        let row = match self
            .shared
            .pool
            .run(async |c| store::get(c, &name).await)
            .await
        {
            Ok(Some(row)) => row,
            Ok(None) => {
                return Err(Status::not_found(format!(
                    "subscription {:?} was deleted",
                    self.name
                )));
            }
            // PostgreSQL down: keep going as it was.
            Err(_) => return Ok(()),
        };
        if row.generation == self.generation {
            return Ok(());
        }
        if row.spec != self.spec {
            return Err(Status::unavailable(
                "the subscription was changed; pull again",
            ));
        }
        self.generation = row.generation;
        self.paused = row.paused;
        Ok(())
    }

    /// Stores, per partition, the offset of the lowest unacknowledged event
    /// (or past everything read): the group's commit resumes there.
    fn store_offsets(&mut self) {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (partition, p) in &mut self.partitions {
            let position = p.pending.keys().next().copied().unwrap_or(p.next);
            if position > p.stored
                && tpl
                    .add_partition_offset(
                        &self.shared.kafka.topic,
                        *partition,
                        rdkafka::Offset::Offset(position),
                    )
                    .is_ok()
            {
                p.stored = position;
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.store_offsets(&tpl)
        {
            tracing::debug!(subscription = %self.name, error = %e, "offsets not stored (partition moved?)");
        }
    }

    /// Leaves the group: the last stored offsets are committed and the
    /// partitions go to the other streams. Blocks on the broker, so not on a
    /// runtime thread.
    async fn close(self) {
        tracing::info!(subscription = %self.name, "pull stream closed");
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

/// `<partition>.<offset>`.
fn ack_position(id: &str) -> Option<(i32, i64)> {
    let (p, o) = id.split_once('.')?;
    Some((p.parse().ok()?, o.parse().ok()?))
}

/// The event as `ListEvents` returns it, less `persisted_at` (dispatch reads
/// the topic, not the table).
fn stored_event(e: &NewEvent, payload: serde_json::Value) -> StoredEvent {
    let payload = match payload {
        serde_json::Value::Object(map) => Some(json_to_struct(map)),
        _ => None,
    };
    StoredEvent {
        event: Some(Event {
            event_id: e.event_id.clone(),
            event_type: e.event_type.clone(),
            source: e.source.clone(),
            user_id: e.user_id.clone(),
            session_id: e.session_id.clone(),
            occurred_at: Some(e.occurred_at.into()),
            payload,
        }),
        received_at: Some(e.received_at.into()),
        persisted_at: None,
        partition: e.partition,
        offset: e.offset,
        trace_id: e.trace_id.clone(),
        schema_version: e.schema_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_round_trip_and_garbage_is_ignored() {
        assert_eq!(ack_position("3.1234"), Some((3, 1234)));
        assert_eq!(ack_position("3"), None);
        assert_eq!(ack_position("x.1"), None);
        assert_eq!(ack_position(""), None);
    }
}
