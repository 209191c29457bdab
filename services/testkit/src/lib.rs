//! Test fixtures on real parts: a fresh PostgreSQL database per test (made in
//! the cluster `TRIBUTARY_TEST_DATABASE_URL` points at, migrated, dropped
//! afterwards) and a nisshi broker (memory engine) on a free port per test
//! (`TRIBUTARY_NISSHI_BIN`, default the cached build).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod pki;
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
            let port = broker_port()?;
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

    /// Waits until this broker's own process listens on its port. An open
    /// port alone proves nothing: another process may hold it (the broker
    /// then dies on its bind), and a test that took that one for its broker
    /// would lose it when the other test ends, hanging on a broker that is
    /// gone.
    async fn wait_listening(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if listens_on(self.child.id(), self.addr.port())
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }

    /// Freezes the broker (SIGSTOP): its port stays open and nothing answers.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .context("cannot run kill")?;
        anyhow::ensure!(status.success(), "kill -{name} failed: {status}");
        Ok(())
    }

    /// Kafka settings for this broker with per-test topic names.
    pub fn kafka_args(&self, suffix: &str) -> KafkaArgs {
        KafkaArgs {
            kafka_brokers: self.brokers(),
            kafka_options: Vec::new(),
            kafka_sasl_password: None,
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
                None,
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

/// A port for a broker: below the kernel's ephemeral range (32768 and up),
/// so no server of a test binding port 0 can be handed it meanwhile, never
/// one this process gave out before, and free now. (The deployment's fixed
/// ports are all outside 20000..30000.)
fn broker_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const BASE: u16 = 20_000;
    const SPAN: u16 = 10_000;
    // Each test process starts elsewhere in the range.
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let offset = (start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))) % SPAN;
        let port = BASE + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {BASE}..{}", BASE + SPAN)
}

/// Whether process `pid` holds a socket listening on TCP `port` (IPv4 or
/// IPv6), read from /proc: the listening socket's inode is among its fds.
fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9)
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
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

/// The telemetry of a test process: logging plus the OpenTelemetry layer
/// (as `main` installs them), exporting to an in-process trace sink, so tests
/// can assert on the spans the services really export.
pub struct Telemetry {
    guard: tributary_platform::telemetry::TelemetryGuard,
    spans: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Telemetry {
    /// Every span exported so far (after flushing), as the sink's JSON lines.
    pub async fn spans(&'static self) -> Vec<serde_json::Value> {
        let _ = tokio::task::spawn_blocking(|| self.guard.force_flush()).await;
        let bytes = self.spans.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("span buffer poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs telemetry once per test process and returns it. The sink and
/// the exporter live on a runtime of their own, because each `#[tokio::test]`
/// runtime ends with its test while the exporter must outlive them all.
/// `TRIBUTARY_TEST_LOG` sets the log filter (default `warn`).
pub fn init_telemetry() -> &'static Telemetry {
    static TELEMETRY: std::sync::OnceLock<Telemetry> = std::sync::OnceLock::new();
    TELEMETRY.get_or_init(|| {
        // Built on a thread of its own: this may be called from inside a
        // test's runtime, where blocking on another runtime is not allowed.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the test trace sink");
            let telemetry = runtime.block_on(async {
                let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let listener = tributary_trace_sink::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await
                    .expect("a port for the test trace sink");
                let addr = listener.local_addr().expect("the trace sink's address");
                let sink: tributary_trace_sink::Sink =
                    std::sync::Arc::new(std::sync::Mutex::new(Box::new(SharedBuf(spans.clone()))));
                tokio::spawn(tributary_trace_sink::serve(
                    listener,
                    sink,
                    std::future::pending(),
                ));
                let args = tributary_platform::config::TelemetryArgs {
                    log_filter: std::env::var("TRIBUTARY_TEST_LOG")
                        .unwrap_or_else(|_| "warn".into()),
                    log_format: tributary_platform::config::LogFormat::Text,
                    otlp_endpoint: Some(format!("http://{addr}")),
                };
                let guard =
                    tributary_platform::telemetry::init("test", &args).expect("test telemetry");
                Telemetry { guard, spans }
            });
            let _ = tx.send(telemetry);
            runtime.block_on(std::future::pending::<()>());
        });
        rx.recv().expect("test telemetry initialised")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listener_is_found_in_its_own_process_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("its address").port();
        assert!(super::listens_on(std::process::id(), port));
        // PID 1 is not this test.
        assert!(!super::listens_on(1, port));
        drop(listener);
        assert!(!super::listens_on(std::process::id(), port));
    }

    #[test]
    fn broker_ports_are_below_the_ephemeral_range_and_distinct() {
        let a = super::broker_port().expect("a port");
        let b = super::broker_port().expect("another port");
        assert_ne!(a, b);
        assert!((20_000..30_000).contains(&a) && (20_000..30_000).contains(&b));
    }

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
