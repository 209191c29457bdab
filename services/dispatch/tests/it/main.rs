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

async fn start(db: &TestDb, kafka: &KafkaArgs) -> CancellationToken {
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
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(dispatch.run(async move { stop.cancelled().await }));
    token
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
    token.cancel();
}
