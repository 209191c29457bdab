//! Lag measurement against a real broker (nisshi, memory engine).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tributary_admin::lag::LagMonitor;
use tributary_kafka::producer::{Producer, ProducerSettings, Record};
use tributary_testkit::{TestBroker, suffix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_per_partition_never_negative_and_aged() {
    let broker = TestBroker::start().await.unwrap();
    let kafka = broker.kafka_args(&suffix());
    broker.create_topics(&kafka, 2).await.unwrap();
    let producer = Producer::new(
        &kafka,
        &ProducerSettings::default(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    let mut ends = [0i64; 2];
    for i in 0..6 {
        let d = producer
            .send(Record {
                topic: &kafka.topic,
                key: Some(format!("k{i}").as_bytes()),
                value: b"x",
                headers: &[],
            })
            .await
            .unwrap();
        ends[d.partition as usize] = ends[d.partition as usize].max(d.offset + 1);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let registry = prometheus::Registry::new();
    let monitor = LagMonitor::new(&kafka, &registry).unwrap();
    let group = format!("g-{}", suffix());
    let (m, g, t) = (
        std::sync::Arc::new(monitor),
        group.clone(),
        kafka.topic.clone(),
    );
    let m2 = m.clone();
    let before = tokio::task::spawn_blocking(move || m2.measure(&g, &t))
        .await
        .unwrap()
        .unwrap();
    // Never committed: reported as such, lag counted from the earliest offset.
    for (p, l) in before.iter().enumerate() {
        assert_eq!(l.committed, None);
        assert_eq!(l.lag, ends[p]);
        assert_eq!(l.end, ends[p]);
    }
    let lagging = before.iter().find(|l| l.lag > 0).unwrap();
    assert!(lagging.time_lag >= Duration::from_secs(1), "{lagging:?}");

    // The group commits all of partition 0 and nothing of partition 1 (offset
    // 0): lag 0 there, and every record of partition 1 still lags.
    let committer: BaseConsumer = kafka
        .client_config()
        .unwrap()
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&kafka.topic, 0, Offset::Offset(ends[0]))
        .unwrap();
    tpl.add_partition_offset(&kafka.topic, 1, Offset::Offset(0))
        .unwrap();
    committer.commit(&tpl, CommitMode::Sync).unwrap();

    let (g, t) = (group.clone(), kafka.topic.clone());
    let after = tokio::task::spawn_blocking(move || m.measure(&g, &t))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after[0].committed, Some(ends[0]));
    assert_eq!(after[0].lag, 0);
    assert_eq!(after[0].time_lag, Duration::ZERO);
    assert_eq!(after[1].committed, Some(0));
    assert_eq!(after[1].lag, ends[1]);
}
