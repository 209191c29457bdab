//! `tributary.v1.IngestService`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use futures_util::future::join_all;
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use tributary_kafka::producer::{ProduceError, Producer, Record};
use tributary_platform::deadline;
use tributary_platform::status as pstatus;
use tributary_platform::trace_context;
use tributary_proto::v1::{
    EventEnvelope, IngestMetadata, PublishBatchResponse, PublishResponse, PublishResult,
};
use tributary_proto::validate::{self, FieldViolation, MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
// The requests keep each payload as its encoded bytes: `prepare` writes the
// JSON straight from them (see `tributary_proto::wire`).
use tributary_proto::wire::ingest_service_server::IngestService;
use tributary_proto::wire::{self, Event, PublishBatchRequest, PublishRequest};

use crate::broker::{BrokerHealth, RETRY_AFTER};
use crate::metrics::{IngestMetrics, Rejection};

/// Version of [`EventEnvelope`] this ingest writes.
const ENVELOPE_VERSION: u32 = 1;

#[derive(Clone)]
pub struct IngestApi {
    pub producer: Producer,
    pub topic: Arc<str>,
    /// Bounds events being produced, over all requests.
    pub in_flight: Arc<Semaphore>,
    /// Bounds the bytes of the events being produced, in KiB.
    pub in_flight_kib: Arc<Semaphore>,
    pub stream_window: usize,
    pub metrics: IngestMetrics,
    pub instance: Arc<str>,
    pub schemas: tributary_store::schema_cache::SchemaCache,
    pub require_registered_types: bool,
    pub broker: BrokerHealth,
    pub backlog: crate::backlog::Backlog,
}

/// An event ready to produce.
struct Prepared {
    event_id: String,
    key: String,
    value: Vec<u8>,
}

impl IngestApi {
    /// Validates and encodes one event; `field` is its path in the request,
    /// `trace_id` the request's.
    fn prepare(
        &self,
        event: Event,
        field: &str,
        received_at: SystemTime,
        trace_id: &str,
    ) -> Result<Prepared, Vec<FieldViolation>> {
        let (mut event, payload) = event.into_fields();
        let payload_json = payload.map(|encoded| wire::struct_json(&encoded));
        let valid = validate::validate_with_payload(&event, payload_json, field, received_at)?;
        let schema_version = match self.schemas.get(&event.event_type) {
            Some(schema) => {
                // Only a registered type needs the payload as a JSON value.
                let payload: serde_json::Value = serde_json::from_str(&valid.payload_json)
                    .map_err(|e| {
                        vec![FieldViolation {
                            field: format!("{field}.payload"),
                            description: format!("cannot be read back as JSON: {e}"),
                        }]
                    })?;
                let failures =
                    tributary_store::event_types::violations(&schema.validator, &payload);
                if !failures.is_empty() {
                    return Err(failures
                        .into_iter()
                        .map(|(pointer, why)| FieldViolation {
                            field: format!("{field}.payload"),
                            description: format!(
                                "at {pointer}: {why} (schema {} version {})",
                                event.event_type, schema.version
                            ),
                        })
                        .collect());
                }
                schema.version
            }
            None if self.require_registered_types => {
                return Err(vec![FieldViolation {
                    field: format!("{field}.event_type"),
                    description: format!(
                        "{:?} is not a registered event type (this ingest requires one)",
                        event.event_type
                    ),
                }]);
            }
            None => 0,
        };
        if event.event_id.is_empty() {
            event.event_id = uuid::Uuid::now_v7().to_string();
        }
        event.occurred_at = Some(valid.occurred_at);
        let key = validate::partition_key(&event).to_owned();
        let event_id = event.event_id.clone();
        let envelope = EventEnvelope {
            envelope_version: ENVELOPE_VERSION,
            event: Some(event),
            payload_json: valid.payload_json,
            received_at: Some(prost_types::Timestamp::from(received_at)),
            ingest: Some(IngestMetadata {
                instance: self.instance.to_string(),
                trace_id: trace_id.to_owned(),
                schema_version,
                redriven_from_dead_letter: 0,
            }),
        };
        Ok(Prepared {
            event_id,
            key,
            value: envelope.encode_to_vec(),
        })
    }

    /// Produces prepared events as one publish: one producer span, whose
    /// context goes into every record's headers. For a batch that is the
    /// batch publish of the OpenTelemetry messaging conventions (each record
    /// still links back to it); a span and a `traceparent` per event would
    /// cost more CPU than the rest of ingest's work on it.
    ///
    /// A record not acknowledged when the broker goes down, or shortly
    /// before the call's `deadline`, is answered UNAVAILABLE with RetryInfo
    /// then: it may still be stored (once; a retry with its event id is
    /// safe), but the client learns now that it should retry, instead of
    /// seeing DEADLINE_EXCEEDED.
    async fn produce(&self, batch: &[&Prepared]) -> Vec<Result<(), Status>> {
        if batch.is_empty() {
            // Nothing valid to publish: no span for it.
            return Vec::new();
        }
        let span = tracing::info_span!(
            "kafka.produce",
            otel.name = %format!("publish {}", self.topic),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "publish",
            messaging.destination.name = %self.topic,
            messaging.message.id = tracing::field::Empty,
            messaging.batch.message_count = tracing::field::Empty,
            messaging.kafka.destination.partition = tracing::field::Empty,
            messaging.kafka.message.offset = tracing::field::Empty,
        );
        // A field never recorded is not exported: one event is named by its
        // id (and, once acked, its partition and offset), a batch by its size.
        match batch {
            [one] => span.record("messaging.message.id", one.event_id.as_str()),
            _ => span.record(
                "messaging.batch.message_count",
                i64::try_from(batch.len()).unwrap_or(i64::MAX),
            ),
        };
        async {
            let trace_headers = trace_context::current_headers();
            let headers: Vec<(&str, &[u8])> = trace_headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            let cut = self.cut().shared();
            let delivered = join_all(batch.iter().map(|prepared| {
                let cut = cut.clone();
                let send = self.producer.send(Record {
                    topic: &self.topic,
                    key: Some(prepared.key.as_bytes()),
                    value: &prepared.value,
                    headers: &headers,
                });
                async move {
                    tokio::select! {
                        biased;
                        delivered = send => delivered.map_err(Failure::Produce),
                        status = cut => Err(Failure::Cut(status)),
                    }
                }
            }))
            .await;
            if let [Ok(one)] = delivered.as_slice() {
                let span = tracing::Span::current();
                span.record("messaging.kafka.destination.partition", one.partition);
                span.record("messaging.kafka.message.offset", one.offset);
            }
            self.answer(delivered)
        }
        .instrument(span)
        .await
    }

    /// With `--require-registered-types`, an event can be judged only once
    /// the registry is loaded: until then every type would look unregistered,
    /// and the client would be told its event is invalid when it is not.
    fn registry_gate(&self) -> Result<(), Status> {
        if self.require_registered_types && !self.schemas.loaded() {
            return Err(Status::unavailable(
                "the event-type registry is not loaded yet (this ingest requires registered types); retry with backoff",
            ));
        }
        Ok(())
    }

    /// Resolves (with the answer for the records still waiting) when the
    /// broker goes down or the call's deadline is near.
    fn cut(&self) -> impl Future<Output = Status> + use<> {
        let broker = self.broker.clone();
        // Polled in the call's task, where its deadline is known.
        async move {
            tokio::select! {
                why = broker.went_down() => crate::broker::refused(&why),
                () = deadline::until_answer_by() => pstatus::unavailable_retry(
                    "the broker did not acknowledge the event before the call's deadline; \
                     retry (with the same event_id: it may have been stored, and is stored once)",
                    RETRY_AFTER,
                ),
            }
        }
    }

    /// Each record's status; failures counted, and logged once per publish.
    fn answer(
        &self,
        delivered: Vec<Result<tributary_kafka::producer::Delivered, Failure>>,
    ) -> Vec<Result<(), Status>> {
        let mut first: Option<String> = None;
        let mut failed = 0usize;
        let answers = delivered
            .into_iter()
            .map(|d| {
                d.map(|_| ()).map_err(|f| {
                    failed += 1;
                    let (rejection, status) = match f {
                        Failure::Cut(status) => (Rejection::Unavailable, status),
                        Failure::Produce(e) => produce_status(&e),
                    };
                    self.metrics.rejected(rejection, 1);
                    first.get_or_insert_with(|| format!("{}: {}", status.code(), status.message()));
                    status
                })
            })
            .collect();
        if let Some(first) = first {
            tracing::warn!(failed, first = %first, "events of a publish were not acknowledged");
        }
        answers
    }

    fn shed(&self, n: usize, what: String) -> Status {
        self.metrics.rejected(Rejection::Overloaded, n as u64);
        pstatus::resource_exhausted_retry(
            format!("ingest is at its in-flight limit ({what}); retry with backoff"),
            SHED_RETRY_AFTER,
        )
    }

    /// Room for `events`, by count and by bytes (both bounds hold while
    /// the permits live), or RESOURCE_EXHAUSTED with RetryInfo.
    fn try_reserve(&self, events: &[&Prepared]) -> Result<[OwnedSemaphorePermit; 2], Status> {
        let n = events.len();
        let bytes: usize = events.iter().map(|p| p.key.len() + p.value.len()).sum();
        let kib = bytes.div_ceil(1024);
        let count = u32::try_from(n)
            .ok()
            .and_then(|n| self.in_flight.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                self.shed(
                    n,
                    format!(
                        "{} events free, {n} asked",
                        self.in_flight.available_permits()
                    ),
                )
            })?;
        let size = u32::try_from(kib)
            .ok()
            .and_then(|k| self.in_flight_kib.clone().try_acquire_many_owned(k).ok())
            .ok_or_else(|| {
                self.shed(
                    n,
                    format!(
                        "{} KiB of event bytes free, {kib} KiB asked",
                        self.in_flight_kib.available_permits()
                    ),
                )
            })?;
        Ok([count, size])
    }
}

