//! Test fixtures on real parts: a fresh PostgreSQL database per test (made in
//! the cluster `TRIBUTARY_TEST_DATABASE_URL` points at, migrated, dropped
//! afterwards) and a nisshi broker (memory engine) on a free port per test
//! (`TRIBUTARY_NISSHI_BIN`, default the cached build).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tributary_kafka::KafkaArgs;
use tributary_store::{Pool, PoolConfig};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres:postgres@127.0.0.1:55432/postgres";

/// A database of its own for one test.
pub struct TestDb {
    pub url: String,
    pub pool: Pool,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates and migrates `tributary_test_<random>`.
    pub async fn new() -> anyhow::Result<Self> {
        let admin_url = std::env::var("TRIBUTARY_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let name = format!("tributary_test_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .with_context(|| {
                format!("cannot reach the test PostgreSQL at {admin_url} (set TRIBUTARY_TEST_DATABASE_URL; ./deploy.sh starts one)")
            })?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = with_database(&admin_url, &name);
        let pool = tributary_store::pool::build(&PoolConfig::new(&url))?;
        tributary_store::migrate::run(&pool).await?;
        Ok(Self {
            url,
            pool,
            name,
            admin_url,
        })
    }

    /// The URL of a database that does not exist (yet): for tests of what
    /// happens while PostgreSQL cannot serve.
    pub fn url_of_missing_database(&self) -> String {
        with_database(&self.admin_url, &format!("{}_missing", self.name))
    }

    /// Creates and migrates the database `url_of_missing_database` names.
    pub async fn create_missing(&self) -> anyhow::Result<()> {
        let (client, connection) =
            tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {}_missing", self.name))
            .await?;
        let pool = tributary_store::pool::build(&PoolConfig::new(self.url_of_missing_database()))?;
        tributary_store::migrate::run(&pool).await?;
        Ok(())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async cleanup on a
        // thread of its own and wait for it.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    for db in [name.clone(), format!("{name}_missing")] {
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                            .await;
                    }
                }
            });
        });
        let _ = handle.join();
    }
}

fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains('@') || url[..i].ends_with(|c: char| c.is_ascii_digit()) => {
            let (base, rest) = url.split_at(i);
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{base}/{db}{query}")
        }
        _ => format!("{url}/{db}"),
    }
}

/// A nisshi broker with the memory engine, on a free port, killed on drop.
pub struct TestBroker {
    pub addr: SocketAddr,
    child: Child,
}

impl TestBroker {
    pub async fn start() -> anyhow::Result<Self> {
        let bin = nisshi_bin();
        if !bin.exists() {
            bail!(
                "nisshi not found at {} (set TRIBUTARY_NISSHI_BIN; deploy.sh installs it)",
                bin.display()
            );
        }
        // The broker panics when its port is taken: retry on another port.
        for _ in 0..5 {
            let port = free_port()?;
            let url = format!("tcp://127.0.0.1:{port}");
            let child = Command::new(&bin)
                .args([
                    "broker",
                    "--cluster-id",
                    "tributary-test",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                    "--storage-engine",
                    "memory://nisshi/",
                    "--group-initial-rebalance-delay",
                    "100ms",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            let mut broker = Self {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
            };
            if broker.wait_listening(Duration::from_secs(20)).await {
                return Ok(broker);
            }
        }
        bail!("nisshi did not start listening")
    }

    async fn wait_listening(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }

    /// Kafka settings for this broker with per-test topic names.
    pub fn kafka_args(&self, suffix: &str) -> KafkaArgs {
        KafkaArgs {
            kafka_brokers: self.brokers(),
            kafka_options: Vec::new(),
            topic: format!("events.{suffix}"),
            dlq_topic: format!("events.{suffix}.dlq"),
        }
    }

    /// Creates the events and DLQ topics of `args`.
    pub async fn create_topics(&self, args: &KafkaArgs, partitions: i32) -> anyhow::Result<()> {
        let admin = tributary_kafka::admin::client(args)?;
        for topic in [&args.topic, &args.dlq_topic] {
            tributary_kafka::admin::ensure_topic(
                &admin,
                topic,
                partitions,
                1,
                Duration::from_secs(10),
            )
            .await?;
        }
        Ok(())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nisshi_bin() -> PathBuf {
    std::env::var_os("TRIBUTARY_NISSHI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/tributary/tools/nisshi/bin/nisshi")
        })
}

/// A port free at the time of asking.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A short random suffix for topic and group names.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Polls `check` until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn swaps_the_database_name() {
        assert_eq!(
            super::with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            super::with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
    }
}

/// Installs logging and the OpenTelemetry layer once per test process, as
/// `main` does, so spans carry real trace ids. `TRIBUTARY_TEST_LOG` sets the
/// filter (default `warn`).
pub fn init_telemetry() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let args = tributary_platform::config::TelemetryArgs {
            log_filter: std::env::var("TRIBUTARY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            log_format: tributary_platform::config::LogFormat::Text,
            otlp_endpoint: None,
        };
        // Another test framework may have installed a subscriber first.
        if let Ok(guard) = tributary_platform::telemetry::init("test", &args) {
            std::mem::forget(guard);
        }
    });
}
