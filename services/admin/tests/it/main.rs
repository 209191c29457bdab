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

mod admin_rpcs {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    use rdkafka::{Offset, TopicPartitionList};
    use tokio_util::sync::CancellationToken;
    use tonic::Code;
    use tributary_admin::{Admin, Config};
    use tributary_proto::v1::admin_service_client::AdminServiceClient;
    use tributary_proto::v1::*;
    use tributary_store::events::{NewDeadLetter, NewEvent, insert_dead_letters, insert_events};
    use tributary_testkit::{TestBroker, TestDb, suffix};

    type Client = AdminServiceClient<tonic::transport::Channel>;

    async fn start(db: &TestDb, kafka: &tributary_kafka::KafkaArgs) -> (Client, CancellationToken) {
        start_with(db, kafka, &["--auth=off".into()]).await
    }

    async fn start_with(
        db: &TestDb,
        kafka: &tributary_kafka::KafkaArgs,
        extra: &[String],
    ) -> (Client, CancellationToken) {
        tributary_testkit::init_telemetry();
        let mut args = vec![
            "tributary-admin".to_owned(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--http-addr=127.0.0.1:0".into(),
            format!("--kafka-brokers={}", kafka.kafka_brokers),
            format!("--topic={}", kafka.topic),
            format!("--dlq-topic={}", kafka.dlq_topic),
            format!("--database-url={}", db.url),
        ];
        // Rows here are dated 1970: the maintenance round at start would
        // delete them past the default 30 days, unless a test says otherwise.
        if !extra.iter().any(|a| a.starts_with("--retention")) {
            args.push("--retention=0".into());
        }
        args.extend(extra.iter().cloned());
        let config = <Config as clap::Parser>::parse_from(args);
        let admin = Admin::build(config, prometheus::Registry::new())
            .await
            .unwrap();
        let addr = admin.grpc_addr();
        let token = CancellationToken::new();
        let stop = token.clone();
        tokio::spawn(admin.run(async move { stop.cancelled().await }));
        (
            Client::connect(format!("http://{addr}")).await.unwrap(),
            token,
        )
    }

    fn end_offsets(kafka: &tributary_kafka::KafkaArgs, partitions: i32) -> i64 {
        let c: BaseConsumer = kafka.client_config().unwrap().create().unwrap();
        (0..partitions)
            .map(|p| {
                c.fetch_watermarks(&kafka.topic, p, Duration::from_secs(5))
                    .unwrap()
                    .1
            })
            .sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_letters_are_listed_and_redriven_once() {
        let db = TestDb::new().await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let kafka = broker.kafka_args(&suffix());
        broker.create_topics(&kafka, 2).await.unwrap();
        let pg = db.pool.get().await.unwrap();
        let letters: Vec<NewDeadLetter> = (0..3)
            .map(|i| NewDeadLetter {
                topic: kafka.topic.clone(),
                partition: 0,
                offset: i,
                key: Some(b"k".to_vec()),
                value: Some(format!("value-{i}").into_bytes()),
                headers: vec![("traceparent".into(), b"00-x".to_vec())],
                reason: if i == 2 {
                    "database refused the row".into()
                } else {
                    "not an envelope".into()
                },
                event_id: None,
                event_type: None,
                subscription: String::new(),
                user_id: None,
            })
            .collect();
        // The third record is also a dead letter of a subscription: kept
        // for both.
        let mut letters = letters;
        letters.push(NewDeadLetter {
            reason: "delivery gave up: the endpoint answered 500".into(),
            subscription: "hooks".into(),
            ..letters[2].clone()
        });
        assert_eq!(insert_dead_letters(&pg, &letters).await.unwrap(), 4);
        assert_eq!(
            insert_dead_letters(&pg, &letters).await.unwrap(),
            0,
            "each is kept once"
        );
        let (mut client, token) = start(&db, &kafka).await;

        let page = client
            .list_dead_letters(ListDeadLettersRequest {
                filter: None,
                page_size: 2,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.dead_letters.len(), 2);
        assert_eq!(page.dead_letters[0].value, b"value-2");
        let rest = client
            .list_dead_letters(ListDeadLettersRequest {
                filter: None,
                page_size: 2,
                page_token: page.next_page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.dead_letters.len(), 1);
        assert!(rest.next_page_token.is_empty());
        let by_reason = client
            .list_dead_letters(ListDeadLettersRequest {
                filter: Some(DeadLetterFilter {
                    reason_contains: "refused".into(),
                    ..Default::default()
                }),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_reason.dead_letters.len(), 1);
        let id = by_reason.dead_letters[0].id;

        let ids = |ids: Vec<i64>, dry_run| RedriveDeadLettersRequest {
            selection: Some(redrive_dead_letters_request::Selection::Ids(
                DeadLetterIds { ids },
            )),
            dry_run,
        };
        let dry = client
            .redrive_dead_letters(ids(vec![id], true))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dry.redriven_ids, [id]);
        assert_eq!(end_offsets(&kafka, 2), 0, "a dry run publishes nothing");

        let first = client
            .redrive_dead_letters(ids(vec![id], false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (first.redriven_ids, first.already_redriven_ids),
            (vec![id], vec![])
        );
        let again = client
            .redrive_dead_letters(ids(vec![id], false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (again.redriven_ids, again.already_redriven_ids),
            (vec![], vec![id])
        );
        assert_eq!(end_offsets(&kafka, 2), 1, "re-published exactly once");

        // By filter: the two others, then nothing left.
        let all = RedriveDeadLettersRequest {
            selection: Some(redrive_dead_letters_request::Selection::Filter(
                DeadLetterFilter::default(),
            )),
            dry_run: false,
        };
        assert_eq!(
            client
                .redrive_dead_letters(all.clone())
                .await
                .unwrap()
                .into_inner()
                .redriven_ids
                .len(),
            2
        );
        assert!(
            client
                .redrive_dead_letters(all)
                .await
                .unwrap()
                .into_inner()
                .redriven_ids
                .is_empty()
        );
        assert_eq!(end_offsets(&kafka, 2), 3);

        // The subscription's letter: listed only when asked for by name, and
        // a redrive queues it for dispatch, never re-publishing it.
        let hooks = DeadLetterFilter {
            subscription: "hooks".into(),
            ..Default::default()
        };
        let list = |filter: DeadLetterFilter| ListDeadLettersRequest {
            filter: Some(filter),
            page_size: 0,
            page_token: String::new(),
        };
        let theirs = client
            .list_dead_letters(list(hooks.clone()))
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        assert_eq!(theirs.len(), 1);
        assert_eq!(theirs[0].subscription, "hooks");
        assert_eq!((theirs[0].partition, theirs[0].offset), (0, 2));
        let queued = client
            .redrive_dead_letters(RedriveDeadLettersRequest {
                selection: Some(redrive_dead_letters_request::Selection::Filter(
                    hooks.clone(),
                )),
                dry_run: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(queued.redriven_ids, [theirs[0].id]);
        assert_eq!(
            end_offsets(&kafka, 2),
            3,
            "a subscription's letter is not re-published"
        );
        let after = client
            .list_dead_letters(list(DeadLetterFilter {
                include_redriven: true,
                ..hooks
            }))
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        assert!(after[0].redrive_requested_at.is_some());
        assert!(after[0].redriven_at.is_none(), "redriven only after a 2xx");
        token.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn maintenance_applies_retention_at_start_and_keeps_recent_rows() {
        let db = TestDb::new().await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let kafka = broker.kafka_args(&suffix());
        broker.create_topics(&kafka, 1).await.unwrap();
        let now = SystemTime::now();
        let row = |n: i64, occurred_at: SystemTime| NewEvent {
            event_id: format!("r{n}"),
            event_type: "t".into(),
            source: String::new(),
            user_id: String::new(),
            session_id: String::new(),
            occurred_at,
            received_at: now,
            payload_json: "{}".into(),
            partition: 0,
            offset: n,
            trace_id: String::new(),
            schema_version: 0,
        };
        let day = Duration::from_secs(86_400);
        let pg = db.pool.get().await.unwrap();
        insert_events(
            &pg,
            &[
                row(0, now - day * 40),
                row(1, now - day * 31),
                row(2, now - day * 29),
                row(3, now),
            ],
        )
        .await
        .unwrap();
        let ids = async || -> Vec<String> {
            pg.query(
                "SELECT e.event_id FROM events e JOIN event_ids i USING (event_id) ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        assert_eq!(ids().await, ["r0", "r1", "r2", "r3"]);
        let (_client, token) = start_with(
            &db,
            &kafka,
            &[
                "--auth=off".into(),
                "--retention=30d".into(),
                "--maintenance-interval=1s".into(),
            ],
        )
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut left = ids().await;
        while left.len() > 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            left = ids().await;
        }
        assert_eq!(left, ["r2", "r3"], "past 30 days gone, the rest kept");
        let orphans: i64 = pg
            .query_one(
                "SELECT count(*) FROM event_ids WHERE event_id IN ('r0', 'r1')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(orphans, 0, "their event_ids went too");
        token.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_moves_offsets_only_for_an_idle_group() {
        let db = TestDb::new().await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let kafka = broker.kafka_args(&suffix());
        broker.create_topics(&kafka, 1).await.unwrap();
        let producer = tributary_kafka::producer::Producer::new(
            &kafka,
            &Default::default(),
            &prometheus::Registry::new(),
        )
        .unwrap();
        for i in 0..4 {
            producer
                .send(tributary_kafka::producer::Record {
                    topic: &kafka.topic,
                    key: None,
                    value: format!("{i}").as_bytes(),
                    headers: &[],
                })
                .await
                .unwrap();
        }
        // Stored rows say offsets 0-1 were received long ago, 2-3 recently.
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let row = |offset: i64, received: SystemTime| NewEvent {
            event_id: format!("e{offset}"),
            event_type: "t".into(),
            source: String::new(),
            user_id: String::new(),
            session_id: String::new(),
            occurred_at: received,
            received_at: received,
            payload_json: "{}".into(),
            partition: 0,
            offset,
            trace_id: String::new(),
            schema_version: 0,
        };
        let pg = db.pool.get().await.unwrap();
        insert_events(
            &pg,
            &[
                row(0, at(1000)),
                row(1, at(2000)),
                row(2, at(3000)),
                row(3, at(4000)),
            ],
        )
        .await
        .unwrap();
        let group = format!("g-{}", suffix());
        let committer: BaseConsumer = kafka
            .client_config()
            .unwrap()
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&kafka.topic, 0, Offset::Offset(4))
            .unwrap();
        committer.commit(&tpl, CommitMode::Sync).unwrap();
        let (mut client, token) = start(&db, &kafka).await;

        let reset = |to, dry_run| ResetOffsetsRequest {
            group: group.clone(),
            topic: String::new(),
            to: Some(to),
            dry_run,
        };
        let by_time = client
            .reset_offsets(reset(
                reset_offsets_request::To::Timestamp(at(2500).into()),
                true,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            by_time.offsets,
            [PartitionOffset {
                partition: 0,
                offset: 2
            }]
        );
        assert!(!by_time.applied);

        let applied = client
            .reset_offsets(reset(reset_offsets_request::To::Earliest(true), false))
            .await
            .unwrap()
            .into_inner();
        assert!(applied.applied);
        let committed = committer
            .committed_offsets(
                {
                    let mut t = TopicPartitionList::new();
                    t.add_partition(&kafka.topic, 0);
                    t
                },
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(
            committed
                .find_partition(&kafka.topic, 0)
                .map(|e| e.offset()),
            Some(Offset::Offset(0))
        );

        let out_of_range = client
            .reset_offsets(reset(
                reset_offsets_request::To::Offsets(PartitionOffsets {
                    offsets: vec![PartitionOffset {
                        partition: 0,
                        offset: 99,
                    }],
                }),
                false,
            ))
            .await
            .unwrap_err();
        assert_eq!(out_of_range.code(), Code::InvalidArgument);

        // A member joins: a reset is refused until it leaves.
        let member: BaseConsumer = kafka
            .client_config()
            .unwrap()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        member.subscribe(&[&kafka.topic]).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let polling = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = member.poll(Duration::from_millis(100));
                }
            })
        };
        let mut refused = None;
        for _ in 0..100 {
            match client
                .reset_offsets(reset(reset_offsets_request::To::Latest(true), false))
                .await
            {
                Err(s) if s.code() == Code::FailedPrecondition => {
                    refused = Some(s);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        polling.join().unwrap();
        let refused = refused.expect("a reset refused while the group has a member");
        assert!(
            refused.message().contains("active member"),
            "{}",
            refused.message()
        );
        token.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn event_types_are_versioned_and_schemas_checked() {
        let db = TestDb::new().await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let kafka = broker.kafka_args(&suffix());
        broker.create_topics(&kafka, 1).await.unwrap();
        let (mut client, token) = start(&db, &kafka).await;
        let schema = |json: serde_json::Value| {
            Some(tributary_proto::json::json_to_struct(
                json.as_object().cloned().unwrap(),
            ))
        };
        let register = |name: &str, s| RegisterEventTypeRequest {
            name: name.into(),
            schema: s,
            description: "d".into(),
            force: false,
        };
        let bad = client
            .register_event_type(register(
                "order.placed",
                schema(serde_json::json!({"type": "nope"})),
            ))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(
            bad.message()
                .starts_with("schema: is not a valid JSON Schema"),
            "{}",
            bad.message()
        );
        let bad_name = client
            .register_event_type(register("Order", schema(serde_json::json!({}))))
            .await
            .unwrap_err();
        assert_eq!(bad_name.code(), Code::InvalidArgument);

        let v1 = client
            .register_event_type(register(
                "order.placed",
                schema(serde_json::json!({"type": "object"})),
            ))
            .await
            .unwrap()
            .into_inner();
        // A newly required property would refuse payloads v1 accepted.
        let stricter = schema(serde_json::json!({"type": "object", "required": ["amount"],
            "properties": {"amount": {"type": "number", "default": 0}}}));
        let refused = client
            .register_event_type(register("order.placed", stricter.clone()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        let details = tonic_types::StatusExt::get_details_bad_request(&refused).unwrap();
        let fields: Vec<&str> = details
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["schema/properties/amount/type", "schema/required"]);
        let v2 = client
            .register_event_type(RegisterEventTypeRequest {
                force: true,
                ..register("order.placed", stricter)
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((v1.version, v2.version), (1, 2));
        client
            .register_event_type(register("a.first", schema(serde_json::json!({}))))
            .await
            .unwrap();
        let latest = client
            .get_event_type(GetEventTypeRequest {
                name: "order.placed".into(),
                version: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(latest.version, 2);
        let first = client
            .get_event_type(GetEventTypeRequest {
                name: "order.placed".into(),
                version: 1,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.schema, v1.schema);
        let missing = client
            .get_event_type(GetEventTypeRequest {
                name: "order.placed".into(),
                version: 9,
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        let page = client
            .list_event_types(ListEventTypesRequest {
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.event_types[0].name, "a.first");
        let rest = client
            .list_event_types(ListEventTypesRequest {
                page_size: 1,
                page_token: page.next_page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                rest.event_types[0].name.as_str(),
                rest.event_types[0].version
            ),
            ("order.placed", 2)
        );
        token.cancel();
    }

    fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_keys_are_created_once_listed_without_secrets_and_revoked() {
        let db = TestDb::new().await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let kafka = broker.kafka_args(&suffix());
        broker.create_topics(&kafka, 1).await.unwrap();
        let bootstrap = tributary_platform::auth::key::generate(false).unwrap();
        let (mut client, token) = start_with(
            &db,
            &kafka,
            &[
                "--auth=on".into(),
                format!("--bootstrap-admin-key={}", bootstrap.key),
            ],
        )
        .await;
        let create = |name: &str, scopes: &[&str]| CreateApiKeyRequest {
            name: name.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        // Bad requests name the field.
        for (request, field) in [
            (create("", &["query:read"]), "name"),
            (create("x", &[]), "scopes"),
            (create("x", &["query:write"]), "scopes[0]"),
            (
                CreateApiKeyRequest {
                    publishable: true,
                    ..create("web", &["ingest:write"])
                },
                "allowed_origins",
            ),
            (
                CreateApiKeyRequest {
                    publishable: true,
                    allowed_origins: vec!["https://shop.example".into()],
                    ..create("web", &["query:read"])
                },
                "scopes",
            ),
            (
                CreateApiKeyRequest {
                    allowed_origins: vec!["https://shop.example".into()],
                    ..create("x", &["query:read"])
                },
                "allowed_origins",
            ),
            (
                CreateApiKeyRequest {
                    expires_at: Some(std::time::SystemTime::UNIX_EPOCH.into()),
                    ..create("x", &["query:read"])
                },
                "expires_at",
            ),
        ] {
            let e = client
                .create_api_key(with_key(request, &bootstrap.key))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
            assert!(e.message().contains(field), "{field}: {}", e.message());
        }
        // Created: the secret once, and it works at once for its scope.
        let created = client
            .create_api_key(with_key(
                create("ops reader", &["admin:read"]),
                &bootstrap.key,
            ))
            .await
            .unwrap()
            .into_inner();
        let key = created.key.unwrap();
        assert!(
            created.secret.starts_with(&format!("trb_{}_", key.key_id)),
            "{}",
            created.secret
        );
        assert_eq!(key.scopes, ["admin:read"]);
        let listed = client
            .list_api_keys(with_key(ListApiKeysRequest::default(), &created.secret))
            .await
            .unwrap()
            .into_inner();
        assert!(listed.keys.iter().any(|k| k.key_id == key.key_id));
        let secret_part = tributary_platform::auth::key::parse(&created.secret)
            .unwrap()
            .secret;
        assert!(
            !format!("{listed:?}").contains(secret_part),
            "a listing shows no secret"
        );
        let stored = db.pool.get().await.unwrap();
        let row = tributary_store::api_keys::get(&stored, &key.key_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.secret_sha256,
            tributary_platform::auth::key::secret_sha256(secret_part).to_vec(),
            "only the hash is stored"
        );
        // admin:read may not write.
        let denied = client
            .create_api_key(with_key(create("x", &["admin:write"]), &created.secret))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        // A publishable key for a web page.
        let web = client
            .create_api_key(with_key(
                CreateApiKeyRequest {
                    publishable: true,
                    allowed_origins: vec!["http://127.0.0.1:8088".into()],
                    ..create("web page", &[])
                },
                &bootstrap.key,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(web.secret.starts_with("trb_pub_"));
        assert_eq!(web.key.unwrap().scopes, ["ingest:write"]);
        // Revoked: refused at once here, revoked_at kept on a second revoke.
        let revoke = |key_id: &str| {
            with_key(
                RevokeApiKeyRequest {
                    key_id: key_id.to_owned(),
                },
                &bootstrap.key,
            )
        };
        let first = client.revoke_api_key(revoke(&key.key_id)).await.unwrap();
        let again = client.revoke_api_key(revoke(&key.key_id)).await.unwrap();
        assert!(first.get_ref().revoked_at.is_some());
        assert_eq!(again.get_ref().revoked_at, first.get_ref().revoked_at);
        tributary_testkit::eventually(Duration::from_secs(5), "the revoked key refused", || {
            let mut client = client.clone();
            let secret = created.secret.clone();
            async move {
                let r = client
                    .list_api_keys(with_key(ListApiKeysRequest::default(), &secret))
                    .await;
                r.err()
                    .filter(|s| s.code() == Code::Unauthenticated)
                    .map(|_| ())
            }
        })
        .await
        .unwrap();
        let missing = client
            .revoke_api_key(revoke("aaaaaaaaaaaa"))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        // Revoked keys are left out of listings unless asked for.
        let live = client
            .list_api_keys(with_key(ListApiKeysRequest::default(), &bootstrap.key))
            .await
            .unwrap()
            .into_inner();
        assert!(live.keys.iter().all(|k| k.key_id != key.key_id));
        let all = client
            .list_api_keys(with_key(
                ListApiKeysRequest {
                    include_revoked: true,
                    page_size: 1,
                    ..Default::default()
                },
                &bootstrap.key,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.keys.len(), 1);
        assert!(!all.next_page_token.is_empty(), "two keys, pages of one");

        // A rule's webhook may not point at internal addresses.
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
            "http://127.0.0.1:9/",
        ] {
            let e = client
                .create_rule(with_key(
                    CreateRuleRequest {
                        name: "r".into(),
                        event_type: "order.placed".into(),
                        path: "/amount".into(),
                        comparator: Comparator::Gt as i32,
                        threshold: Some(prost_types::Value {
                            kind: Some(prost_types::value::Kind::NumberValue(1.0)),
                        }),
                        webhook_url: url.into(),
                        description: String::new(),
                    },
                    &bootstrap.key,
                ))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{url}");
            assert!(e.message().starts_with("webhook_url:"), "{}", e.message());
        }
        token.cancel();
    }

    fn event(event_id: &str, user: &str, partition: i32, offset: i64) -> NewEvent {
        NewEvent {
            event_id: event_id.into(),
            event_type: "order.placed".into(),
            source: String::new(),
            user_id: user.into(),
            session_id: String::new(),
            occurred_at: SystemTime::now(),
            received_at: SystemTime::now(),
            payload_json: r#"{"amount":12}"#.into(),
            partition,
            offset,
            trace_id: String::new(),
            schema_version: 0,
        }
    }

    fn letter(
        offset: i64,
        user: Option<&str>,
        value: Vec<u8>,
        subscription: &str,
    ) -> NewDeadLetter {
        NewDeadLetter {
            topic: "events".into(),
            partition: 0,
            offset,
            key: None,
            value: Some(value),
            headers: Vec::new(),
            reason: "delivery gave up".into(),
            event_id: None,
            event_type: None,
            subscription: subscription.into(),
            user_id: user.map(str::to_owned),
        }
    }

    fn envelope_of(user: &str) -> Vec<u8> {
        use prost::Message as _;
        EventEnvelope {
            envelope_version: 1,
            event: Some(Event {
                event_id: format!("legacy-{user}"),
                event_type: "order.placed".into(),
                user_id: user.into(),
                ..Default::default()
            }),
            payload_json: "{}".into(),
            received_at: None,
            ingest: None,
        }
        .encode_to_vec()
    }

    async fn texts(pg: &tributary_store::pool::Client, sql: &str) -> Vec<String> {
        pg.query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// EraseUser removes every row of that user (events, their alerts, the
    /// processor's and a subscription's dead letters, old letters without
    /// a user found by decoding them) and nothing of another user; its
    /// audit record and tombstone hold a keyed hash, never the id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn erase_user_removes_exactly_that_users_rows_and_keeps_no_id() {
        let db = TestDb::new().await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let kafka = broker.kafka_args(&suffix());
        broker.create_topics(&kafka, 2).await.unwrap();
        let producer = tributary_kafka::producer::Producer::new(
            &kafka,
            &Default::default(),
            &prometheus::Registry::new(),
        )
        .unwrap();
        for i in 0..5 {
            producer
                .send(tributary_kafka::producer::Record {
                    topic: &kafka.topic,
                    key: Some(format!("k{i}").as_bytes()),
                    value: b"x",
                    headers: &[],
                })
                .await
                .unwrap();
        }
        let ends: Vec<i64> = {
            let c: BaseConsumer = kafka.client_config().unwrap().create().unwrap();
            (0..2)
                .map(|p| {
                    c.fetch_watermarks(&kafka.topic, p, Duration::from_secs(5))
                        .unwrap()
                        .1
                })
                .collect()
        };

        let (gone, kept) = ("erase-me@example.com", "keep-me@example.com");
        let pg = db.pool.get().await.unwrap();
        insert_events(
            &pg,
            &[
                event("a1", gone, 0, 0),
                event("a2", gone, 1, 0),
                event("a3", gone, 0, 1),
                event("b1", kept, 1, 1),
                event("b2", kept, 0, 2),
            ],
        )
        .await
        .unwrap();
        pg.batch_execute(
            "INSERT INTO alert_rules (rule_id, name, event_type, path, pointer, comparator, threshold)
             VALUES ('r1', 'big', 'order.placed', '{amount}', '/amount', 'GT', '10');
             INSERT INTO alerts (rule_id, event_id, event_type, observed)
             VALUES ('r1', 'a1', 'order.placed', '12'), ('r1', 'b1', 'order.placed', '12')",
        )
        .await
        .unwrap();
        insert_dead_letters(
            &pg,
            &[
                letter(10, Some(gone), envelope_of(gone), ""),
                letter(10, Some(gone), envelope_of(gone), "hooks"),
                letter(11, Some(kept), envelope_of(kept), ""),
                // From before dead letters named their user: found by decoding.
                letter(12, None, envelope_of(gone), ""),
                letter(13, None, b"\xff\xffnot an envelope".to_vec(), ""),
                letter(14, None, envelope_of(kept), ""),
            ],
        )
        .await
        .unwrap();

        let (mut client, token) = start(&db, &kafka).await;
        let empty = client
            .erase_user(EraseUserRequest {
                user_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument);
        let details = tonic_types::StatusExt::get_details_bad_request(&empty).unwrap();
        assert_eq!(details.field_violations[0].field, "user_id");
        for bad in ["a\0b".to_owned(), "x".repeat(257)] {
            let refused = client
                .erase_user(EraseUserRequest { user_id: bad })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument);
            assert!(
                refused.message().starts_with("user_id:"),
                "{}",
                refused.message()
            );
        }

        let erased = client
            .erase_user(EraseUserRequest {
                user_id: gone.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                erased.events,
                erased.alerts,
                erased.dead_letters,
                erased.subscription_dead_letters
            ),
            (3, 1, 2, 1)
        );
        assert!(erased.erasure_id > 0 && erased.erased_at.is_some());
        let offsets_of = |topic: &str| -> Vec<(i32, i64)> {
            erased
                .end_offsets
                .iter()
                .find(|t| t.topic == topic)
                .map(|t| t.offsets.iter().map(|o| (o.partition, o.offset)).collect())
                .unwrap_or_default()
        };
        assert_eq!(offsets_of(&kafka.topic), [(0, ends[0]), (1, ends[1])]);
        assert_eq!(offsets_of(&kafka.dlq_topic), [(0, 0), (1, 0)]);

        // Only the other user's rows are left.
        assert_eq!(
            texts(&pg, "SELECT event_id FROM events ORDER BY event_id").await,
            ["b1", "b2"]
        );
        assert_eq!(
            texts(&pg, "SELECT event_id FROM alerts ORDER BY event_id").await,
            ["b1"]
        );
        assert_eq!(
            texts(
                &pg,
                "SELECT kafka_offset || ':' || user_id FROM dead_letters ORDER BY kafka_offset"
            )
            .await,
            [format!("11:{kept}"), "13:".into(), format!("14:{kept}")]
        );

        // The audit record and the tombstone: no user_id, in any form.
        let audit = texts(
            &pg,
            "SELECT row_to_json(e)::text FROM erasures e
             UNION ALL SELECT row_to_json(o)::text FROM erasure_offsets o",
        )
        .await;
        assert_eq!(audit.len(), 1 + 4, "{audit:?}");
        let hex: String = gone.bytes().map(|b| format!("{b:02x}")).collect();
        for row in &audit {
            assert!(!row.contains(gone) && !row.contains("erase-me"), "{row}");
            assert!(!row.contains(&hex), "{row}");
        }
        let key = tributary_store::erasure::key(&pg).await.unwrap();
        let hash: Vec<u8> = pg
            .query_one("SELECT user_hash FROM erasures", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(hash, key.user_hash(gone));
        assert_ne!(key.user_hash(gone), key.user_hash(kept));

        // The tombstone covers the user's records below the end offsets.
        let erased_now = tributary_store::erasure::erased(
            &pg,
            &key,
            &kafka.topic,
            [
                (gone, 0, ends[0] - 1),
                (gone, 1, ends[1]),
                (kept, 0, 0),
                ("", 0, 0),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            erased_now.into_iter().collect::<Vec<_>>(),
            [(0, ends[0] - 1)]
        );

        // Erasing again removes what arrived since (here nothing) and
        // records a second tombstone.
        let again = client
            .erase_user(EraseUserRequest {
                user_id: gone.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((again.events, again.dead_letters), (0, 0));
        assert!(again.erasure_id > erased.erasure_id);
        token.cancel();
    }

    /// Writers storing a user's records under the erasure lock, as the
    /// processor does, while the user is erased: every row of the user
    /// below the tombstone is gone afterwards, whichever committed first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_never_bring_an_erased_users_rows_back() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
        use tributary_store::erasure::{self, EndOffset};

        let db = TestDb::new().await.unwrap();
        let key = erasure::key(&db.pool.get().await.unwrap()).await.unwrap();
        let user = "racer";
        let next = Arc::new(AtomicI64::new(0));
        let skipped = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let mut writers = Vec::new();
        for _ in 0..3 {
            let (pool, key, next, skipped, stop) = (
                db.pool.clone(),
                key.clone(),
                next.clone(),
                skipped.clone(),
                stop.clone(),
            );
            writers.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let offset = next.fetch_add(1, Ordering::Relaxed);
                    let mut c = pool.get().await.unwrap();
                    let tx = c.transaction().await.unwrap();
                    erasure::lock_shared(&tx).await.unwrap();
                    let gone = erasure::erased(&tx, &key, "events", [(user, 0, offset)])
                        .await
                        .unwrap();
                    if gone.is_empty() {
                        insert_events(&tx, &[event(&format!("r{offset}"), user, 0, offset)])
                            .await
                            .unwrap();
                    } else {
                        skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    // Held open a while: the erasure comes in meanwhile.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    tx.commit().await.unwrap();
                }
            }));
        }
        // Rows are being written; erase with an end offset far above them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let erased = {
            let mut c = db.pool.get().await.unwrap();
            let tx = c.transaction().await.unwrap();
            let e = erasure::erase_user(
                &tx,
                user,
                &key,
                &[EndOffset {
                    topic: "events".into(),
                    partition: 0,
                    end_offset: i64::from(i32::MAX),
                }],
                &|_: &[u8]| None,
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            e
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        for w in writers {
            w.await.unwrap();
        }
        let left: i64 = db
            .pool
            .get()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM events WHERE user_id = $1", &[&user])
            .await
            .unwrap()
            .get(0);
        assert!(erased.events > 0, "rows were written before the erasure");
        assert!(
            skipped.load(Ordering::Relaxed) > 0,
            "writers went on after the erasure"
        );
        assert_eq!(left, 0, "a concurrent writer brought rows back");
    }
}
