//! Kafka through librdkafka: the producer (idempotent, acks=all), the
//! at-least-once consumer settings, record headers and topic administration.
//! Nothing here knows which Kafka-protocol broker is on the other side.

pub mod admin;
mod config;
pub mod consumer;
pub mod producer;

pub use config::KafkaArgs;
pub use rdkafka;

/// The topic every event travels on.
pub const EVENTS_TOPIC: &str = "tributary.events";
/// Where the processor puts records it cannot store.
pub const DLQ_TOPIC: &str = "tributary.events.dlq";

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("topic {topic} does not exist (run `tributary-ctl migrate`)")]
    MissingTopic { topic: String },
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("cannot delete consumer group {group}: {reason}")]
    DeleteGroup { group: String, reason: String },
    #[error("invalid --kafka-option {0:?}: expected KEY=VALUE")]
    Option(String),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("kafka metadata request failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}
