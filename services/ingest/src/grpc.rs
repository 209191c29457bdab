//! `tributary.v1.IngestService`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::join_all;
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use tributary_kafka::producer::{ProduceError, Producer, Record};
use tributary_platform::status as pstatus;
use tributary_platform::trace_context;
use tributary_proto::v1::ingest_service_server::IngestService;
use tributary_proto::v1::{
    Event, EventEnvelope, IngestMetadata, PublishBatchRequest, PublishBatchResponse,
    PublishRequest, PublishResponse, PublishResult,
};
use tributary_proto::validate::{self, FieldViolation, MAX_BATCH_BYTES, MAX_BATCH_EVENTS};

use crate::metrics::{IngestMetrics, Rejection};

/// Version of [`EventEnvelope`] this ingest writes.
const ENVELOPE_VERSION: u32 = 1;

#[derive(Clone)]
pub struct IngestApi {
    pub producer: Producer,
    pub topic: Arc<str>,
    /// Bounds events being produced, over all requests.
    pub in_flight: Arc<Semaphore>,
    pub stream_window: usize,
    pub metrics: IngestMetrics,
    pub instance: Arc<str>,
    pub schemas: tributary_store::schema_cache::SchemaCache,
    pub require_registered_types: bool,
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
        mut event: Event,
        field: &str,
        received_at: SystemTime,
        trace_id: &str,
    ) -> Result<Prepared, Vec<FieldViolation>> {
        let valid = validate::validate_event(&event, field, received_at)?;
        let schema_version = match self.schemas.get(&event.event_type) {
            Some(schema) => {
                let failures =
                    tributary_store::event_types::violations(&schema.validator, &valid.payload);
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
        event.payload = None;
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
    async fn produce(&self, batch: &[&Prepared]) -> Vec<Result<(), ProduceError>> {
        let span = match batch {
            [one] => tracing::info_span!(
                "kafka.produce",
                otel.name = %format!("publish {}", self.topic),
                otel.kind = "producer",
                messaging.system = "kafka",
                messaging.operation.type = "publish",
                messaging.destination.name = %self.topic,
                messaging.message.id = %one.event_id,
                messaging.kafka.destination.partition = tracing::field::Empty,
                messaging.kafka.message.offset = tracing::field::Empty,
            ),
            _ => tracing::info_span!(
                "kafka.produce",
                otel.name = %format!("publish {}", self.topic),
                otel.kind = "producer",
                messaging.system = "kafka",
                messaging.operation.type = "publish",
                messaging.destination.name = %self.topic,
                messaging.batch.message_count = i64::try_from(batch.len()).unwrap_or(i64::MAX),
            ),
        };
        async {
            let trace_headers = trace_context::current_headers();
            let headers: Vec<(&str, &[u8])> = trace_headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            let delivered = join_all(batch.iter().map(|prepared| {
                self.producer.send(Record {
                    topic: &self.topic,
                    key: Some(prepared.key.as_bytes()),
                    value: &prepared.value,
                    headers: &headers,
                })
            }))
            .await;
            if let [Ok(one)] = delivered.as_slice() {
                let span = tracing::Span::current();
                span.record("messaging.kafka.destination.partition", one.partition);
                span.record("messaging.kafka.message.offset", one.offset);
            }
            delivered.into_iter().map(|d| d.map(|_| ())).collect()
        }
        .instrument(span)
        .await
    }

    /// Produces one prepared event (see [`Self::produce`]).
    async fn produce_one(&self, prepared: &Prepared) -> Result<(), ProduceError> {
        self.produce(&[prepared])
            .await
            .pop()
            .unwrap_or(Err(ProduceError::QueueFull))
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

    fn produce_status(&self, e: &ProduceError) -> Status {
        match e {
            ProduceError::Unavailable(_) => {
                self.metrics.rejected(Rejection::Unavailable, 1);
                pstatus::unavailable("broker did not acknowledge the event", e)
            }
            ProduceError::QueueFull => {
                self.metrics.rejected(Rejection::Overloaded, 1);
                Status::resource_exhausted("producer queue full; retry with backoff")
            }
            ProduceError::Rejected(_) => {
                self.metrics.rejected(Rejection::BrokerRejected, 1);
                pstatus::internal("broker rejected the event", e)
            }
        }
    }

    fn shed(&self, n: usize) -> Status {
        self.metrics.rejected(Rejection::Overloaded, n as u64);
        Status::resource_exhausted(format!(
            "ingest is at its in-flight limit ({} events); retry with backoff",
            self.in_flight.available_permits()
        ))
    }

    fn try_reserve(&self, n: usize) -> Result<OwnedSemaphorePermit, Status> {
        let n32 = u32::try_from(n).map_err(|_| self.shed(n))?;
        self.in_flight
            .clone()
            .try_acquire_many_owned(n32)
            .map_err(|_| self.shed(n))
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<PublishResult, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let received_at = SystemTime::now();
        self.registry_gate()?;
        let Some(event) = request.into_inner().event else {
            self.metrics.rejected(Rejection::Invalid, 1);
            return Err(pstatus::invalid_argument(&[FieldViolation {
                field: "event".into(),
                description: "is required".into(),
            }]));
        };
        let trace_id = trace_context::current_trace_id();
        let prepared = self
            .prepare(event, "event", received_at, &trace_id)
            .map_err(|v| {
                self.metrics.rejected(Rejection::Invalid, 1);
                pstatus::invalid_argument(&v)
            })?;
        let _permit = self.try_reserve(1)?;
        self.produce_one(&prepared)
            .await
            .map_err(|e| self.produce_status(&e))?;
        self.metrics.accepted(1);
        Ok(Response::new(PublishResponse {
            event_id: prepared.event_id,
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
        // A rejected event's result still names it, when the client named it.
        let client_ids: Vec<String> = request.events.iter().map(|e| e.event_id.clone()).collect();
        let trace_id = trace_context::current_trace_id();
        let prepared: Vec<Result<Prepared, Status>> = request
            .events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                self.prepare(e, &format!("events[{i}]"), received_at, &trace_id)
                    .map_err(|v| pstatus::invalid_argument(&v))
            })
            .collect();
        let valid: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        self.metrics
            .rejected(Rejection::Invalid, (n - valid.len()) as u64);
        let _permit = if valid.is_empty() {
            None
        } else {
            Some(self.try_reserve(valid.len())?)
        };

        // The valid events' outcomes, in order, merged back between the
        // invalid ones'.
        let mut produced = self.produce(&valid).await.into_iter();
        let outcomes: Vec<Result<(), Status>> = prepared
            .iter()
            .map(|p| match p {
                Ok(_) => produced
                    .next()
                    .unwrap_or(Err(ProduceError::QueueFull))
                    .map_err(|e| self.produce_status(&e)),
                Err(s) => Err(s.clone()),
            })
            .collect();

        let mut accepted: usize = 0;
        let mut unavailable: usize = 0;
        let results: Vec<PublishResult> = outcomes
            .iter()
            .zip(&prepared)
            .enumerate()
            .map(|(index, (outcome, p))| {
                let status = match outcome {
                    Ok(()) => {
                        accepted += 1;
                        pstatus::ok_rpc_status()
                    }
                    Err(s) => {
                        if s.code() == tonic::Code::Unavailable {
                            unavailable += 1;
                        }
                        pstatus::to_rpc_status(s)
                    }
                };
                PublishResult {
                    index: i32::try_from(index).unwrap_or(i32::MAX),
                    event_id: match p {
                        Ok(p) => p.event_id.clone(),
                        Err(_) => client_ids[index].clone(),
                    },
                    status: Some(status),
                }
            })
            .collect();
        self.metrics.accepted(accepted as u64);
        // Nothing was acknowledged and the broker is why: fail the call, so a
        // client retries it whole (nothing of it was stored, so no duplicates).
        if accepted == 0 && unavailable > 0 {
            return Err(Status::unavailable(
                "broker did not acknowledge the batch; retry with backoff",
            ));
        }
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
                loop {
                    // Wait for room in this stream's window before reading
                    // more: a fast client is slowed, not buffered without bound.
                    let Ok(slot) = window.clone().acquire_owned().await else {
                        break;
                    };
                    let message = match inbound.next().await {
                        None => break,
                        Some(Ok(m)) => m,
                        Some(Err(status)) => {
                            tracing::debug!(error = %status, "publish stream ended by the client");
                            break;
                        }
                    };
                    let i = index;
                    index = index.saturating_add(1);
                    let api = api.clone();
                    let tx = tx.clone();
                    tokio::spawn(
                        async move {
                            let result = api.publish_one_of_stream(i, message).await;
                            // The client may have gone; its events were still handled.
                            let _ = tx.send(Ok(result)).await;
                            drop(slot);
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

impl IngestApi {
    async fn publish_one_of_stream(&self, index: i32, message: PublishRequest) -> PublishResult {
        let received_at = SystemTime::now();
        let field = format!("stream[{index}].event");
        let client_id = message
            .event
            .as_ref()
            .map(|e| e.event_id.clone())
            .unwrap_or_default();
        let outcome: Result<String, Status> = async {
            self.registry_gate()?;
            let event = message.event.ok_or_else(|| {
                pstatus::invalid_argument(&[FieldViolation {
                    field: field.clone(),
                    description: "is required".into(),
                }])
            });
            let event = event.inspect_err(|_| self.metrics.rejected(Rejection::Invalid, 1))?;
            let trace_id = trace_context::current_trace_id();
            let prepared = self
                .prepare(event, &field, received_at, &trace_id)
                .map_err(|v| {
                    self.metrics.rejected(Rejection::Invalid, 1);
                    pstatus::invalid_argument(&v)
                })?;
            let _permit = self.try_reserve(1)?;
            self.produce_one(&prepared)
                .await
                .map_err(|e| self.produce_status(&e))?;
            self.metrics.accepted(1);
            Ok(prepared.event_id)
        }
        .await;
        match outcome {
            Ok(event_id) => PublishResult {
                index,
                event_id,
                status: Some(pstatus::ok_rpc_status()),
            },
            Err(status) => PublishResult {
                index,
                event_id: client_id,
                status: Some(pstatus::to_rpc_status(&status)),
            },
        }
    }
}
