//! Consumer settings for at-least-once processing.
//!
//! Offsets are stored by hand (`enable.auto.offset.store=false`) only after
//! the rows they cover are committed in PostgreSQL; librdkafka then commits
//! the stored offsets in the background and on rebalance. A crash between the
//! two re-delivers records, which the idempotent insert absorbs.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::{KafkaArgs, KafkaError};

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group: String,
    pub session_timeout: Duration,
    pub auto_commit_interval: Duration,
}

/// Logs partition assignments and commits.
pub struct LoggingContext;

impl ClientContext for LoggingContext {}

impl ConsumerContext for LoggingContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked")
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = %describe(tpl), "partitions assigned");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => tracing::debug!(offsets = %describe(offsets), "offsets committed"),
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

pub type Consumer = StreamConsumer<LoggingContext>;

pub fn build(args: &KafkaArgs, settings: &ConsumerSettings) -> Result<Consumer, KafkaError> {
    let mut c = args.client_config()?;
    c.set("group.id", &settings.group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            settings.auto_commit_interval.as_millis().to_string(),
        )
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .set("enable.partition.eof", "false");
    Ok(c.create_with_context(LoggingContext)?)
}
