//! Topic administration: `migrate` creates the topics explicitly (this broker
//! cannot add partitions later, and an auto-created topic would get its
//! default count).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::{KafkaArgs, KafkaError};

pub type Admin = AdminClient<DefaultClientContext>;

pub fn client(args: &KafkaArgs) -> Result<Admin, KafkaError> {
    Ok(args.client_config()?.create()?)
}

/// What `ensure_topic` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    /// It existed with this many partitions (possibly not the requested count).
    Existed {
        partitions: i32,
    },
}

/// Creates `topic` with `partitions` unless it exists; `retention` becomes
/// its `retention.ms` (`None`: the broker's default).
pub async fn ensure_topic(
    admin: &Admin,
    topic: &str,
    partitions: i32,
    replication: i32,
    retention: Option<Duration>,
    timeout: Duration,
) -> Result<TopicOutcome, KafkaError> {
    let retention_ms = retention.map(|r| r.as_millis().to_string());
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    if let Some(ms) = &retention_ms {
        new = new.set("retention.ms", ms);
    }
    let options = AdminOptions::new().operation_timeout(Some(Timeout::After(timeout)));
    let results = admin.create_topics([&new], &options).await?;
    // One topic asked, one result.
    match results.into_iter().next() {
        None | Some(Ok(_)) => Ok(TopicOutcome::Created),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
            let partitions = partition_count(admin.inner(), topic, timeout)?;
            Ok(TopicOutcome::Existed { partitions })
        }
        Some(Err((name, code))) => Err(KafkaError::CreateTopic {
            topic: name,
            reason: code.to_string(),
        }),
    }
}

/// Deletes a consumer group (its committed offsets). `Ok(false)` when the
/// broker knows no such group; an error when it refuses (e.g. the group
/// still has members, or the broker does not support it).
pub async fn delete_group(
    admin: &Admin,
    group: &str,
    timeout: Duration,
) -> Result<bool, KafkaError> {
    let options = AdminOptions::new().operation_timeout(Some(Timeout::After(timeout)));
    let results = admin.delete_groups(&[group], &options).await?;
    match results.into_iter().next() {
        None | Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::GroupIdNotFound))) => Ok(false),
        Some(Err((name, code))) => Err(KafkaError::DeleteGroup {
            group: name,
            reason: code.to_string(),
        }),
    }
}

/// The partition count of `topic` (blocking: run off the async threads).
pub fn partition_count<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), Timeout::After(timeout))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty());
    match found {
        Some(t) => Ok(i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)),
        None => Err(KafkaError::MissingTopic {
            topic: topic.to_owned(),
        }),
    }
}

/// Per partition of `topic`, its earliest offset and its end offset (the
/// offset the next record will get, the high watermark). Blocking: run it
/// off the async threads.
pub fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    let partitions = partition_count(consumer.client(), topic, timeout)?;
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        out.insert(p, consumer.fetch_watermarks(topic, p, timeout)?);
    }
    Ok(out)
}
