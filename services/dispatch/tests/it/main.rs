//! Dispatch against a real broker (nisshi, memory engine), a real
//! PostgreSQL and a real HTTP receiver (a TCP listener in the test that
//! answers as told and records what it got).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use tributary_dispatch::{Config, Dispatch};
use tributary_kafka::KafkaArgs;
use tributary_kafka::producer::{Producer, ProducerSettings, Record};
use tributary_proto::v1::{
    BatchPolicy, Event, EventEnvelope, EventFilter, PushConfig, RetryPolicy, Subscription,
    subscription,
};
use tributary_testkit::{TestBroker, TestDb, suffix};

/// What the receiver got: (headers, body) per request.
type Got = Arc<Mutex<Vec<(Vec<(String, String)>, String)>>>;

/// A receiver answering `statuses` in turn (then 200) to each POST.
async fn receiver(statuses: Vec<u16>) -> (String, Got) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Got = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            // Headers, then Content-Length bytes of body.
            let (head, body) = loop {
                let n = s.read(&mut buf).await.unwrap();
                raw.extend_from_slice(&buf[..n]);
                if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&raw[..i]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    while raw.len() < i + 4 + len {
                        let n = s.read(&mut buf).await.unwrap();
                        raw.extend_from_slice(&buf[..n]);
                    }
                    break (
                        head,
                        String::from_utf8_lossy(&raw[i + 4..i + 4 + len]).into_owned(),
                    );
                }
            };
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            seen.lock().unwrap().push((headers, body));
            let status = statuses.next().unwrap_or(200);
            let answer =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            s.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    (format!("http://{addr}/hook"), got)
}

/// A dispatch running in the test. `stop` ends it and waits until it has
/// left its consumer groups: the test's broker must outlive that, or closing
/// a consumer waits for a broker that is gone.
struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("dispatch stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

async fn start(db: &TestDb, kafka: &KafkaArgs) -> Running {
    start_at(db, kafka).await.0
}

/// Starts dispatch; it and its gRPC address.
async fn start_at(db: &TestDb, kafka: &KafkaArgs) -> (Running, std::net::SocketAddr) {
    tributary_testkit::init_telemetry();
    let config = <Config as clap::Parser>::parse_from([
        "tributary-dispatch".to_owned(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", kafka.kafka_brokers),
        format!("--topic={}", kafka.topic),
        format!("--database-url={}", db.url),
        "--auth=off".into(),
        "--poll-interval=200ms".into(),
        "--webhook-allow-cidr=127.0.0.0/8".into(),
    ]);
    let dispatch = Dispatch::build(config, prometheus::Registry::new())
        .await
        .unwrap();
    let addr = dispatch.grpc_addr();
    let token = CancellationToken::new();
    let stop = token.clone();
    let task = tokio::spawn(dispatch.run(async move { stop.cancelled().await }));
    (Running { token, task }, addr)
}

fn millis(ms: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: 0,
        nanos: ms * 1_000_000,
    })
}

async fn create(db: &TestDb, spec: &Subscription, secrets: &[String]) {
    let pool = tributary_store::pool::build(&tributary_store::PoolConfig::new(&db.url)).unwrap();
    let encoded = spec.encode_to_vec();
    pool.run(async |c| {
        tributary_store::subscriptions::create(c, &spec.name, &encoded, false, secrets).await
    })
    .await
    .unwrap()
    .unwrap();
}

