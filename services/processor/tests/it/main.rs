//! The processor against a real broker (nisshi, memory engine) and a real
//! PostgreSQL database of its own.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaArgs;
use tributary_kafka::producer::{Producer, ProducerSettings, Record};
use tributary_processor::{Config, Processor};
use tributary_proto::v1::{Event, EventEnvelope, IngestMetadata};
use tributary_testkit::{TestBroker, TestDb, eventually, suffix};

const PARTITIONS: i32 = 3;

fn envelope(event_id: &str, event_type: &str, user: &str) -> Vec<u8> {
    EventEnvelope {
        envelope_version: 1,
        event: Some(Event {
            event_id: event_id.into(),
            event_type: event_type.into(),
            user_id: user.into(),
            occurred_at: Some(SystemTime::now().into()),
            ..Default::default()
        }),
        payload_json: r#"{"amount":12.5,"items":[1,2]}"#.into(),
        received_at: Some(SystemTime::now().into()),
        ingest: Some(IngestMetadata {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            ..Default::default()
        }),
    }
    .encode_to_vec()
}

async fn produce(kafka: &KafkaArgs, records: &[(Option<&str>, Vec<u8>)]) {
    let producer = Producer::new(
        kafka,
        &ProducerSettings::default(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    for (key, value) in records {
        producer
            .send(Record {
                topic: &kafka.topic,
                key: key.map(str::as_bytes),
                value,
                headers: &[(
                    "traceparent",
                    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )],
            })
            .await
            .unwrap();
    }
}

fn config(db_url: &str, kafka: &KafkaArgs, group: &str) -> Config {
    <Config as clap::Parser>::parse_from([
        "tributary-processor",
        "--auth=off",
        "--grpc-addr=127.0.0.1:0",
        "--http-addr=127.0.0.1:0",
        &format!("--kafka-brokers={}", kafka.kafka_brokers),
        &format!("--topic={}", kafka.topic),
        &format!("--dlq-topic={}", kafka.dlq_topic),
        &format!("--database-url={db_url}"),
        &format!("--group={group}"),
        "--batch-timeout=20ms",
        "--max-backoff=200ms",
    ])
}

async fn start(
    config: Config,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    tributary_testkit::init_telemetry();
    let processor = Processor::build(config, prometheus::Registry::new())
        .await
        .unwrap();
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(processor.run(async move { stop.cancelled().await }));
    (token, handle)
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let client = db.pool.get().await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Committed offset and end offset for each partition of the topic.
fn offsets(kafka: &KafkaArgs, group: &str) -> Vec<(Option<i64>, i64)> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .unwrap()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(&kafka.topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let c = match committed
                .find_partition(&kafka.topic, p)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            let (_, high) = consumer
                .fetch_watermarks(&kafka.topic, p, Duration::from_secs(10))
                .unwrap();
            (c, high)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_each_event_once_and_dead_letters_poison() {
    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let sfx = suffix();
    let kafka = broker.kafka_args(&sfx);
    broker.create_topics(&kafka, PARTITIONS).await.unwrap();
    let group = format!("g-{sfx}");

    produce(
        &kafka,
        &[
            (Some("u1"), envelope("e-1", "order.placed", "u1")),
            (Some("u2"), envelope("e-2", "order.placed", "u2")),
            (Some("u1"), envelope("e-1", "order.placed", "u1")), // redelivered/retried
            (Some("u3"), envelope("e-3", "page.view", "u3")),
            (Some("x"), b"\x00\xffnot an envelope".to_vec()),
            (Some("y"), envelope("e-bad", "Not-A-Type", "u4")),
        ],
    )
    .await;

    let (token, handle) = start(config(&db.url, &kafka, &group)).await;
    eventually(
        Duration::from_secs(30),
        "3 rows and 2 dead letters",
        || async {
            let rows = count(&db, "SELECT count(*) FROM events").await;
            let dead = count(&db, "SELECT count(*) FROM dead_letters").await;
            (rows == 3 && dead == 2).then_some(())
        },
    )
    .await
    .unwrap();

    let client = db.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT user_id, payload->>'amount', trace_id, kafka_offset >= 0 FROM events WHERE event_id = 'e-1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "u1");
    assert_eq!(row.get::<_, String>(1), "12.5");
    assert_eq!(row.get::<_, String>(2), "0af7651916cd43dd8448eb211c80319c");
    let reasons: Vec<String> = client
        .query("SELECT reason FROM dead_letters ORDER BY reason", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(reasons[0].contains("event.event_type"), "{reasons:?}");
    assert!(
        reasons[1].starts_with("value is not a tributary.v1.EventEnvelope"),
        "{reasons:?}"
    );
    let bad: (Option<String>, Vec<String>) = {
        let r = client
            .query_one(
                "SELECT event_id, header_keys FROM dead_letters WHERE event_id = 'e-bad'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(bad.0.as_deref(), Some("e-bad"));
    assert_eq!(bad.1, ["traceparent"]);

    token.cancel();
    handle.await.unwrap().unwrap();
    // After a clean shutdown every record is committed.
    for (partition, (committed, end)) in offsets(&kafka, &group).into_iter().enumerate() {
        if end > 0 {
            assert_eq!(committed, Some(end), "partition {partition}");
        }
    }
    // The DLQ topic holds both poison records with their reason.
    let dlq_end: i64 = {
        let consumer: BaseConsumer = kafka.client_config().unwrap().create().unwrap();
        (0..PARTITIONS)
            .map(|p| {
                consumer
                    .fetch_watermarks(&kafka.dlq_topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .sum()
    };
    assert_eq!(dlq_end, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_postgresql_without_advancing_offsets() {
    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let sfx = suffix();
    let kafka = broker.kafka_args(&sfx);
    broker.create_topics(&kafka, PARTITIONS).await.unwrap();
    let group = format!("g-{sfx}");
    let records: Vec<(Option<&str>, Vec<u8>)> = (0..20)
        .map(|i| (None, envelope(&format!("d-{i}"), "sensor.reading", "")))
        .collect();
    produce(&kafka, &records).await;

    // The database the processor is pointed at does not exist yet.
    let (token, handle) = start(config(&db.url_of_missing_database(), &kafka, &group)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        offsets(&kafka, &group)
            .iter()
            .all(|(committed, _)| committed.is_none()),
        "offsets advanced while nothing was stored"
    );

    db.create_missing().await.unwrap();
    let pool = tributary_store::pool::build(&tributary_store::PoolConfig::new(
        db.url_of_missing_database(),
    ))
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "20 rows once PostgreSQL serves",
        || async {
            let client = pool.get().await.ok()?;
            let n: i64 = client
                .query_one("SELECT count(*) FROM events", &[])
                .await
                .ok()?
                .get(0);
            (n == 20).then_some(())
        },
    )
    .await
    .unwrap();
    let dead: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dead, 0,
        "nothing is dead-lettered because the database was down"
    );
    token.cancel();
    handle.await.unwrap().unwrap();
    drop(pool);
    let total_committed: i64 = offsets(&kafka, &group)
        .iter()
        .map(|(c, _)| c.unwrap_or(0))
        .sum();
    assert_eq!(total_committed, 20);
}

/// One published event yields, in the exported spans: the ingest server span,
/// its produce span (same trace), the processor's batch span (a trace of its
/// own) linking to the produce span, and the insert span under the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_traced_from_ingest_to_the_insert() {
    use serde_json::Value;
    let telemetry = tributary_testkit::init_telemetry();
    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let sfx = suffix();
    let kafka = broker.kafka_args(&sfx);
    broker.create_topics(&kafka, PARTITIONS).await.unwrap();
    let (stop_processor, processor) = start(config(&db.url, &kafka, &format!("g-{sfx}"))).await;

    let ingest_config = <tributary_ingest::Config as clap::Parser>::parse_from([
        "tributary-ingest",
        "--auth=off",
        "--grpc-addr=127.0.0.1:0",
        "--http-addr=127.0.0.1:0",
        &format!("--kafka-brokers={}", kafka.kafka_brokers),
        &format!("--topic={}", kafka.topic),
        &format!("--database-url={}", db.url),
    ]);
    let ingest = tributary_ingest::Ingest::build(ingest_config, prometheus::Registry::new())
        .await
        .unwrap();
    let addr = ingest.grpc_addr();
    let stop_ingest = CancellationToken::new();
    let stop = stop_ingest.clone();
    tokio::spawn(ingest.run(async move { stop.cancelled().await }));
    let mut client = tributary_proto::v1::ingest_service_client::IngestServiceClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    let event_id = format!("traced-{sfx}");
    client
        .publish(tributary_proto::v1::PublishRequest {
            event: Some(Event {
                event_id: event_id.clone(),
                event_type: "page.view".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    let trace_id: String = eventually(Duration::from_secs(30), "the row", || async {
        let client = db.pool.get().await.ok()?;
        client
            .query_opt(
                "SELECT trace_id FROM events WHERE event_id = $1",
                &[&event_id],
            )
            .await
            .ok()?
            .map(|r| r.get(0))
    })
    .await
    .unwrap();
    assert_eq!(trace_id.len(), 32);

    let field = |span: &Value, key: &str| span[key].as_str().unwrap_or_default().to_owned();
    let (server, produce, batch, insert) =
        eventually(Duration::from_secs(30), "the spans", || async {
            let spans = telemetry.spans().await;
            let in_trace = |kind: &str| {
                spans
                    .iter()
                    .find(|s| s["trace_id"] == trace_id.as_str() && s["kind"] == kind)
                    .cloned()
            };
            let server = in_trace("server")?;
            let produce = in_trace("producer")?;
            let batch = spans
                .iter()
                .find(|s| {
                    s["kind"] == "consumer"
                        && s["links"].as_array().is_some_and(|links| {
                            links.iter().any(|l| {
                                l["trace_id"] == trace_id.as_str()
                                    && l["span_id"] == produce["span_id"]
                            })
                        })
                })?
                .clone();
            let insert = spans
                .iter()
                .find(|s| s["parent_span_id"] == batch["span_id"] && s["name"] == "INSERT events")?
                .clone();
            Some((server, produce, batch, insert))
        })
        .await
        .unwrap();
    assert_eq!(field(&server, "name"), "tributary.v1.IngestService/Publish");
    assert_eq!(field(&produce, "parent_span_id"), field(&server, "span_id"));
    assert_ne!(
        field(&batch, "trace_id"),
        trace_id,
        "the batch starts a trace of its own"
    );
    assert_eq!(field(&insert, "trace_id"), field(&batch, "trace_id"));
    assert_eq!(field(&insert, "kind"), "client");

    stop_ingest.cancel();
    stop_processor.cancel();
    processor.await.unwrap().unwrap();
}

fn counter(registry: &prometheus::Registry, name: &str, result: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "result" && l.value() == result)
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// An erased user's records below the tombstone's end offsets (a replay
/// would read them again) are neither stored nor dead-lettered, and are
/// counted; the user's record published after the erasure is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_an_erased_users_records_below_the_tombstone() {
    use tributary_store::erasure::{self, EndOffset};
    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let sfx = suffix();
    let kafka = broker.kafka_args(&sfx);
    broker.create_topics(&kafka, PARTITIONS).await.unwrap();
    let group = format!("g-{sfx}");
    // One key: one partition, in order.
    produce(
        &kafka,
        &[
            (Some("k"), envelope("g-1", "order.placed", "gone")),
            (Some("k"), envelope("k-1", "order.placed", "kept")),
            (Some("k"), envelope("g-2", "order.placed", "gone")),
            // Poison of the erased user: not even a dead letter.
            (Some("k"), envelope("g-bad", "Not-A-Type", "gone")),
        ],
    )
    .await;
    let end_offsets: Vec<EndOffset> = offsets(&kafka, &group)
        .into_iter()
        .zip(0..)
        .map(|((_, end), partition)| EndOffset {
            topic: kafka.topic.clone(),
            partition,
            end_offset: end,
        })
        .collect();
    assert_eq!(end_offsets.iter().map(|o| o.end_offset).sum::<i64>(), 4);
    {
        let mut c = db.pool.get().await.unwrap();
        let key = erasure::key(&c).await.unwrap();
        let tx = c.transaction().await.unwrap();
        erasure::erase_user(&tx, "gone", &key, &end_offsets, &|_: &[u8]| None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    // After the erasure: stored as any other.
    produce(
        &kafka,
        &[(Some("k"), envelope("g-3", "order.placed", "gone"))],
    )
    .await;

    let registry = prometheus::Registry::new();
    tributary_testkit::init_telemetry();
    let processor = Processor::build(config(&db.url, &kafka, &group), registry.clone())
        .await
        .unwrap();
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(processor.run(async move { stop.cancelled().await }));
    eventually(
        Duration::from_secs(30),
        "2 rows and 3 records counted erased",
        || async {
            let rows = count(&db, "SELECT count(*) FROM events").await;
            let erased = counter(&registry, "tributary_processor_events_total", "erased");
            (rows == 2 && erased == 3.0).then_some(())
        },
    )
    .await
    .unwrap();
    let client = db.pool.get().await.unwrap();
    let ids: Vec<String> = client
        .query("SELECT event_id FROM events ORDER BY event_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["g-3", "k-1"]);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 0);
    assert_eq!(
        counter(&registry, "tributary_processor_events_total", "persisted"),
        2.0
    );
    assert_eq!(
        counter(&registry, "tributary_processor_events_total", "duplicate"),
        0.0
    );
    assert_eq!(
        counter(
            &registry,
            "tributary_processor_events_total",
            "dead_lettered"
        ),
        0.0
    );
    token.cancel();
    handle.await.unwrap().unwrap();
    // Skipped records count as done: every offset is committed.
    for (partition, (committed, end)) in offsets(&kafka, &group).into_iter().enumerate() {
        if end > 0 {
            assert_eq!(committed, Some(end), "partition {partition}");
        }
    }
    let dlq_end: i64 = {
        let consumer: BaseConsumer = kafka.client_config().unwrap().create().unwrap();
        (0..PARTITIONS)
            .map(|p| {
                consumer
                    .fetch_watermarks(&kafka.dlq_topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .sum()
    };
    assert_eq!(dlq_end, 0, "the erased user's poison was not published");
}
