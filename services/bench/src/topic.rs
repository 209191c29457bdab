//! What the bench asks the broker: a topic's end offsets and the processor
//! group's committed offsets (so "all persisted" is "the group's lag is 0",
//! the processor committing only after its database transaction).

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;

pub const EVENTS_TOPIC: &str = tributary_kafka::EVENTS_TOPIC;
pub const PROCESSOR_GROUP: &str = "tributary-processor";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer that never subscribes: it reads offsets only.
pub struct Offsets {
    consumer: BaseConsumer,
}

impl Offsets {
    pub fn new(kafka: &tributary_kafka::KafkaArgs, group: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = kafka
            .client_config()?
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the offsets client")?;
        Ok(Self { consumer })
    }

    pub fn partitions(&self, topic: &str) -> anyhow::Result<Vec<i32>> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), Timeout::After(TIMEOUT))
            .with_context(|| format!("metadata of {topic}"))?;
        let t = metadata
            .topics()
            .first()
            .with_context(|| format!("{topic} is not in the metadata"))?;
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        anyhow::ensure!(!ids.is_empty(), "{topic} has no partitions");
        Ok(ids)
    }

    /// The end (high watermark) of each partition.
    pub fn ends(&self, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
        let mut out = Vec::new();
        for p in self.partitions(topic)? {
            let (_, high) = self
                .consumer
                .fetch_watermarks(topic, p, Timeout::After(TIMEOUT))
                .with_context(|| format!("watermarks of {topic}/{p}"))?;
            out.push((p, high));
        }
        Ok(out)
    }

    /// Commits the group's offsets at `topic`'s ends (the group must have no
    /// members): what it consumes next is what is published from now on.
    pub fn commit_ends(&self, topic: &str) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, end) in self.ends(topic)? {
            tpl.add_partition_offset(topic, p, Offset::Offset(end))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .with_context(|| format!("committing the group's offsets at the ends of {topic}"))
    }

    /// The group's lag on `topic`: end - committed, summed (a partition
    /// without a commit counts from 0).
    pub fn lag(&self, topic: &str) -> anyhow::Result<i64> {
        let ends = self.ends(topic)?;
        let mut tpl = TopicPartitionList::new();
        for (p, _) in &ends {
            tpl.add_partition(topic, *p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Timeout::After(TIMEOUT))
            .context("committed offsets")?;
        let mut lag = 0;
        for (p, end) in ends {
            let at = committed
                .find_partition(topic, p)
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .unwrap_or(0);
            lag += (end - at).max(0);
        }
        Ok(lag)
    }
}

/// `topic`'s end offsets now.
pub async fn ends(
    kafka: &tributary_kafka::KafkaArgs,
    topic: &str,
) -> anyhow::Result<Vec<(i32, i64)>> {
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    blocking(move || Offsets::new(&kafka, "tributary-bench")?.ends(&topic)).await
}

/// Creates `topic` unless it exists, with the events topic's partition count.
pub async fn ensure_like_events(
    kafka: &tributary_kafka::KafkaArgs,
    topic: &str,
    retention: Option<Duration>,
) -> anyhow::Result<()> {
    let k = kafka.clone();
    let partitions =
        blocking(move || Offsets::new(&k, "tributary-bench")?.partitions(EVENTS_TOPIC)).await?;
    let admin = tributary_kafka::admin::client(kafka)?;
    tributary_kafka::admin::ensure_topic(
        &admin,
        topic,
        i32::try_from(partitions.len())?,
        1,
        retention,
        TIMEOUT,
    )
    .await
    .with_context(|| format!("creating {topic}"))?;
    Ok(())
}

/// Runs a blocking offsets call off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// The SQL condition selecting the rows stored from the offset ranges
/// `[from, to)` of each partition, and the number of records in them. A
/// broker restarted on the memory engine counts offsets from 0 again, so
/// callers also match their run's event-id prefix ([`run_rows`]).
pub fn range_condition(from: &[(i32, i64)], to: &[(i32, i64)]) -> (String, i64) {
    let mut clauses = Vec::new();
    let mut records = 0;
    for (p, end) in to {
        let start = from
            .iter()
            .find(|(q, _)| q == p)
            .map(|(_, o)| *o)
            .unwrap_or(0);
        if *end > start {
            clauses.push(format!(
                "(kafka_partition = {p} AND kafka_offset >= {start} AND kafka_offset < {end})"
            ));
            records += end - start;
        }
    }
    if clauses.is_empty() {
        ("false".into(), 0)
    } else {
        (clauses.join(" OR "), records)
    }
}

/// The rows of this run (event ids `<run_id>.…`) stored from the ranges.
pub fn run_rows(run_id: &str, from: &[(i32, i64)], to: &[(i32, i64)]) -> String {
    let (condition, _) = range_condition(from, to);
    // run_id is `bench-<seconds>`: no quote can occur in it.
    format!("({condition}) AND starts_with(event_id, '{run_id}.')")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_new_offsets() {
        let (sql, n) = range_condition(&[(0, 5), (1, 0)], &[(0, 8), (1, 0), (2, 2)]);
        assert_eq!(n, 5);
        assert_eq!(
            sql,
            "(kafka_partition = 0 AND kafka_offset >= 5 AND kafka_offset < 8) OR \
             (kafka_partition = 2 AND kafka_offset >= 0 AND kafka_offset < 2)"
        );
        assert_eq!(range_condition(&[(0, 1)], &[(0, 1)]), ("false".into(), 0));
    }
}