async fn publish(kafka: &KafkaArgs, events: &[(&str, &str, &str)]) {
    let producer = Producer::new(
        kafka,
        &ProducerSettings::default(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    for (id, event_type, user) in events {
        producer
            .send(Record {
                topic: &kafka.topic,
                key: Some(user.as_bytes()),
                value: &envelope(id, event_type, user),
                headers: &[],
            })
            .await
            .unwrap();
    }
}

/// The event ids of each request's body, in order.
fn bodies(got: &Got) -> Vec<Vec<String>> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event"]["eventId"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..150 {
        if let Some(t) = probe().await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn envelope(id: &str, event_type: &str, user: &str) -> Vec<u8> {
    EventEnvelope {
        envelope_version: 1,
        event: Some(Event {
            event_id: id.into(),
            event_type: event_type.into(),
            source: "it".into(),
            user_id: user.into(),
            occurred_at: Some(std::time::SystemTime::now().into()),
            ..Default::default()
        }),
        payload_json: r#"{"n":1}"#.into(),
        received_at: Some(std::time::SystemTime::now().into()),
        ingest: None,
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_matching_events_signed_in_batches_and_retries_failures() {
    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let kafka = broker.kafka_args(&suffix());
    broker.create_topics(&kafka, 2).await.unwrap();
    // The receiver fails twice first: the batch comes again, same id.
    let (url, got) = receiver(vec![500, 503]).await;
    let name = format!("it-{}", suffix());
    let spec = Subscription {
        name: name.clone(),
        filter: Some(EventFilter {
            event_types: vec!["match".into()],
            ..Default::default()
        }),
        delivery: Some(subscription::Delivery::Push(PushConfig {
            url,
            ..Default::default()
        })),
        batch: Some(BatchPolicy {
            max_events: 3,
            max_bytes: 1 << 20,
            max_wait: Some(prost_types::Duration {
                seconds: 0,
                nanos: 300_000_000,
            }),
        }),
        retry: Some(RetryPolicy {
            min_backoff: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            max_backoff: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
    let pool = tributary_store::pool::build(&tributary_store::PoolConfig::new(&db.url)).unwrap();
    let encoded = spec.encode_to_vec();
    let secrets = vec![secret.clone()];
    pool.run(async |c| {
        tributary_store::subscriptions::create(c, &name, &encoded, false, &secrets).await
    })
    .await
    .unwrap()
    .unwrap();
    let token = start(&db, &kafka).await;

    let producer = Producer::new(
        &kafka,
        &ProducerSettings::default(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    // No committed offsets: the group starts at the earliest, so these count.
    for i in 0..7 {
        let (t, user) = if i % 2 == 0 {
            ("match", "u1")
        } else {
            ("other", "u1")
        };
        producer
            .send(Record {
                topic: &kafka.topic,
                key: Some(user.as_bytes()),
                value: &envelope(&format!("e{i}"), t, user),
                headers: &[],
            })
            .await
            .unwrap();
    }
    // e0, e2, e4, e6 match: two batches (3 + 1), the first tried three times.
    let mut delivered: Vec<String> = Vec::new();
    for _ in 0..100 {
        delivered = got
            .lock()
            .unwrap()
            .iter()
            .skip(2)
            .flat_map(|(_, body)| {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["event"]["eventId"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        if delivered.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        delivered,
        vec!["e0", "e2", "e4", "e6"],
        "in order, only matching"
    );
    let requests = got.lock().unwrap().clone();
    let header = |i: usize, name: &str| {
        requests[i]
            .0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    // The failed attempts and the success carry the batch's one id.
    assert_eq!(header(0, "webhook-id"), header(1, "webhook-id"));
    assert_eq!(header(1, "webhook-id"), header(2, "webhook-id"));
    assert_ne!(header(2, "webhook-id"), header(3, "webhook-id"));
    // Each attempt is signed over its own id, timestamp and body.
    for (i, (_, body)) in requests.iter().enumerate() {
        let ts: u64 = header(i, "webhook-timestamp").parse().unwrap();
        assert_eq!(
            header(i, "webhook-signature"),
            tributary_dispatch::sign::signature(
                std::slice::from_ref(&secret),
                &header(i, "webhook-id"),
                ts,
                body.as_bytes()
            )
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["subscription"], name.as_str());
        assert!(v["events"].as_array().unwrap().len() <= 3);
    }
    token.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_out_of_attempts_becomes_dead_letters_that_a_redrive_delivers_again() {
    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let kafka = broker.kafka_args(&suffix());
    broker.create_topics(&kafka, 1).await.unwrap();
    // Two attempts of the first batch fail; everything after succeeds.
    let (url, got) = receiver(vec![500, 500]).await;
    let name = format!("dl-{}", suffix());
    let spec = Subscription {
        name: name.clone(),
        delivery: Some(subscription::Delivery::Push(PushConfig {
            url,
            ..Default::default()
        })),
        batch: Some(BatchPolicy {
            max_events: 10,
            max_bytes: 1 << 20,
            max_wait: millis(300),
        }),
        retry: Some(RetryPolicy {
            min_backoff: millis(50),
            max_backoff: millis(100),
            max_attempts: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    create(
        &db,
        &spec,
        &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()],
    )
    .await;
    let token = start(&db, &kafka).await;
    publish(&kafka, &[("a", "t", "u1"), ("b", "t", "u1")]).await;
    let pool = tributary_store::pool::build(&tributary_store::PoolConfig::new(&db.url)).unwrap();
    let filter = tributary_store::dead_letters::DeadLetterFilter {
        subscription: name.clone(),
        include_redriven: true,
        ..Default::default()
    };
    let letters = eventually("the dead letters", async || {
        let rows = pool
            .run(async |c| tributary_store::dead_letters::list(c, &filter, None, 10).await)
            .await
            .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let mut ids: Vec<String> = letters.iter().filter_map(|d| d.event_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    assert!(letters[0].reason.contains("500"), "{}", letters[0].reason);
    // Delivery moved on: the next event arrives.
    publish(&kafka, &[("c", "t", "u1")]).await;
    eventually("c", async || {
        bodies(&got).contains(&vec!["c".to_owned()]).then_some(())
    })
    .await;
    assert_eq!(
        bodies(&got)[..2],
        [
            vec!["a".to_owned(), "b".to_owned()],
            vec!["a".to_owned(), "b".to_owned()]
        ],
        "two attempts, then given up"
    );

    // A redrive: delivered again to this subscription, marked after the 2xx.
    pool.run(async |c| {
        tributary_store::dead_letters::claim_for_redrive(
            c,
            &tributary_store::dead_letters::Selection::Filter(filter.clone()),
            10,
        )
        .await
    })
    .await
    .unwrap();
    eventually("the redrive", async || {
        bodies(&got)
            .contains(&vec!["a".to_owned(), "b".to_owned()])
            .then_some(())
            .filter(|()| bodies(&got).len() == 4)
    })
    .await;
    let done = eventually("redriven_at", async || {
        let rows = pool
            .run(async |c| tributary_store::dead_letters::list(c, &filter, None, 10).await)
            .await
            .unwrap();
        rows.iter().all(|d| d.redriven_at.is_some()).then_some(rows)
    })
    .await;
    assert_eq!(done.len(), 2);
    token.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_sends_unacknowledged_events_again_and_never_acknowledged_ones() {
    use tributary_proto::v1::subscriber_service_client::SubscriberServiceClient;
    use tributary_proto::v1::{PullConfig, PullRequest};

    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let kafka = broker.kafka_args(&suffix());
    broker.create_topics(&kafka, 2).await.unwrap();
    let name = format!("pull-{}", suffix());
    let spec = Subscription {
        name: name.clone(),
        filter: Some(EventFilter {
            event_types: vec!["match".into()],
            ..Default::default()
        }),
        delivery: Some(subscription::Delivery::Pull(PullConfig {
            ack_deadline: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
        })),
        ..Default::default()
    };
    create(&db, &spec, &[]).await;
    let push_spec = Subscription {
        name: format!("push-{}", suffix()),
        delivery: Some(subscription::Delivery::Push(PushConfig {
            url: "http://127.0.0.1:9/".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    create(
        &db,
        &push_spec,
        &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()],
    )
    .await;
    let (token, addr) = start_at(&db, &kafka).await;
    let mut client = SubscriberServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let open = async |client: &mut SubscriberServiceClient<tonic::transport::Channel>,
                      subscription: &str| {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(PullRequest {
            subscription: subscription.into(),
            max_outstanding_events: 10,
            ..Default::default()
        })
        .await
        .unwrap();
        let stream = client
            .pull(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(tonic::Response::into_inner);
        (tx, stream)
    };
    let refused = |r: Result<_, tonic::Status>| r.err().map(|s| s.code());
    assert_eq!(
        refused(open(&mut client, "nope").await.1),
        Some(tonic::Code::NotFound)
    );
    assert_eq!(
        refused(open(&mut client, &push_spec.name).await.1),
        Some(tonic::Code::FailedPrecondition)
    );

    publish(
        &kafka,
        &[
            ("p0", "match", "u1"),
            ("x", "other", "u1"),
            ("p1", "match", "u2"),
            ("p2", "match", "u3"),
            ("p3", "match", "u4"),
        ],
    )
    .await;
    let (tx, stream) = open(&mut client, &name).await;
    let mut stream = stream.unwrap();
    let mut seen: Vec<(String, String, i32)> = Vec::new();
    while seen.len() < 4 {
        let batch = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .expect("events within 15 s")
            .unwrap()
            .unwrap();
        for e in batch.events {
            let id = e.event.unwrap().event.unwrap().event_id;
            seen.push((id, e.ack_id, e.delivery_attempt));
        }
    }
    let all_seen_at = std::time::Instant::now();
    seen.sort();
    let ids: Vec<&str> = seen.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["p0", "p1", "p2", "p3"], "only the matching ones");
    assert!(seen.iter().all(|(_, _, attempt)| *attempt == 1));
    // Acknowledge two; the two others come back after the 3 s deadline.
    tx.send(PullRequest {
        ack_ids: vec![seen[0].1.clone(), seen[1].1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut again: Vec<(String, i32)> = Vec::new();
    while again.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the unacknowledged ones again")
            .unwrap()
            .unwrap();
        for e in batch.events {
            again.push((e.event.unwrap().event.unwrap().event_id, e.delivery_attempt));
        }
    }
    let waited = all_seen_at.elapsed();
    again.sort();
    assert_eq!(again, [("p2".to_owned(), 2), ("p3".to_owned(), 2)]);
    // Not before the deadline (less a margin for the delivery's own latency).
    assert!(
        waited >= Duration::from_millis(2500),
        "sent again after {waited:?}, before the 3 s ack deadline"
    );
    tx.send(PullRequest {
        ack_ids: vec![seen[2].1.clone(), seen[3].1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), stream.message())
            .await
            .is_err(),
        "nothing more once everything is acknowledged"
    );
    // Closing the stream commits; a new one gets nothing already acknowledged.
    drop(tx);
    drop(stream);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_tx, stream) = open(&mut client, &name).await;
    let mut stream = stream.unwrap();
    publish(&kafka, &[("p4", "match", "u1")]).await;
    let batch = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the new event")
        .unwrap()
        .unwrap();
    let ids: Vec<String> = batch
        .events
        .into_iter()
        .map(|e| e.event.unwrap().event.unwrap().event_id)
        .collect();
    assert_eq!(ids, ["p4"], "acknowledged events never come back");
    token.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pull_clients_split_the_partitions_and_the_lag_reaches_zero() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use tributary_proto::v1::subscriber_service_client::SubscriberServiceClient;
    use tributary_proto::v1::{PullConfig, PullRequest};

    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let kafka = broker.kafka_args(&suffix());
    broker.create_topics(&kafka, 4).await.unwrap();
    let name = format!("pair-{}", suffix());
    let spec = Subscription {
        name: name.clone(),
        delivery: Some(subscription::Delivery::Pull(PullConfig {
            ack_deadline: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
        })),
        ..Default::default()
    };
    create(&db, &spec, &[]).await;
    let (token, addr) = start_at(&db, &kafka).await;
    // Each client acknowledges everything it gets, and reports the ids.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut keep = Vec::new();
    for client_no in 0..2 {
        let mut client = SubscriberServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(PullRequest {
            subscription: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut stream = client
            .pull(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let seen = seen_tx.clone();
        let acks = tx.clone();
        keep.push(tx);
        tokio::spawn(async move {
            while let Ok(Some(batch)) = stream.message().await {
                let mut ack_ids = Vec::new();
                for e in batch.events {
                    let id = e.event.unwrap().event.unwrap().event_id;
                    let _ = seen.send((client_no, id));
                    ack_ids.push(e.ack_id);
                }
                let _ = acks
                    .send(PullRequest {
                        ack_ids,
                        ..Default::default()
                    })
                    .await;
            }
        });
        // Let the first settle in the group before the second joins.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Both members and a settled assignment before publishing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events: Vec<(String, String)> = (0..24)
        .map(|i| (format!("s{i:02}"), format!("user-{i}")))
        .collect();
    let refs: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|(id, user)| (id.as_str(), "t", user.as_str()))
        .collect();
    publish(&kafka, &refs).await;
    let mut by_client = [Vec::new(), Vec::new()];
    let mut all = std::collections::BTreeSet::new();
    while all.len() < 24 {
        let (client_no, id) = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
            .await
            .expect("all 24 within 30 s")
            .unwrap();
        all.insert(id.clone());
        by_client[client_no].push(id);
    }
    assert!(
        !by_client[0].is_empty() && !by_client[1].is_empty(),
        "both clients got events: {by_client:?}"
    );
    // Everything acknowledged: the group's committed offsets reach the ends.
    let offsets: BaseConsumer = kafka
        .client_config()
        .unwrap()
        .set(
            "group.id",
            tributary_store::subscriptions::consumer_group(&name),
        )
        .create()
        .unwrap();
    let lag = eventually("lag 0", async || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition(&kafka.topic, p);
        }
        let committed = offsets
            .committed_offsets(tpl, Duration::from_secs(5))
            .ok()?;
        let mut lag = 0;
        for e in committed.elements() {
            let (_, high) = offsets
                .fetch_watermarks(&kafka.topic, e.partition(), Duration::from_secs(5))
                .ok()?;
            let at = match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            };
            lag += high - at;
        }
        (lag == 0).then_some(lag)
    })
    .await;
    assert_eq!(lag, 0);
    drop(keep);
    token.stop().await;
}

/// An erased user's records below the tombstone's end offsets are not
/// delivered (counted erased); the user's record published after the
/// erasure is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_an_erased_users_records_below_the_tombstone() {
    use tributary_store::erasure::{self, EndOffset};
    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let kafka = broker.kafka_args(&suffix());
    broker.create_topics(&kafka, 2).await.unwrap();
    let (url, got) = receiver(vec![]).await;
    let name = format!("it-{}", suffix());
    let spec = Subscription {
        name: name.clone(),
        delivery: Some(subscription::Delivery::Push(PushConfig {
            url,
            ..Default::default()
        })),
        batch: Some(BatchPolicy {
            max_events: 10,
            max_bytes: 1 << 20,
            max_wait: millis(200),
        }),
        ..Default::default()
    };
    create(&db, &spec, &[]).await;
    publish(
        &kafka,
        &[
            ("g-1", "t", "gone"),
            ("k-1", "t", "kept"),
            ("g-2", "t", "gone"),
        ],
    )
    .await;
    let end_offsets: Vec<EndOffset> = {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let c: BaseConsumer = kafka.client_config().unwrap().create().unwrap();
        (0..2)
            .map(|partition| EndOffset {
                topic: kafka.topic.clone(),
                partition,
                end_offset: c
                    .fetch_watermarks(&kafka.topic, partition, Duration::from_secs(5))
                    .unwrap()
                    .1,
            })
            .collect()
    };
    {
        let mut c = db.pool.get().await.unwrap();
        let key = erasure::key(&c).await.unwrap();
        let tx = c.transaction().await.unwrap();
        erasure::erase_user(&tx, "gone", &key, &end_offsets, &|_: &[u8]| None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    publish(&kafka, &[("g-3", "t", "gone")]).await;

    tributary_testkit::init_telemetry();
    let registry = prometheus::Registry::new();
    let config = <Config as clap::Parser>::parse_from([
        "tributary-dispatch".to_owned(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", kafka.kafka_brokers),
        format!("--topic={}", kafka.topic),
        format!("--database-url={}", db.url),
        "--auth=off".into(),
        "--poll-interval=200ms".into(),
        "--webhook-allow-cidr=127.0.0.0/8".into(),
    ]);
    let dispatch = Dispatch::build(config, registry.clone()).await.unwrap();
    let token = CancellationToken::new();
    let stop = token.clone();
    let running = Running {
        token,
        task: tokio::spawn(dispatch.run(async move { stop.cancelled().await })),
    };
    let erased = || -> f64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "tributary_subscription_events_total")
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "result" && l.value() == "erased")
            })
            .map(|m| m.get_counter().get_value())
            .sum()
    };
    let mut delivered = eventually("k-1 and g-3 delivered, 2 counted erased", async || {
        let ids: Vec<String> = bodies(&got).into_iter().flatten().collect();
        (ids.len() >= 2 && erased() == 2.0).then_some(ids)
    })
    .await;
    delivered.sort();
    assert_eq!(delivered, ["g-3", "k-1"]);
    running.stop().await;
}
