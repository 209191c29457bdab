//! Ingest against a real broker (nisshi, memory engine), called through a
//! real tonic client.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Headers as _;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_types::StatusExt as _;
use tributary_ingest::{Config, Ingest};
use tributary_kafka::KafkaArgs;
use tributary_proto::v1::ingest_service_client::IngestServiceClient;
use tributary_proto::v1::{Event, EventEnvelope, PublishBatchRequest, PublishRequest};
use tributary_testkit::{TestBroker, TestDb, free_port, suffix};

type Client = IngestServiceClient<tonic::transport::Channel>;

async fn start(db: &TestDb, kafka: &KafkaArgs, extra: &[&str]) -> (Client, CancellationToken) {
    let (addr, token) = serve(db, kafka, extra).await;
    let client = IngestServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (client, token)
}

/// Starts an ingest; its gRPC address.
async fn serve(
    db: &TestDb,
    kafka: &KafkaArgs,
    extra: &[&str],
) -> (std::net::SocketAddr, CancellationToken) {
    tributary_testkit::init_telemetry();
    let mut args = vec![
        "tributary-ingest".to_owned(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", kafka.kafka_brokers),
        format!("--topic={}", kafka.topic),
        format!("--database-url={}", db.url),
    ];
    // Auth is the subject of its own tests; the others run without it.
    if !extra.iter().any(|a| a.starts_with("--auth=")) {
        args.push("--auth=off".into());
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let config = <Config as clap::Parser>::parse_from(args);
    let ingest = Ingest::build(config, prometheus::Registry::new())
        .await
        .unwrap();
    let addr = ingest.grpc_addr();
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(ingest.run(async move { stop.cancelled().await }));
    (addr, token)
}

fn event(event_type: &str, user: &str) -> Event {
    Event {
        event_type: event_type.into(),
        user_id: user.into(),
        payload: Some(tributary_proto::json::json_to_struct(
            serde_json::json!({"page": "/home", "n": 3})
                .as_object()
                .cloned()
                .unwrap(),
        )),
        ..Default::default()
    }
}

async fn setup() -> (TestDb, TestBroker, KafkaArgs) {
    let db = TestDb::new().await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let kafka = broker.kafka_args(&suffix());
    broker.create_topics(&kafka, 2).await.unwrap();
    (db, broker, kafka)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_acks_only_what_the_broker_holds() {
    let (db, _broker, kafka) = setup().await;
    let (mut client, token) = start(&db, &kafka, &[]).await;

    let id = client
        .publish(PublishRequest {
            event: Some(event("page.view", "user-7")),
        })
        .await
        .unwrap()
        .into_inner()
        .event_id;
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    // What the broker holds is the envelope, keyed by user, with a traceparent.
    let consumer: StreamConsumer = kafka
        .client_config()
        .unwrap()
        .set("group.id", format!("read-{}", suffix()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&kafka.topic]).unwrap();
    let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.key(), Some(&b"user-7"[..]));
    let envelope = EventEnvelope::decode(record.payload().unwrap()).unwrap();
    let e = envelope.event.unwrap();
    assert_eq!(
        (e.event_id.as_str(), e.event_type.as_str()),
        (id.as_str(), "page.view")
    );
    assert_eq!(envelope.payload_json, r#"{"n":3,"page":"/home"}"#);
    assert!(e.occurred_at.is_some() && envelope.received_at.is_some());
    let trace_id = envelope.ingest.unwrap().trace_id;
    assert_eq!(trace_id.len(), 32);
    let traceparent = record
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "traceparent")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap();
    assert!(
        traceparent.contains(&trace_id),
        "{traceparent} vs {trace_id}"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_refused_with_field_violations() {
    let (db, _broker, kafka) = setup().await;
    let (addr, token) = serve(&db, &kafka, &[]).await;
    let mut client = IngestServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let status = client
        .publish(PublishRequest {
            event: Some(event("Not Valid", "u")),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "event.event_type");

    // A batch with a bad event is OK overall, with a status per event.
    let response = client
        .publish_batch(PublishBatchRequest {
            events: vec![event("a", "u1"), event("", "u2"), event("b", "u3")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.accepted, response.rejected), (2, 1));
    let codes: Vec<i32> = response
        .results
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, [0, Code::InvalidArgument as i32, 0]);
    assert!(
        response.results[1]
            .status
            .as_ref()
            .unwrap()
            .message
            .contains("events[1].event_type")
    );

    // Over 1000 events: the whole batch is refused by our limit, not tonic's.
    let status = client
        .publish_batch(PublishBatchRequest {
            events: vec![event("a", "u"); 1001],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("limit is 1000"),
        "{}",
        status.message()
    );

    // A stream: the bad event gets its own result and the stream goes on.
    let requests = vec![
        PublishRequest {
            event: Some(event("a", "u")),
        },
        PublishRequest {
            event: Some(event("9bad", "u")),
        },
        PublishRequest {
            event: Some(event("c", "u")),
        },
    ];
    let mut results: Vec<(i32, i32)> = Vec::new();
    let mut stream = client
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    while let Some(r) = stream.message().await.unwrap() {
        results.push((r.index, r.status.unwrap().code));
    }
    results.sort_unstable();
    assert_eq!(results, [(0, 0), (1, Code::InvalidArgument as i32), (2, 0)]);

    // Ingest reads payloads from the request's bytes: one that is not a
    // decodable Struct, and one holding NaN, are refused per event, naming
    // the field; the rest of the batch goes through.
    let mut good = Vec::new();
    event("a", "u1").encode(&mut good).unwrap();
    let mut truncated = Vec::new();
    event("a", "u2").encode(&mut truncated).unwrap();
    // Field 7 (payload), length 3, holding the start of a map entry whose
    // declared length runs past the end.
    truncated.extend([0x3a, 3, 0x0a, 9, 0x0a]);
    let mut nan = event("a", "u3");
    nan.payload = Some(prost_types::Struct {
        fields: [(
            "x".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
            },
        )]
        .into(),
    });
    let events = [good, truncated, nan.encode_to_vec()]
        .iter()
        .map(|bytes| tributary_proto::wire::Event::decode(bytes.as_slice()).unwrap())
        .collect();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let response: tributary_proto::v1::PublishBatchResponse = raw
        .unary(
            tonic::Request::new(tributary_proto::wire::PublishBatchRequest { events }),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/tributary.v1.IngestService/PublishBatch",
            ),
            tonic_prost::ProstCodec::<
                tributary_proto::wire::PublishBatchRequest,
                tributary_proto::v1::PublishBatchResponse,
            >::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.accepted, response.rejected), (1, 2));
    let messages: Vec<String> = response
        .results
        .iter()
        .map(|r| r.status.as_ref().unwrap().message.clone())
        .collect();
    assert!(
        messages[1].contains("events[1].payload")
            && messages[1].contains("not a valid google.protobuf.Struct"),
        "{messages:?}"
    );
    assert!(
        messages[2].contains("events[2].payload")
            && messages[2].contains("/x is not a finite number"),
        "{messages:?}"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheds_load_and_reports_an_unreachable_broker() {
    let (db, _broker, kafka) = setup().await;
    // No in-flight room at all: every publish is shed.
    let (mut shedding, t1) = start(&db, &kafka, &["--max-in-flight-events=0"]).await;
    let status = shedding
        .publish(PublishRequest {
            event: Some(event("a", "u")),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    t1.cancel();

    // Room for many events but 2 KiB of bytes: one small event passes, a
    // batch of large ones is shed by its bytes, with RetryInfo.
    let (mut small, t3) = start(&db, &kafka, &["--max-in-flight-bytes=2KiB"]).await;
    small
        .publish(PublishRequest {
            event: Some(event("a", "u")),
        })
        .await
        .unwrap();
    let mut big = event("a", "u");
    big.payload = Some(tributary_proto::json::json_to_struct(
        serde_json::json!({"text": "x".repeat(1500)})
            .as_object()
            .cloned()
            .unwrap(),
    ));
    let status = small
        .publish_batch(PublishBatchRequest {
            events: vec![big.clone(), big],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("KiB"), "{status:?}");
    assert!(status.get_details_retry_info().is_some(), "{status:?}");
    t3.cancel();

    // Nothing listens on this port: the broker is known to be down, so calls
    // under a 5 s deadline are refused at once (the producer's own timeout
    // is left at its 10 s), UNAVAILABLE with RetryInfo, never held until
    // DEADLINE_EXCEEDED.
    let mut nowhere = kafka.clone();
    nowhere.kafka_brokers = format!("127.0.0.1:{}", free_port().unwrap());
    let (mut client, t2) = start(&db, &nowhere, &[]).await;
    let status = client
        .publish(with_deadline(PublishRequest {
            event: Some(event("a", "u")),
        }))
        .await
        .unwrap_err();
    assert_refused_for_the_broker(&status);
    let asked = std::time::Instant::now();
    let status = client
        .publish_batch(with_deadline(PublishBatchRequest {
            events: vec![event("a", "u"), event("b", "u")],
        }))
        .await
        .unwrap_err();
    assert_refused_for_the_broker(&status);
    // Refused without waiting for the producer (a loose bound: the point is
    // that it is far from the 5 s deadline, not how fast).
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    t2.cancel();
}

/// A request with a 5 s deadline, as a careful client sends it.
fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(5));
    request
}

/// UNAVAILABLE (retryable) with RetryInfo, for the broker's sake.
fn assert_refused_for_the_broker(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("broker"), "{status:?}");
    let retry = status.get_details_retry_info();
    assert!(
        retry.and_then(|r| r.retry_delay).is_some(),
        "no RetryInfo: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_is_answered_unavailable_and_calls_resume_when_it_is_back() {
    let (db, broker, kafka) = setup().await;
    let (mut client, token) = start(&db, &kafka, &[]).await;
    client
        .publish(with_deadline(PublishRequest {
            event: Some(event("a", "u")),
        }))
        .await
        .unwrap();

    broker.pause().unwrap();
    // Calls made while it is frozen, whether or not the probe has noticed
    // yet, end UNAVAILABLE with RetryInfo well before their 5 s deadline.
    for _ in 0..3 {
        let status = client
            .publish_batch(with_deadline(PublishBatchRequest {
                events: vec![event("a", "u"), event("b", "u")],
            }))
            .await
            .unwrap_err();
        assert_refused_for_the_broker(&status);
    }
    broker.resume().unwrap();
    tributary_testkit::eventually(Duration::from_secs(20), "a publish is acked again", || {
        let mut client = client.clone();
        async move {
            client
                .publish(with_deadline(PublishRequest {
                    event: Some(event("a", "u")),
                }))
                .await
                .ok()
        }
    })
    .await
    .unwrap();
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_schemas_are_enforced_and_strict_mode_refuses_unknown_types() {
    let (db, _broker, kafka) = setup().await;
    let (mut client, token) = start(&db, &kafka, &[]).await;
    let order = |amount: serde_json::Value| Event {
        event_type: "order.placed".into(),
        payload: Some(tributary_proto::json::json_to_struct(
            serde_json::json!({ "amount": amount })
                .as_object()
                .cloned()
                .unwrap(),
        )),
        ..Default::default()
    };
    // Unregistered: accepted unchecked.
    client
        .publish(PublishRequest {
            event: Some(order(serde_json::json!("lots"))),
        })
        .await
        .unwrap();

    let mut pg = db.pool.get().await.unwrap();
    let schema = serde_json::json!({
        "type": "object", "required": ["amount"],
        "properties": {"amount": {"type": "number", "minimum": 0}}
    });
    tributary_store::event_types::register(&mut pg, "order.placed", &schema, "orders")
        .await
        .unwrap();
    // The cache follows the registry's NOTIFY.
    let status =
        tributary_testkit::eventually(Duration::from_secs(20), "the schema enforced", || {
            let mut client = client.clone();
            async move {
                client
                    .publish(PublishRequest {
                        event: Some(order(serde_json::json!("lots"))),
                    })
                    .await
                    .err()
            }
        })
        .await
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    let v = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(v[0].field, "event.payload");
    assert!(
        v[0].description.starts_with("at /amount:"),
        "{}",
        v[0].description
    );
    client
        .publish(PublishRequest {
            event: Some(order(serde_json::json!(12.5))),
        })
        .await
        .unwrap();
    token.cancel();

    let (mut strict, t2) = start(&db, &kafka, &["--require-registered-types"]).await;
    // Until its registry is loaded a strict ingest judges nothing: it answers
    // Unavailable (retry), never InvalidArgument for a registered type.
    let status = tributary_testkit::eventually(Duration::from_secs(20), "strict mode", || {
        let mut strict = strict.clone();
        async move {
            let status = strict
                .publish(PublishRequest {
                    event: Some(event("never.registered", "u")),
                })
                .await
                .err()?;
            assert!(
                matches!(status.code(), Code::InvalidArgument | Code::Unavailable),
                "{status:?}"
            );
            (status.code() == Code::InvalidArgument).then_some(status)
        }
    })
    .await
    .unwrap();
    assert!(
        status.message().contains("not a registered event type"),
        "{}",
        status.message()
    );
    strict
        .publish(PublishRequest {
            event: Some(order(serde_json::json!(1))),
        })
        .await
        .unwrap();
    t2.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_broker_can_never_take_is_failed_precondition() {
    let (db, _broker, kafka) = setup().await;
    // A deployment whose producer limit is smaller than the events sent to
    // it: no retry can help until the settings change.
    let (mut client, token) = start(&db, &kafka, &["--kafka-option=message.max.bytes=1000"]).await;
    let mut big = event("a", "u");
    big.payload = Some(tributary_proto::json::json_to_struct(
        serde_json::json!({"text": "x".repeat(1500)})
            .as_object()
            .cloned()
            .unwrap(),
    ));
    let status = client
        .publish(with_deadline(PublishRequest {
            event: Some(big.clone()),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // In a batch, per event: the small one is acknowledged.
    let answer = client
        .publish_batch(with_deadline(PublishBatchRequest {
            events: vec![event("a", "u"), big],
        }))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = answer
        .results
        .iter()
        .map(|r| r.status.as_ref().map_or(0, |s| s.code))
        .collect();
    assert_eq!(
        codes,
        vec![0, Code::FailedPrecondition as i32],
        "{answer:?}"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_bound_are_refused_until_one_closes() {
    let (db, _broker, kafka) = setup().await;
    let (mut client, token) = start(&db, &kafka, &["--max-streams=1"]).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(1);
    let open = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (_tx2, rx2) = tokio::sync::mpsc::channel::<PublishRequest>(1);
    let status = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-streams"), "{status:?}");
    assert!(status.get_details_retry_info().is_some(), "{status:?}");
    // Unary calls have their own bound: still served.
    client
        .publish(with_deadline(PublishRequest {
            event: Some(event("a", "u")),
        }))
        .await
        .unwrap();
    // The first stream ends (the client closes it, the server answers the
    // end): its slot is free again.
    drop(tx);
    let mut open = open;
    while open.message().await.unwrap().is_some() {}
    drop(open);
    // (The server lets go of the slot as it finishes the response, a
    // moment after the client saw its end.)
    let mut last = None;
    for _ in 0..50 {
        let (_tx3, rx3) = tokio::sync::mpsc::channel::<PublishRequest>(1);
        match client
            .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx3))
            .await
        {
            Ok(_) => {
                last = None;
                break;
            }
            Err(s) => last = Some(s),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        last.is_none(),
        "refused after the first stream closed: {last:?}"
    );
    token.cancel();
}
