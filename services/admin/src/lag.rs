//! Consumer lag: committed offsets against end offsets, per partition, and
//! the age of the oldest unconsumed record.
//!
//! The rdkafka AdminClient has no list-offsets call; a consumer's
//! `committed_offsets` plus `fetch_watermarks` give what a lag monitor needs.
//! Timestamps come from the record at the committed offset, read with an
//! assign-only consumer (this broker's ListOffsets-by-timestamp is unreliable).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tributary_kafka::{KafkaArgs, KafkaError};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Lag of one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    pub partition: i32,
    /// None: the group never committed on this partition.
    pub committed: Option<i64>,
    pub earliest: i64,
    pub end: i64,
    /// Records the group has yet to consume (never negative). With no commit,
    /// counted from the earliest offset (where the group would start).
    pub lag: i64,
    /// Age of the oldest unconsumed record; zero when nothing lags.
    pub time_lag: Duration,
}

pub struct LagMonitor {
    args: KafkaArgs,
    /// One consumer per group, only to read its committed offsets (it never
    /// subscribes, so it never joins the group).
    group_clients: Mutex<HashMap<String, BaseConsumer>>,
    /// Assign-only, to read the record at a committed offset.
    peeker: Mutex<BaseConsumer>,
    metrics: LagMetrics,
}

impl LagMonitor {
    pub fn new(args: &KafkaArgs, registry: &Registry) -> Result<Self, KafkaError> {
        let peeker: BaseConsumer = args
            .client_config()?
            .set("group.id", "tributary-admin-lag-peek")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        Ok(Self {
            args: args.clone(),
            group_clients: Mutex::new(HashMap::new()),
            peeker: Mutex::new(peeker),
            metrics: LagMetrics::register(registry)?,
        })
    }

    /// Measures `group` on `topic` now (blocking: run off the async threads).
    pub fn measure(&self, group: &str, topic: &str) -> Result<Vec<PartitionLag>, KafkaError> {
        // A panic while holding the lock leaves only consumer handles behind:
        // still usable, so recover from poisoning instead of failing forever.
        let mut clients = self
            .group_clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !clients.contains_key(group) {
            let c: BaseConsumer = self
                .args
                .client_config()?
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()?;
            clients.insert(group.to_owned(), c);
        }
        let Some(client) = clients.get(group) else {
            return Ok(Vec::new());
        };
        let partitions = tributary_kafka::admin::partition_count(client.client(), topic, TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = client.committed_offsets(tpl, TIMEOUT)?;
        let mut out = Vec::with_capacity(usize::try_from(partitions).unwrap_or(0));
        for p in 0..partitions {
            let (earliest, end) = client.fetch_watermarks(topic, p, TIMEOUT)?;
            let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) if o >= 0 => Some(o),
                _ => None,
            };
            let from = committed.unwrap_or(earliest).max(earliest);
            out.push(PartitionLag {
                partition: p,
                committed,
                earliest,
                end,
                lag: (end - from).max(0),
                time_lag: Duration::ZERO,
            });
        }
        drop(clients);
        self.fill_time_lag(topic, &mut out);
        Ok(out)
    }

    /// Reads the first unconsumed record of each lagging partition and takes
    /// its age. Bounded: one record per lagging partition, within TIMEOUT.
    fn fill_time_lag(&self, topic: &str, lags: &mut [PartitionLag]) {
        let lagging: Vec<(i32, i64)> = lags
            .iter()
            .filter(|l| l.lag > 0)
            .map(|l| {
                (
                    l.partition,
                    l.committed.unwrap_or(l.earliest).max(l.earliest),
                )
            })
            .collect();
        if lagging.is_empty() {
            return;
        }
        let peeker = self
            .peeker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &lagging {
            if tpl
                .add_partition_offset(topic, *p, Offset::Offset(*offset))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = peeker.assign(&tpl) {
            tracing::warn!(error = %e, "cannot assign partitions to read record times");
            return;
        }
        let now = SystemTime::now();
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut missing: Vec<i32> = lagging.iter().map(|(p, _)| *p).collect();
        while !missing.is_empty() && std::time::Instant::now() < deadline {
            let Some(Ok(m)) = peeker.poll(Duration::from_millis(200)) else {
                continue;
            };
            let Some(i) = missing.iter().position(|p| *p == m.partition()) else {
                continue;
            };
            missing.swap_remove(i);
            if let (Some(ms), Some(l)) = (
                m.timestamp().to_millis(),
                lags.iter_mut().find(|l| l.partition == m.partition()),
            ) {
                let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
                l.time_lag = now.duration_since(at).unwrap_or(Duration::ZERO);
            }
        }
        let _ = peeker.unassign();
    }

    /// Withdraws the series of groups no longer exported (a deleted
    /// subscription's).
    pub fn forget(&self, groups: &[String], topic: &str) {
        for group in groups {
            self.metrics.clear(group, topic);
        }
    }

    /// Refreshes the gauges for `groups` on `topic`.
    pub fn export(&self, groups: &[String], topic: &str) {
        for group in groups {
            match self.measure(group, topic) {
                Ok(lags) => self.metrics.set(group, topic, &lags),
                Err(e) => {
                    // Frozen values would look like a stalled consumer; no
                    // series says "unknown" (the target-down alert covers it).
                    tracing::warn!(group, error = %e, "cannot measure consumer lag; its series are withdrawn");
                    self.metrics.clear(group, topic);
                }
            }
        }
    }
}

struct LagMetrics {
    /// Partitions last exported per group, to withdraw them when a poll fails.
    exported: Mutex<HashMap<String, Vec<i32>>>,
    committed: IntGaugeVec,
    end: IntGaugeVec,
    lag: IntGaugeVec,
    lag_seconds: GaugeVec,
}

impl LagMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let int =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "tributary_consumer_group_lag_seconds",
                "Age of the oldest record the group has not consumed (0 when it has consumed all)",
            ),
            &["group", "topic", "partition"],
        )?;
        registry.register(Box::new(lag_seconds.clone()))?;
        Ok(Self {
            exported: Mutex::new(HashMap::new()),
            committed: int(
                "tributary_consumer_group_committed_offset",
                "Offset the group committed (absent for a partition it never committed on)",
                &["group", "topic", "partition"],
            )?,
            end: int(
                "tributary_topic_end_offset",
                "Offset the next record of the partition will get (high watermark)",
                &["topic", "partition"],
            )?,
            lag: int(
                "tributary_consumer_group_lag",
                "Records the group has yet to consume; never negative",
                &["group", "topic", "partition"],
            )?,
            lag_seconds,
        })
    }

    fn set(&self, group: &str, topic: &str, lags: &[PartitionLag]) {
        self.exported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(group.to_owned(), lags.iter().map(|l| l.partition).collect());
        for l in lags {
            let p = l.partition.to_string();
            if let Some(c) = l.committed {
                self.committed.with_label_values(&[group, topic, &p]).set(c);
            }
            self.end.with_label_values(&[topic, &p]).set(l.end);
            self.lag.with_label_values(&[group, topic, &p]).set(l.lag);
            self.lag_seconds
                .with_label_values(&[group, topic, &p])
                .set(l.time_lag.as_secs_f64());
        }
    }
}

impl LagMetrics {
    fn clear(&self, group: &str, topic: &str) {
        let partitions = self
            .exported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(group)
            .unwrap_or_default();
        for p in partitions {
            let p = p.to_string();
            let _ = self.committed.remove_label_values(&[group, topic, &p]);
            let _ = self.lag.remove_label_values(&[group, topic, &p]);
            let _ = self.lag_seconds.remove_label_values(&[group, topic, &p]);
        }
    }
}
