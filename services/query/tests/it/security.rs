//! The edge every service shares, exercised on query: API keys and scopes,
//! revocation through NOTIFY, rate limits, TLS (mutual, reloaded), deadlines
//! that cancel PostgreSQL's work, and hostile filter strings.

use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_types::StatusExt as _;
use tributary_platform::auth::key;
use tributary_proto::v1::query_service_client::QueryServiceClient;
use tributary_proto::v1::{
    AggregateEventsRequest, Aggregation, EventFilter, GetEventRequest, GroupBy, ListEventsRequest,
    Measure, PayloadMatch, group_by,
};
use tributary_query::{Config, Query};
use tributary_store::api_keys::{self, NewApiKey};
use tributary_testkit::TestDb;
use tributary_testkit::pki::TestPki;

struct Started {
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    token: CancellationToken,
    registry: prometheus::Registry,
}

async fn start_with(db: &TestDb, extra: &[String]) -> Started {
    tributary_testkit::init_telemetry();
    let mut args = vec![
        "tributary-query".to_owned(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--http-addr=127.0.0.1:0".into(),
        format!("--database-url={}", db.url),
    ];
    args.extend(extra.iter().cloned());
    let config = <Config as clap::Parser>::parse_from(args);
    let registry = prometheus::Registry::new();
    let query = Query::build(config, registry.clone()).await.unwrap();
    let (grpc, http) = (query.grpc_addr(), query.http_addr());
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(query.run(async move { stop.cancelled().await }));
    Started {
        grpc,
        http,
        token,
        registry,
    }
}

/// Creates a key in the store as CreateApiKey does; its whole key string.
async fn create_key(
    db: &TestDb,
    scopes: &[&str],
    rate: (i32, i32),
    expires_at: Option<SystemTime>,
) -> (String, String) {
    let new = key::generate(false).unwrap();
    let client = db.pool.get().await.unwrap();
    api_keys::create(
        &client,
        &NewApiKey {
            key_id: new.key_id.clone(),
            name: "test".into(),
            publishable: false,
            secret_sha256: new.secret_sha256.to_vec(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            allowed_origins: Vec::new(),
            rate_per_second: rate.0,
            rate_burst: rate.1,
            expires_at,
        },
    )
    .await
    .unwrap();
    (new.key_id, new.key)
}

fn get_event(key: Option<&str>) -> tonic::Request<GetEventRequest> {
    let mut request = tonic::Request::new(GetEventRequest {
        event_id: "missing".into(),
    });
    if let Some(key) = key {
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
        );
    }
    request
}

/// The code of a GetEvent of a missing event: NOT_FOUND means the call got
/// through the auth layer.
async fn code(
    client: &mut QueryServiceClient<tonic::transport::Channel>,
    key: Option<&str>,
) -> Code {
    match client.get_event(get_event(key)).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_scopes_revocation_and_rate_limits() {
    let db = TestDb::new().await.unwrap();
    let bootstrap = key::generate(false).unwrap();
    let s = start_with(
        &db,
        &[
            "--auth=on".into(),
            format!("--bootstrap-admin-key={}", bootstrap.key),
            "--rate-limit=query:read=1000/s".into(),
        ],
    )
    .await;
    let mut client = QueryServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap();
    let (reader_id, reader) = create_key(&db, &["query:read"], (0, 0), None).await;
    let (_, writer) = create_key(&db, &["ingest:write", "admin:write"], (0, 0), None).await;
    let (_, expired) = create_key(
        &db,
        &["query:read"],
        (0, 0),
        Some(SystemTime::now() + Duration::from_secs(2)),
    )
    .await;
    let (_, slow) = create_key(&db, &["query:read"], (1, 1), None).await;

    // Health stays open.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    assert!(
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new()
            })
            .await
            .is_ok()
    );

    assert_eq!(
        code(&mut client, None).await,
        Code::Unauthenticated,
        "no key"
    );
    assert_eq!(
        code(&mut client, Some("garbage")).await,
        Code::Unauthenticated,
        "not a key"
    );
    let forged = format!("trb_{reader_id}_{}", "A".repeat(key::SECRET_LEN));
    assert_eq!(
        code(&mut client, Some(&forged)).await,
        Code::Unauthenticated,
        "a known id with a wrong secret"
    );
    assert_eq!(
        code(&mut client, Some(&reader)).await,
        Code::NotFound,
        "query:read may read"
    );
    assert_eq!(
        code(&mut client, Some(&bootstrap.key)).await,
        Code::NotFound,
        "the bootstrap key may read"
    );
    let denied = client
        .get_event(get_event(Some(&writer)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("query:read"),
        "{}",
        denied.message()
    );
    assert_eq!(
        code(&mut client, Some(&expired)).await,
        Code::NotFound,
        "not expired yet"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        code(&mut client, Some(&expired)).await,
        Code::Unauthenticated,
        "expired"
    );

    // A key's own rate: one call, then RESOURCE_EXHAUSTED with RetryInfo.
    assert_eq!(code(&mut client, Some(&slow)).await, Code::NotFound);
    let limited = client.get_event(get_event(Some(&slow))).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let retry = limited
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(1)),
        "{retry:?}"
    );

    // Revocation reaches the cached key through NOTIFY, well within 5 s.
    let revoked_at = Instant::now();
    let pg = db.pool.get().await.unwrap();
    api_keys::revoke(&pg, &reader_id).await.unwrap();
    tributary_testkit::eventually(Duration::from_secs(5), "the revoked key refused", || {
        let mut client = client.clone();
        let reader = reader.clone();
        async move { (code(&mut client, Some(&reader)).await == Code::Unauthenticated).then_some(()) }
    })
    .await
    .unwrap();
    assert!(revoked_at.elapsed() < Duration::from_secs(5));

    // Metrics name known keys only, and never a secret.
    let text = tributary_platform::metrics::encode(&s.registry);
    assert!(
        text.contains(&format!("key_id=\"{reader_id}\",result=\"ok\"")),
        "{text}"
    );
    assert!(text.contains("key_id=\"unknown\",result=\"unauthenticated\""));
    assert!(text.contains("result=\"rate_limited\""));
    assert!(text.contains("result=\"permission_denied\""));
    for secret in [&reader, &writer, &bootstrap.key, &slow] {
        let secret_part = key::parse(secret).unwrap().secret;
        assert!(!text.contains(secret_part), "a secret in /metrics");
    }
    // last_used_at is written on the way out.
    s.token.cancel();
    let pg = db.pool.get().await.unwrap();
    tributary_testkit::eventually(Duration::from_secs(5), "last_used_at written", || {
        let pg = &pg;
        let id = &reader_id;
        async move {
            api_keys::get(pg, id)
                .await
                .ok()
                .flatten()
                .and_then(|k| k.last_used_at)
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_plaintext_and_strangers_and_reloads_certificates() {
    let db = TestDb::new().await.unwrap();
    let pki = TestPki::new("first").unwrap();
    let s = start_with(
        &db,
        &[
            "--auth=off".into(),
            format!("--tls-cert={}", pki.server_cert.display()),
            format!("--tls-key={}", pki.server_key.display()),
            format!("--tls-client-ca={}", pki.ca.display()),
            "--http-tls".into(),
        ],
    )
    .await;
    let addr = s.grpc.to_string();
    let tls = |ca: &std::path::Path, client: bool| tributary_platform::tls::ClientTlsArgs {
        tls_ca: Some(ca.to_owned()),
        tls_client_cert: client.then(|| pki.client_cert.clone()),
        tls_client_key: client.then(|| pki.client_key.clone()),
    };
    // Plaintext on a TLS port: no answer but a failure.
    let plain = tributary_platform::tls::ClientTlsArgs::default()
        .endpoint(&addr)
        .unwrap();
    let plain = match plain.connect().await {
        Ok(channel) => QueryServiceClient::new(channel)
            .get_event(get_event(None))
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(plain.is_err(), "plaintext must be refused");
    // TLS without a client certificate: refused (mutual TLS).
    let anonymous = tls(&pki.ca, false).endpoint(&addr).unwrap();
    let anonymous = match anonymous.connect().await {
        Ok(channel) => QueryServiceClient::new(channel)
            .get_event(get_event(None))
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(
        anonymous.is_err(),
        "a client without a certificate must be refused"
    );
    // With one: served.
    let channel = tls(&pki.ca, true)
        .endpoint(&addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut old = QueryServiceClient::new(channel);
    assert_eq!(code(&mut old, None).await, Code::NotFound);

    // Rotation: a new CA and certificates over the same files. New
    // connections get the new certificate within 10 s; the connection opened
    // before keeps working.
    let kept = TestPki::new("kept").unwrap();
    for (from, to) in [
        (&pki.ca, &kept.ca),
        (&pki.client_cert, &kept.client_cert),
        (&pki.client_key, &kept.client_key),
    ] {
        std::fs::copy(from, to).unwrap();
    }
    pki.issue("second").unwrap();
    let rotated = Instant::now();
    tributary_testkit::eventually(
        Duration::from_secs(10),
        "the new certificate served",
        || {
            let endpoint = tls(&pki.ca, true).endpoint(&addr).unwrap();
            async move {
                let channel = endpoint.connect().await.ok()?;
                QueryServiceClient::new(channel)
                    .get_event(get_event(None))
                    .await
                    .err()
                    .filter(|s| s.code() == Code::NotFound)
                    .map(|_| ())
            }
        },
    )
    .await
    .unwrap();
    assert!(rotated.elapsed() < Duration::from_secs(10));
    assert_eq!(
        code(&mut old, None).await,
        Code::NotFound,
        "the connection opened before keeps flowing"
    );
    // A client that trusts only the old CA can no longer connect.
    let stale = tributary_platform::tls::ClientTlsArgs {
        tls_ca: Some(kept.ca.clone()),
        tls_client_cert: Some(kept.client_cert.clone()),
        tls_client_key: Some(kept.client_key.clone()),
    };
    assert!(stale.endpoint(&addr).unwrap().connect().await.is_err());

    // The HTTP port serves the same certificate (no client certificate).
    let http = tokio::net::TcpStream::connect(s.http).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in tributary_store::tls::read_certs("ca", &pki.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            http,
        )
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    s.token.cancel();
}

/// The backend pids of `application_name = tributary` running a statement
/// on the events table.
async fn running_on_events(db: &TestDb) -> Vec<i32> {
    let pg = db.pool.get().await.unwrap();
    pg.query(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND state = 'active' AND query ILIKE '%FROM events%'",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn assert_no_statement_within_a_second(db: &TestDb, what: &str) {
    tributary_testkit::eventually(Duration::from_secs(1), what, || async {
        running_on_events(db).await.is_empty().then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_or_abandoned_stops_its_statement() {
    let db = TestDb::new().await.unwrap();
    let s = start_with(&db, &["--auth=off".into(), "--max-call-duration=2s".into()]).await;
    let mut client = QueryServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap();
    // Another session holds the table: every read of it waits, on the server.
    let (locker, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let aggregate = || AggregateEventsRequest {
        filter: None,
        group_by: vec![GroupBy {
            key: Some(group_by::Key::Field(
                tributary_proto::v1::EventField::EventType as i32,
            )),
        }],
        measures: vec![Measure {
            aggregation: Aggregation::Count as i32,
            payload_path: String::new(),
        }],
        limit: 0,
    };
    // 1. The client's deadline (grpc-timeout 300 ms).
    // tonic's client enforces the same deadline and may give up first
    // (CANCELLED) or hear the server's DEADLINE_EXCEEDED: either way the
    // server must stop the statement.
    let mut request = tonic::Request::new(aggregate());
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client.aggregate_events(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_no_statement_within_a_second(&db, "the statement cancelled").await;

    // 2. The server's cap (2 s) when the client sets none.
    let started = Instant::now();
    let status = client
        .list_events(ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        started.elapsed() >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(4)
    );
    assert_no_statement_within_a_second(&db, "the statement cancelled").await;

    // 3. A client that goes away without a deadline.
    let mut gone = client.clone();
    let call = tokio::spawn(async move { gone.list_events(ListEventsRequest::default()).await });
    tributary_testkit::eventually(Duration::from_secs(2), "the statement running", || async {
        (!running_on_events(&db).await.is_empty()).then_some(())
    })
    .await
    .unwrap();
    call.abort();
    assert_no_statement_within_a_second(&db, "the abandoned statement cancelled").await;
    locker.batch_execute("ROLLBACK").await.unwrap();

    // The pool recovered: calls work again.
    let page = client
        .list_events(ListEventsRequest::default())
        .await
        .unwrap();
    assert!(page.into_inner().events.is_empty());
    s.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_in_every_filter_are_data_not_sql() {
    let db = TestDb::new().await.unwrap();
    crate::seed(&db).await;
    let s = start_with(&db, &["--auth=off".into()]).await;
    let mut client = QueryServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap();
    let hostile = [
        "'",
        "' OR '1'='1",
        "'; DROP TABLE events; --",
        "$1",
        "$$ $$",
        "\\",
        "\"",
        "%_",
        "\u{0}",
        "a\u{0}b",
        "~0~1",
        "/a~1b",
        "\u{202e}",
    ];
    for h in hostile {
        let filters = [
            EventFilter {
                event_types: vec![h.into()],
                ..Default::default()
            },
            EventFilter {
                source: h.into(),
                ..Default::default()
            },
            EventFilter {
                user_id: h.into(),
                ..Default::default()
            },
            EventFilter {
                session_id: h.into(),
                ..Default::default()
            },
            EventFilter {
                payload_matches: vec![PayloadMatch {
                    path: format!("/{h}"),
                    value: Some(prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(h.into())),
                    }),
                }],
                ..Default::default()
            },
        ];
        for filter in filters {
            let listed = client
                .list_events(ListEventsRequest {
                    filter: Some(filter.clone()),
                    page_size: 10,
                    page_token: String::new(),
                })
                .await;
            match listed {
                // Nothing matches such strings: an empty page.
                Ok(page) => assert!(page.into_inner().events.is_empty(), "{h:?} matched rows"),
                // NUL cannot be stored or compared in PostgreSQL text: refused
                // as the caller's input, never an internal error.
                Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{h:?}: {s:?}"),
            }
            let counted = client
                .aggregate_events(AggregateEventsRequest {
                    filter: Some(filter),
                    group_by: vec![GroupBy {
                        key: Some(group_by::Key::PayloadPath(format!("/{h}"))),
                    }],
                    measures: vec![Measure {
                        aggregation: Aggregation::Count as i32,
                        payload_path: String::new(),
                    }],
                    limit: 0,
                })
                .await;
            if let Err(s) = counted {
                assert_eq!(s.code(), Code::InvalidArgument, "{h:?}: {s:?}");
            }
        }
        let got = client
            .get_event(GetEventRequest { event_id: h.into() })
            .await
            .unwrap_err();
        assert!(
            matches!(got.code(), Code::InvalidArgument | Code::NotFound),
            "{h:?}: {got:?}"
        );
    }
    // The table is whole.
    let pg = db.pool.get().await.unwrap();
    let n: i64 = pg
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    s.token.cancel();
}