/// What a client shed at the in-flight limit is told to wait: acks free
/// room within milliseconds.
const SHED_RETRY_AFTER: Duration = Duration::from_millis(500);

/// What a client shed for the backlog is told to wait: 250-750 ms, spread
/// so that the callers refused together do not all come back together
/// (which would build the same backlog again at once).
fn backlog_retry_after() -> Duration {
    let spread = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 500_000_000);
    Duration::from_millis(250) + Duration::from_nanos(u64::from(spread))
}

/// Why a record was not acknowledged.
enum Failure {
    Produce(ProduceError),
    /// The broker went down, or the deadline came near, before its ack.
    Cut(Status),
}

/// The status for a producer failure, and how it is counted: only a
/// provably permanent refusal is not retryable, and even that is the
/// deployment's fault, never INTERNAL.
fn produce_status(e: &ProduceError) -> (Rejection, Status) {
    match e {
        ProduceError::Unavailable(e) => (
            Rejection::Unavailable,
            pstatus::unavailable_retry(
                format!(
                    "the broker did not acknowledge the event ({e}); retry \
                     (with the same event_id: it may have been stored, and is stored once)"
                ),
                RETRY_AFTER,
            ),
        ),
        ProduceError::QueueFull => (
            Rejection::Overloaded,
            pstatus::resource_exhausted_retry(
                "producer queue full; retry with backoff",
                RETRY_AFTER,
            ),
        ),
        ProduceError::Rejected(e) => (
            Rejection::BrokerRejected,
            Status::failed_precondition(format!(
                "the broker refuses the event ({e}); retrying cannot help until the deployment's \
                 broker settings are fixed"
            )),
        ),
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<PublishResult, Status>> + Send>>;

/// What became of one event of a publish: its id (assigned, or the client's
/// when it was rejected) and its status.
struct Outcome {
    event_id: String,
    result: Result<(), Status>,
}

impl IngestApi {
    /// Validates `events`, reserves room for the valid ones and produces them
    /// as one publish. One outcome per event, in order. `Err` when the call
    /// as a whole is refused (not ready, or at the in-flight limit).
    /// `field(i)` is event `i`'s path in the request.
    async fn publish_events(
        &self,
        events: Vec<Event>,
        field: impl Fn(usize) -> String,
        received_at: SystemTime,
    ) -> Result<Vec<Outcome>, Status> {
        self.registry_gate()?;
        if let Err(status) = self.broker.check().await {
            self.metrics
                .rejected(Rejection::Unavailable, events.len() as u64);
            return Err(status);
        }
        if let Some(waited) = self.backlog.over() {
            self.metrics
                .rejected(Rejection::Overloaded, events.len() as u64);
            return Err(pstatus::resource_exhausted_retry(
                format!(
                    "ingest is behind: its oldest publish has waited {} ms for the broker's acks \
                     (--max-queue-delay {} ms); retry with backoff",
                    waited.as_millis(),
                    self.backlog.max_delay().unwrap_or_default().as_millis()
                ),
                backlog_retry_after(),
            ));
        }
        let trace_id = trace_context::current_trace_id();
        // A rejected event's result still names it, when the client named it.
        let prepared: Vec<Result<Prepared, (String, Status)>> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let client_id = e.event_id.clone();
                self.prepare(e, &field(i), received_at, &trace_id)
                    .map_err(|v| (client_id, pstatus::invalid_argument(&v)))
            })
            .collect();
        let valid: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        self.metrics
            .rejected(Rejection::Invalid, (prepared.len() - valid.len()) as u64);
        let _permit = if valid.is_empty() {
            None
        } else {
            Some(self.try_reserve(&valid)?)
        };

        // The valid events' outcomes, merged back between the invalid ones'.
        let waiting = self.backlog.enter();
        let mut produced = self.produce(&valid).await.into_iter();
        drop(waiting);
        let outcomes: Vec<Outcome> = prepared
            .into_iter()
            .map(|p| match p {
                Ok(p) => Outcome {
                    result: produced
                        .next()
                        .unwrap_or_else(|| Err(Status::internal("no outcome for the event"))),
                    event_id: p.event_id,
                },
                Err((event_id, status)) => Outcome {
                    event_id,
                    result: Err(status),
                },
            })
            .collect();
        let accepted = outcomes.iter().filter(|o| o.result.is_ok()).count();
        self.metrics.accepted(accepted as u64);
        Ok(outcomes)
    }

    /// Publishes stream messages that arrived together as one publish, and
    /// answers each.
    async fn publish_stream_chunk(&self, chunk: Vec<(i32, PublishRequest)>) -> Vec<PublishResult> {
        let received_at = SystemTime::now();
        let mut results = Vec::with_capacity(chunk.len());
        let mut indexes = Vec::with_capacity(chunk.len());
        let mut events = Vec::with_capacity(chunk.len());
        for (index, message) in chunk {
            match message.event {
                Some(event) => {
                    indexes.push(index);
                    events.push(event);
                }
                None => {
                    self.metrics.rejected(Rejection::Invalid, 1);
                    let status = pstatus::invalid_argument(&[FieldViolation {
                        field: format!("stream[{index}].event"),
                        description: "is required".into(),
                    }]);
                    results.push(PublishResult {
                        index,
                        event_id: String::new(),
                        status: Some(pstatus::to_rpc_status(&status)),
                    });
                }
            }
        }
        let client_ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        let outcomes =
            match self
                .publish_events(
                    events,
                    |k| format!("stream[{}].event", indexes[k]),
                    received_at,
                )
                .await
            {
                Ok(outcomes) => outcomes,
                // Refused as a whole: every event gets the call's status.
                Err(status) => {
                    return results
                        .into_iter()
                        .chain(indexes.iter().zip(client_ids).map(|(&index, event_id)| {
                            PublishResult {
                                index,
                                event_id,
                                status: Some(pstatus::to_rpc_status(&status)),
                            }
                        }))
                        .collect();
                }
            };
        results.extend(
            outcomes
                .into_iter()
                .zip(&indexes)
                .map(|(o, &index)| stream_result(index, o)),
        );
        results
    }
}

