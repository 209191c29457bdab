//! The query service over a real PostgreSQL database of its own.

#![allow(clippy::unwrap_used)]

mod security;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tonic::Code;
use tributary_proto::v1::query_service_client::QueryServiceClient;
use tributary_proto::v1::{EventFilter, GetEventRequest, ListEventsRequest, PayloadMatch};
use tributary_query::{Config, Query};
use tributary_store::events::{NewEvent, insert_events};
use tributary_testkit::TestDb;

type Client = QueryServiceClient<tonic::transport::Channel>;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn row(id: &str, event_type: &str, user: &str, secs: u64, payload: &str) -> NewEvent {
    NewEvent {
        event_id: id.into(),
        event_type: event_type.into(),
        source: "web".into(),
        user_id: user.into(),
        session_id: format!("s-{user}"),
        occurred_at: at(secs),
        received_at: at(secs),
        payload_json: payload.into(),
        partition: 0,
        offset: 0,
        trace_id: String::new(),
        schema_version: 0,
    }
}

async fn start(db: &TestDb) -> (Client, CancellationToken) {
    tributary_testkit::init_telemetry();
    let config = <Config as clap::Parser>::parse_from([
        "tributary-query",
        "--auth=off",
        "--grpc-addr=127.0.0.1:0",
        "--http-addr=127.0.0.1:0",
        &format!("--database-url={}", db.url),
    ]);
    let query = Query::build(config, prometheus::Registry::new())
        .await
        .unwrap();
    let addr = query.grpc_addr();
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(query.run(async move { stop.cancelled().await }));
    (
        Client::connect(format!("http://{addr}")).await.unwrap(),
        token,
    )
}

