//! The producer: idempotent, acks=all, never auto-creating topics, and
//! measured (`tributary_kafka_produce_duration_seconds`,
//! `tributary_kafka_producer_queue_messages`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::{Histogram, HistogramOpts, IntGauge, Registry};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::{KafkaArgs, KafkaError};

#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// How long a record may wait for the broker's ack before it fails.
    pub message_timeout: Duration,
    /// How long librdkafka waits to fill a batch.
    pub linger: Duration,
    /// The bytes of records librdkafka may hold unacknowledged
    /// (`queue.buffering.max.kbytes`); past it a send fails at once with
    /// [`ProduceError::QueueFull`]. `None`: librdkafka's default (1 GiB).
    pub queue_max_bytes: Option<u64>,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            message_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(2),
            queue_max_bytes: None,
        }
    }
}

/// Why a record was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The broker could not be reached, did not ack in time, or failed in a
    /// way not known to be permanent (its storage down, a leader moving, an
    /// error it does not name): retryable. A retry with the same event id is
    /// always safe: the record may still be stored, and is stored once.
    #[error("broker unavailable: {0}")]
    Unavailable(RdError),
    /// The local queue is full: shed load, retryable.
    #[error("producer queue full")]
    QueueFull,
    /// The broker refused the record for a reason a retry cannot change: it
    /// is larger than the broker takes, or the deployment's topic or
    /// credentials are wrong ([`Self::too_large`] tells which).
    #[error("broker rejected the record: {0}")]
    Rejected(RdError),
}

impl ProduceError {
    /// Only errors that are provably permanent are `Rejected`; everything
    /// else, including librdkafka's `Unknown` broker error, is `Unavailable`.
    pub fn from_rd(e: RdError) -> Self {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => Self::QueueFull,
            Some(code) if permanent(code) => Self::Rejected(e),
            _ => Self::Unavailable(e),
        }
    }

    /// The record is larger than the broker (or librdkafka) takes.
    pub fn too_large(&self) -> bool {
        matches!(self, Self::Rejected(e) if e.rdkafka_error_code().is_some_and(|c| matches!(
            c,
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )))
    }
}

/// Errors after which the same record can never be acknowledged without a
/// change to it or to the deployment.
fn permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::InvalidRequiredAcks
            | RDKafkaErrorCode::UnsupportedForMessageFormat
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::UnsupportedCompressionType
    )
}

/// A record to send.
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Where the broker put an acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    duration: Histogram,
    /// When the broker last acknowledged a record: nanoseconds since
    /// [`clock_start`], plus one (0: never).
    last_ack: Arc<AtomicU64>,
}

/// The start of the clock [`Producer::acked_since`] reads.
fn clock_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn clock_now() -> u64 {
    u64::try_from(clock_start().elapsed().as_nanos()).unwrap_or(u64::MAX) + 1
}

impl Producer {
    /// Builds the producer and registers its metrics into `registry`.
    pub fn new(
        args: &KafkaArgs,
        settings: &ProducerSettings,
        registry: &Registry,
    ) -> Result<Self, KafkaError> {
        let mut c = args.client_config()?;
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            // Topics are created by `migrate` with the right partition count;
            // an auto-created one would get the broker's default forever.
            .set("allow.auto.create.topics", "false")
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            )
            .set("queue.buffering.max.messages", "200000");
        if let Some(bytes) = settings.queue_max_bytes {
            // librdkafka takes 1..=2147483647 KiB.
            let kib = (bytes / 1024).clamp(1, 2_147_483_647);
            c.set("queue.buffering.max.kbytes", kib.to_string());
        }
        let inner: FutureProducer = c.create()?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "tributary_kafka_produce_duration_seconds",
                "Time from handing a record to the producer to the broker's ack",
            )
            .buckets(crate_buckets()),
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(QueueCollector {
            producer: inner.clone(),
            gauge: IntGauge::new(
                "tributary_kafka_producer_queue_messages",
                "Records handed to the producer and not yet acknowledged",
            )?,
        }))?;
        clock_start();
        Ok(Self {
            inner,
            duration,
            last_ack: Arc::default(),
        })
    }

    /// Sends one record and waits for the broker's ack.
    pub async fn send(&self, record: Record<'_>) -> Result<Delivered, ProduceError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(*value),
            });
        }
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(record.topic)
            .payload(record.value)
            .headers(headers);
        if let Some(key) = record.key {
            fr = fr.key(key);
        }
        let start = Instant::now();
        // A zero queue timeout: a full local queue fails at once (QueueFull,
        // shed by the caller) instead of blocking; message.timeout.ms bounds
        // the wait for the ack.
        let result = self.inner.send(fr, Timeout::After(Duration::ZERO)).await;
        self.duration.observe(start.elapsed().as_secs_f64());
        match result {
            Ok(delivery) => {
                self.last_ack.fetch_max(clock_now(), Ordering::Relaxed);
                Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((e, _)) => Err(ProduceError::from_rd(e)),
        }
    }

    /// Waits for everything queued to be acknowledged (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(Timeout::After(timeout))?;
        Ok(())
    }

    /// Whether the broker acknowledged a record at or after `since`: a
    /// broker that does is up, however slow its other answers.
    pub fn acked_since(&self, since: Instant) -> bool {
        let since = u64::try_from(since.saturating_duration_since(clock_start()).as_nanos())
            .unwrap_or(u64::MAX);
        self.last_ack.load(Ordering::Relaxed) > since
    }

    /// Records not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }

    /// Checks that the broker answers and `topic` exists.
    pub async fn check_topic(&self, topic: &str, timeout: Duration) -> Result<i32, KafkaError> {
        let producer = self.inner.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            crate::admin::partition_count(producer.client(), &topic, timeout)
        })
        .await?
    }
}

fn crate_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

struct QueueCollector {
    producer: FutureProducer,
    gauge: IntGauge,
}

impl Collector for QueueCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge.set(i64::from(self.producer.in_flight_count()));
        self.gauge.collect()
    }
}

/// Shared, for the parts that hold a producer behind an `Arc`.
pub type SharedProducer = Arc<Producer>;

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: RDKafkaErrorCode) -> &'static str {
        match ProduceError::from_rd(RdError::MessageProduction(code)) {
            ProduceError::Unavailable(_) => "unavailable",
            ProduceError::QueueFull => "queue full",
            ProduceError::Rejected(_) => "rejected",
        }
    }

    #[test]
    fn only_provably_permanent_errors_are_not_retryable() {
        // What a broker whose storage is down answers (librdkafka's
        // `Unknown`), and every transport or leadership failure: retryable.
        for code in [
            RDKafkaErrorCode::Unknown,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::KafkaStorageError,
            RDKafkaErrorCode::InvalidMessage,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::Fatal,
        ] {
            assert_eq!(class(code), "unavailable", "{code:?}");
        }
        assert_eq!(class(RDKafkaErrorCode::QueueFull), "queue full");
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            assert_eq!(class(code), "rejected", "{code:?}");
        }
    }
}