fn stream_result(index: i32, outcome: Outcome) -> PublishResult {
    PublishResult {
        index,
        event_id: outcome.event_id,
        status: Some(match &outcome.result {
            Ok(()) => pstatus::ok_rpc_status(),
            Err(status) => pstatus::to_rpc_status(status),
        }),
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let received_at = SystemTime::now();
        let Some(event) = request.into_inner().event else {
            self.metrics.rejected(Rejection::Invalid, 1);
            return Err(pstatus::invalid_argument(&[FieldViolation {
                field: "event".into(),
                description: "is required".into(),
            }]));
        };
        let outcome = self
            .publish_events(vec![event], |_| "event".to_owned(), received_at)
            .await?
            .pop()
            .ok_or_else(|| Status::internal("no outcome for the event"))?;
        outcome.result?;
        Ok(Response::new(PublishResponse {
            event_id: outcome.event_id,
        }))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let received_at = SystemTime::now();
        self.registry_gate()?;
        let request = request.into_inner();
        let mut too_big = Vec::new();
        if request.events.len() > MAX_BATCH_EVENTS {
            too_big.push(FieldViolation {
                field: "events".into(),
                description: format!(
                    "holds {} events; the limit is {MAX_BATCH_EVENTS}",
                    request.events.len()
                ),
            });
        }
        let size = request.encoded_len();
        if size > MAX_BATCH_BYTES {
            too_big.push(FieldViolation {
                field: "events".into(),
                description: format!("is {size} bytes; the limit is {MAX_BATCH_BYTES}"),
            });
        }
        if !too_big.is_empty() {
            self.metrics
                .rejected(Rejection::Invalid, request.events.len() as u64);
            return Err(pstatus::invalid_argument(&too_big));
        }

        let n = request.events.len();
        let outcomes = self
            .publish_events(request.events, |i| format!("events[{i}]"), received_at)
            .await?;
        let accepted = outcomes.iter().filter(|o| o.result.is_ok()).count();
        let unavailable = outcomes.iter().find_map(|o| match &o.result {
            Err(s) if s.code() == tonic::Code::Unavailable => Some(s),
            _ => None,
        });
        // Nothing was acknowledged and the broker is why: fail the call, so a
        // client retries it whole (with its event ids, no event is stored twice).
        if accepted == 0
            && let Some(status) = unavailable
        {
            return Err(status.clone());
        }
        let results: Vec<PublishResult> = outcomes
            .into_iter()
            .enumerate()
            .map(|(index, o)| stream_result(i32::try_from(index).unwrap_or(i32::MAX), o))
            .collect();
        let accepted = i32::try_from(accepted).unwrap_or(i32::MAX);
        Ok(Response::new(PublishBatchResponse {
            rejected: i32::try_from(n).unwrap_or(i32::MAX) - accepted,
            accepted,
            results,
        }))
    }

    type PublishStreamStream = ResultStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let window = Arc::new(Semaphore::new(self.stream_window.max(1)));
        let (tx, rx) = mpsc::channel::<Result<PublishResult, Status>>(self.stream_window.max(1));
        let api = self.clone();
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let mut index: i32 = 0;
                let mut ended = false;
                while !ended {
                    // Wait for room in this stream's window before reading
                    // more: a fast client is slowed, not buffered without bound.
                    let Ok(slot) = window.clone().acquire_owned().await else {
                        break;
                    };
                    let Some(first) = next_message(inbound.next().await) else {
                        break;
                    };
                    let mut slots = vec![slot];
                    let mut chunk = vec![(index, first)];
                    index = index.saturating_add(1);
                    // Messages the client already sent are published together
                    // with the first (one publish, as for PublishBatch); none
                    // is waited for.
                    while chunk.len() < MAX_BATCH_EVENTS {
                        let Ok(slot) = window.clone().try_acquire_owned() else {
                            break;
                        };
                        match inbound.next().now_or_never() {
                            None => break,
                            Some(next) => match next_message(next) {
                                Some(message) => {
                                    slots.push(slot);
                                    chunk.push((index, message));
                                    index = index.saturating_add(1);
                                }
                                None => {
                                    ended = true;
                                    break;
                                }
                            },
                        }
                    }
                    let api = api.clone();
                    let tx = tx.clone();
                    tokio::spawn(
                        async move {
                            for result in api.publish_stream_chunk(chunk).await {
                                // The client may have gone; its events were still handled.
                                let _ = tx.send(Ok(result)).await;
                            }
                            drop(slots);
                        }
                        .in_current_span(),
                    );
                }
                // Results of events still in flight arrive as their tasks end;
                // the stream closes when the last sender (the last task) is gone.
            }
            .instrument(span),
        );
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The next message of a publish stream; `None` when the stream ended (or
/// the client broke it off).
fn next_message(next: Option<Result<PublishRequest, Status>>) -> Option<PublishRequest> {
    match next {
        None => None,
        Some(Ok(message)) => Some(message),
        Some(Err(status)) => {
            tracing::debug!(error = %status, "publish stream ended by the client");
            None
        }
    }
}