async fn seed(db: &TestDb) {
    let client = db.pool.get().await.unwrap();
    let rows = vec![
        row("a", "page.view", "u1", 10, r#"{"country":"DE","amount":3}"#),
        row("b", "page.view", "u2", 20, r#"{"country":"FR"}"#),
        row(
            "c",
            "order.placed",
            "u1",
            30,
            r#"{"country":"DE","amount":40}"#,
        ),
        // Same time as c: the id breaks the tie.
        row("d", "order.placed", "u2", 30, r#"{"country":"DE"}"#),
        row("e", "page.view", "u1", 40, r#"{"country":"FR"}"#),
    ];
    assert_eq!(insert_events(&client, &rows).await.unwrap().len(), 5);
    // Stored again (a redelivery): nothing new.
    assert!(insert_events(&client, &rows).await.unwrap().is_empty());
}

async fn ids(client: &mut Client, filter: EventFilter, page_size: i32) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_events(ListEventsRequest {
                filter: Some(filter.clone()),
                page_size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= page_size as usize);
        out.extend(page.events.into_iter().map(|e| e.event.unwrap().event_id));
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_newest_first_with_every_filter_and_stable_pages() {
    let db = TestDb::new().await.unwrap();
    seed(&db).await;
    let (mut client, token) = start(&db).await;

    assert_eq!(
        ids(&mut client, EventFilter::default(), 2).await,
        ["e", "d", "c", "b", "a"]
    );
    let by_user = EventFilter {
        user_id: "u1".into(),
        ..Default::default()
    };
    assert_eq!(ids(&mut client, by_user, 1).await, ["e", "c", "a"]);
    let by_type = EventFilter {
        event_types: vec!["order.placed".into()],
        ..Default::default()
    };
    assert_eq!(ids(&mut client, by_type, 10).await, ["d", "c"]);
    let by_session = EventFilter {
        session_id: "s-u2".into(),
        ..Default::default()
    };
    assert_eq!(ids(&mut client, by_session, 10).await, ["d", "b"]);
    let window = EventFilter {
        occurred_after: Some(at(20).into()),
        occurred_before: Some(at(40).into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&mut client, window, 10).await,
        ["d", "c", "b"],
        "after inclusive, before exclusive"
    );
    let by_payload = EventFilter {
        payload_matches: vec![PayloadMatch {
            path: "/country".into(),
            value: Some(tributary_proto::json::json_to_value(serde_json::json!(
                "DE"
            ))),
        }],
        source: "web".into(),
        ..Default::default()
    };
    assert_eq!(ids(&mut client, by_payload, 10).await, ["d", "c", "a"]);

    // Rows arriving while paging are neither skipped nor repeated.
    let first = client
        .list_events(ListEventsRequest {
            filter: None,
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let pg = db.pool.get().await.unwrap();
    insert_events(
        &pg,
        &[
            row("z", "page.view", "u9", 50, "{}"),
            row("m", "page.view", "u9", 25, "{}"),
        ],
    )
    .await
    .unwrap();
    let rest = client
        .list_events(ListEventsRequest {
            filter: None,
            page_size: 10,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    let rest: Vec<String> = rest
        .events
        .into_iter()
        .map(|e| e.event.unwrap().event_id)
        .collect();
    assert_eq!(rest, ["c", "m", "b", "a"]);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_event_and_bad_requests() {
    let db = TestDb::new().await.unwrap();
    seed(&db).await;
    let (mut client, token) = start(&db).await;

    let stored = client
        .get_event(GetEventRequest {
            event_id: "c".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let event = stored.event.unwrap();
    assert_eq!(
        (event.event_type.as_str(), event.user_id.as_str()),
        ("order.placed", "u1")
    );
    let payload = tributary_proto::json::struct_to_json(&event.payload.unwrap()).unwrap();
    assert_eq!(
        serde_json::Value::Object(payload),
        serde_json::json!({"country":"DE","amount":40})
    );
    assert_eq!(
        event.occurred_at.unwrap(),
        prost_types::Timestamp::from(at(30))
    );
    assert!(stored.persisted_at.is_some());

    let missing = client
        .get_event(GetEventRequest {
            event_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let empty = client
        .get_event(GetEventRequest {
            event_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    let forged = client
        .list_events(ListEventsRequest {
            filter: None,
            page_size: 1,
            page_token: "Zm9yZ2Vk".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::InvalidArgument);
    assert!(forged.message().contains("page_token"));

    let page = client
        .list_events(ListEventsRequest {
            filter: None,
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let reused = client
        .list_events(ListEventsRequest {
            filter: Some(EventFilter {
                user_id: "u1".into(),
                ..Default::default()
            }),
            page_size: 1,
            page_token: page.next_page_token,
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert!(
        reused.message().contains("different filter"),
        "{}",
        reused.message()
    );

    let bad_path = client
        .list_events(ListEventsRequest {
            filter: Some(EventFilter {
                payload_matches: vec![PayloadMatch {
                    path: "country".into(),
                    value: None,
                }],
                ..Default::default()
            }),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_path.code(), Code::InvalidArgument);
    token.cancel();
}

mod aggregate {
    use super::*;
    use tributary_proto::v1::{
        AggregateEventsRequest, Aggregation, BucketWidth, EventField, GroupBy, Measure, TimeBucket,
        group_by,
    };

    fn num(v: &prost_types::Value) -> f64 {
        match v.kind {
            Some(prost_types::value::Kind::NumberValue(n)) => n,
            _ => f64::NAN,
        }
    }

    fn text(v: &prost_types::Value) -> String {
        match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
            other => format!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_measures_and_skips_like_independent_arithmetic() {
        let db = TestDb::new().await.unwrap();
        // 60 employees: gender cycles F/M/X, salary from a formula, birth month
        // cycles 1..12; every 7th has no salary and every 11th a text salary.
        let mut rows = Vec::new();
        let mut expected: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
        let mut skipped = 0;
        let mut per_month = [0i64; 12];
        for i in 0..60u64 {
            let gender = ["F", "M", "X"][(i % 3) as usize];
            let month = (i % 12) + 1;
            per_month[(month - 1) as usize] += 1;
            let salary = 30_000 + (i * 937) % 50_000;
            let salary_json = if i % 7 == 0 {
                skipped += 1;
                String::new()
            } else if i % 11 == 0 {
                skipped += 1;
                format!(r#","salary":"{salary}""#)
            } else {
                let e = expected.entry(gender.to_owned()).or_default();
                e.0 += salary as f64;
                e.1 += 1.0;
                format!(r#","salary":{salary}"#)
            };
            let payload = format!(
                r#"{{"gender":"{gender}","birth_date":"1990-{month:02}-15T08:00:00Z"{salary_json}}}"#
            );
            let kind = if i % 2 == 0 {
                "employee.hired"
            } else {
                "employee.updated"
            };
            rows.push(row(
                &format!("emp-{i}"),
                kind,
                &format!("u{i}"),
                i * 600,
                &payload,
            ));
        }
        let pg = db.pool.get().await.unwrap();
        insert_events(&pg, &rows).await.unwrap();
        let (mut client, token) = start(&db).await;

        let by_gender = client
            .aggregate_events(AggregateEventsRequest {
                filter: None,
                group_by: vec![GroupBy {
                    key: Some(group_by::Key::PayloadPath("/gender".into())),
                }],
                measures: vec![
                    Measure {
                        aggregation: Aggregation::Avg as i32,
                        payload_path: "/salary".into(),
                    },
                    Measure {
                        aggregation: Aggregation::Count as i32,
                        payload_path: String::new(),
                    },
                ],
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_gender.columns, ["/gender", "avg(/salary)", "count"]);
        assert_eq!(by_gender.skipped, skipped);
        let got: Vec<(String, f64, f64)> = by_gender
            .rows
            .iter()
            .map(|r| (text(&r.group[0]), num(&r.values[0]), num(&r.values[1])))
            .collect();
        let want: Vec<(String, f64, f64)> = expected
            .iter()
            .map(|(g, (sum, n))| (g.clone(), sum / n, 20.0))
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0);
            assert!((g.1 - w.1).abs() < 1e-6, "{g:?} vs {w:?}");
            assert_eq!(g.2, w.2);
        }

        let by_birth_month = client
            .aggregate_events(AggregateEventsRequest {
                filter: None,
                group_by: vec![GroupBy {
                    key: Some(group_by::Key::TimeBucket(TimeBucket {
                        width: BucketWidth::Month as i32,
                        time_zone: "UTC".into(),
                        payload_path: "/birth_date".into(),
                    })),
                }],
                measures: vec![],
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let months: Vec<(String, f64)> = by_birth_month
            .rows
            .iter()
            .map(|r| (text(&r.group[0]), num(&r.values[0])))
            .collect();
        let want: Vec<(String, f64)> = (1..=12)
            .map(|m| (format!("1990-{m:02}-01T00:00:00Z"), per_month[m - 1] as f64))
            .collect();
        assert_eq!(months, want);

        // Hourly counts by type: events are 10 minutes apart from a whole hour.
        let hourly = client
            .aggregate_events(AggregateEventsRequest {
                filter: Some(EventFilter {
                    event_types: vec!["employee.hired".into()],
                    ..Default::default()
                }),
                group_by: vec![
                    GroupBy {
                        key: Some(group_by::Key::Field(EventField::EventType as i32)),
                    },
                    GroupBy {
                        key: Some(group_by::Key::TimeBucket(TimeBucket {
                            width: BucketWidth::Hour as i32,
                            time_zone: "Europe/Berlin".into(),
                            payload_path: String::new(),
                        })),
                    },
                ],
                measures: vec![Measure {
                    aggregation: Aggregation::CountDistinctUsers as i32,
                    payload_path: String::new(),
                }],
                limit: 3,
            })
            .await
            .unwrap()
            .into_inner();
        // 1_800_000_000 is 08:00 UTC; six events an hour, three of them hires.
        let first: Vec<(String, String, f64)> = hourly
            .rows
            .iter()
            .map(|r| (text(&r.group[0]), text(&r.group[1]), num(&r.values[0])))
            .collect();
        assert_eq!(
            first,
            [
                ("employee.hired".into(), "2027-01-15T08:00:00Z".into(), 3.0),
                ("employee.hired".into(), "2027-01-15T09:00:00Z".into(), 3.0),
                ("employee.hired".into(), "2027-01-15T10:00:00Z".into(), 3.0),
            ]
        );

        // Refused even when no event would be bucketed.
        let bad_zone = client
            .aggregate_events(AggregateEventsRequest {
                filter: Some(EventFilter {
                    source: "no-such-source".into(),
                    ..Default::default()
                }),
                group_by: vec![GroupBy {
                    key: Some(group_by::Key::TimeBucket(TimeBucket {
                        width: BucketWidth::Day as i32,
                        time_zone: "Mars/Olympus_Mons".into(),
                        payload_path: String::new(),
                    })),
                }],
                measures: vec![],
                limit: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(bad_zone.code(), Code::InvalidArgument);
        assert!(
            bad_zone.message().contains("Mars/Olympus_Mons"),
            "{}",
            bad_zone.message()
        );
        token.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_delivers_committed_matching_events_only() {
    use tributary_proto::v1::TailEventsRequest;
    use tributary_store::tail::{notify_committed, ranges};
    let db = TestDb::new().await.unwrap();
    let (mut client, token) = start(&db).await;
    let mut tail = client
        .tail_events(TailEventsRequest {
            filter: Some(EventFilter {
                user_id: "tailed".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    // The listener connects in the background; announce until it hears.
    let mut pg = db.pool.get().await.unwrap();
    let mut received = None;
    for round in 0..50i64 {
        let tx = pg.transaction().await.unwrap();
        let mut hit = row(&format!("t-{round}"), "page.view", "tailed", 100, "{}");
        hit.offset = round * 2;
        let mut miss = row(&format!("o-{round}"), "page.view", "other", 100, "{}");
        miss.offset = round * 2 + 1;
        insert_events(&tx, &[hit, miss]).await.unwrap();
        notify_committed(&tx, &ranges([(0, round * 2), (0, round * 2 + 1)]))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        if let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_millis(200), tail.message())
            .await
            .map(|m| m.transpose())
        {
            received = Some(e);
            break;
        }
    }
    let first = received.expect("a tailed event");
    assert_eq!(first.event.as_ref().unwrap().user_id, "tailed");
    // Later announcements arrive too, and never the other user's events.
    let tx = pg.transaction().await.unwrap();
    let mut later = row("t-later", "page.view", "tailed", 200, "{}");
    later.offset = 1000;
    insert_events(&tx, &[later]).await.unwrap();
    notify_committed(&tx, &ranges([(0, 1000)])).await.unwrap();
    tx.commit().await.unwrap();
    let mut ids = Vec::new();
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(3), tail.message()).await {
        ids.push(e.event.unwrap().event_id);
        if ids.last().map(String::as_str) == Some("t-later") {
            break;
        }
    }
    assert!(ids.iter().all(|id| id.starts_with("t-")), "{ids:?}");
    assert_eq!(ids.last().map(String::as_str), Some("t-later"));

    // A stopping service ends the tail with UNAVAILABLE rather than hanging.
    token.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), tail.message())
        .await
        .unwrap();
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
}
