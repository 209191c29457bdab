//! `tributary-bench`: benchmarks of a running local deployment. Every
//! scenario measures Tributary's path and a baseline in the same run (a raw
//! rdkafka producer, a raw COPY, the store's SQL without gRPC), so the ratio
//! holds on a noisy machine, and reports the CPU split between the bench
//! client, the services, the broker and PostgreSQL.

pub mod conn;
pub mod data;
pub mod e2e;
pub mod faults;
pub mod ingest;
pub mod layout;
pub mod layout_pipeline;
pub mod overload;
pub mod payload;
pub mod persist;
pub mod procs;
pub mod query;
pub mod security;
pub mod stats;
pub mod subscriptions;
pub mod topic;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Every scenario's name (an unknown one is refused, never skipped).
pub const SCENARIOS: [&str; 10] = [
    "payload",
    "ingest",
    "persist",
    "layout",
    "e2e",
    "query",
    "security",
    "subscriptions",
    "faults",
    "overload",
];

/// Benchmarks of the local deployment (`./deploy.sh up`): ingest, persist,
/// end to end, query and footprint, each against a baseline in the same run.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-bench", version, about)]
pub struct Options {
    /// Small counts and short runs: checks that every figure is produced and
    /// correct (test-system.sh runs this); its timings mean nothing.
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run, comma-separated: payload, ingest, persist, e2e,
    /// query, security, subscriptions (footprint is measured during e2e; persist loads its
    /// events with the ingest scenario, so it runs that too; payload runs in
    /// process and needs no deployment; security starts ingests of its own:
    /// what API keys and TLS cost per call; subscriptions: a push
    /// subscription's delivered events/s to a receiver in the bench against a
    /// raw consumer of the same range; layout: the processor's insert and
    /// GetEvent's read on the partitioned layout beside the layout before
    /// partitions, in two scratch databases, and with --baseline-processor
    /// persist and end to end through an ingest and two processors of its
    /// own, one per layout). Not in the default set: faults
    /// (kills and freezes each part of the deployment under load and checks
    /// that nothing acknowledged is lost or doubled; see BENCHMARKS.md) and
    /// overload (three times the callers that reach ingest's maximum, half
    /// with 4 MiB batches, plus slow stream readers, against an ingest of its
    /// own: refusals, recovery and each service's peak memory; FAULTS.md).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "payload,ingest,persist,layout,e2e,query,security,subscriptions",
        value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS)
    )]
    pub scenarios: Vec<String>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "bench-results.json")]
    pub out: PathBuf,
    /// The deployment's state directory (pid files, PostgreSQL data).
    #[arg(
        long,
        env = "TRIBUTARY_STATE_DIR",
        default_value = "/var/lib/tributary"
    )]
    pub state_dir: PathBuf,
    /// deploy.sh, to stop and start the processor.
    #[arg(long, default_value = "./deploy.sh")]
    pub deploy: PathBuf,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub ingest: String,
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    pub query: String,
    /// Admin (the faults scenario's readers call it).
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    pub admin: String,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The deployment's database (libpq's sslmode honoured).
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:55432/tributary",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// TLS to the deployment's gRPC ports (when they serve it).
    #[command(flatten)]
    pub tls: tributary_platform::tls::ClientTlsArgs,
    /// The API key every call carries (`authorization: Bearer …`) when the
    /// deployment checks keys; it needs ingest:write and query:read.
    #[arg(long, env = "TRIBUTARY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// librdkafka settings of the bench's own Kafka clients, as the services
    /// take them (security.protocol=SASL_SSL, sasl.mechanism, ...).
    #[arg(
        long = "kafka-option",
        env = "TRIBUTARY_KAFKA_OPTIONS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub kafka_options: Vec<String>,
    /// The SASL password of those clients.
    #[arg(long, env = "TRIBUTARY_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
    /// Concurrent clients (each its own connection).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Seconds per ingest path (full mode).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of the end-to-end runs (full mode).
    #[arg(long, default_value_t = 20)]
    pub e2e_seconds: u64,
    /// The end-to-end steady load as a fraction of the measured maximum
    /// (the target is stated at 0.5; lower values trace the latency curve).
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    pub e2e_load: f64,
    /// Stored rows of the query scenario, ascending (default 1000000,10000000;
    /// quick: 20000). Seeded into a separate database, tributary_bench.
    #[arg(long, value_delimiter = ',')]
    pub query_rows: Vec<u64>,
    /// Requests per measured query shape (default 1000; quick: 20).
    #[arg(long)]
    pub query_requests: Option<usize>,
    /// Directory of tributary-query (default: this binary's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// A tributary-processor built before the partitioned layout
    /// (scripts/build-baseline-processor.sh makes it): the layout scenario
    /// then also measures persist and end to end through it beside this
    /// build's processor (without it, that part is not run).
    #[arg(long, env = "TRIBUTARY_BENCH_BASELINE_PROCESSOR")]
    pub baseline_processor: Option<PathBuf>,
}

impl Options {
    pub fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }

    pub fn query_rows(&self) -> Vec<u64> {
        if !self.query_rows.is_empty() {
            let mut rows = self.query_rows.clone();
            rows.sort_unstable();
            rows.dedup();
            rows
        } else if self.quick {
            vec![20_000]
        } else {
            vec![1_000_000, 10_000_000]
        }
    }

    pub fn query_requests(&self) -> usize {
        self.query_requests
            .unwrap_or(if self.quick { 20 } else { 1000 })
    }

    /// The broker with the bench's client settings.
    pub fn kafka(&self) -> tributary_kafka::KafkaArgs {
        let mut kafka = tributary_kafka::KafkaArgs::for_brokers(&self.brokers);
        kafka.kafka_options = self.kafka_options.clone();
        kafka.kafka_sasl_password = self.kafka_sasl_password.clone();
        kafka
    }

    /// A connection to the deployment's ingest.
    pub async fn ingest_connection(&self) -> anyhow::Result<conn::Connection> {
        conn::connect(
            &self.ingest,
            &self.tls,
            &conn::WithKey::new(self.api_key.as_deref())?,
        )
        .await
    }

    /// A connection to the deployment's query service.
    pub async fn query_connection(&self) -> anyhow::Result<conn::Connection> {
        conn::connect(
            &self.query,
            &self.tls,
            &conn::WithKey::new(self.api_key.as_deref())?,
        )
        .await
    }

    pub fn deployment(&self) -> procs::Deployment {
        procs::Deployment {
            state_dir: self.state_dir.clone(),
        }
    }
}

/// Named pass/fail checks of the figures' correctness; any failure makes the
/// run exit non-zero.
#[derive(Debug, Default)]
pub struct Checks {
    items: Vec<Value>,
}

impl Checks {
    pub fn check(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        let (name, detail) = (name.into(), detail.into());
        println!(
            "{} {name}{}",
            if ok { "ok  " } else { "FAIL" },
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
        self.items
            .push(json!({ "name": name, "ok": ok, "detail": detail }));
    }

    pub fn all_ok(&self) -> bool {
        self.items.iter().all(|c| c["ok"] == json!(true))
    }

    pub fn to_json(&self) -> Value {
        Value::Array(self.items.clone())
    }
}

/// Runs `deploy.sh stop|start processor`.
pub async fn processor(options: &Options, action: &str) -> anyhow::Result<()> {
    deploy(options, action, "processor").await
}

/// Runs `deploy.sh stop|start PART`.
pub async fn deploy(options: &Options, action: &str, part: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new(&options.deploy)
        .args([action, part])
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {} {action} {part}", options.deploy.display()))?;
    if !status.success() {
        bail!("{} {action} {part}: {status}", options.deploy.display());
    }
    Ok(())
}

/// The directory of the services' binaries (`--bin-dir`, else the bench's).
pub fn bin_dir(options: &Options) -> anyhow::Result<PathBuf> {
    match &options.bin_dir {
        Some(d) => Ok(d.clone()),
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .context("the bench binary has no directory"),
    }
}

/// A free TCP port on loopback (for a service the bench starts).
pub fn free_port() -> anyhow::Result<u16> {
    // The kernel hands out ports from the ephemeral range (here 32768-60999),
    // which holds the deployment's gRPC ports: one taken while its service is
    // stopped (the bench stops the processor) would keep it from starting.
    const DEPLOYMENT: [u16; 6] = [50051, 50052, 50053, 50054, 50055, 55432];
    for _ in 0..50 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !DEPLOYMENT.contains(&port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port outside the deployment's")
}

/// A service binary the bench starts for itself: none of the bench's own
/// TRIBUTARY_* settings leak into it (the caller sets what it needs), logs
/// at warn, no trace export, killed when dropped.
pub fn service_command(binary: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TRIBUTARY_") {
            command.env_remove(&name);
        }
    }
    command
        .env("TRIBUTARY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// A service of the bench's own ([`service_command`]): its gRPC port on
/// `grpc`, its HTTP port free, over the deployment's broker and database
/// (the caller may set another TRIBUTARY_DATABASE_URL).
pub fn own_service(
    options: &Options,
    binary: &std::path::Path,
    grpc: u16,
) -> anyhow::Result<tokio::process::Command> {
    let kafka = options.kafka();
    let mut command = service_command(binary);
    command
        .env("TRIBUTARY_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("TRIBUTARY_HTTP_ADDR", format!("127.0.0.1:{}", free_port()?))
        .env("TRIBUTARY_KAFKA_BROKERS", &kafka.kafka_brokers)
        .env("TRIBUTARY_DATABASE_URL", &options.database_url);
    if !kafka.kafka_options.is_empty() {
        command.env("TRIBUTARY_KAFKA_OPTIONS", kafka.kafka_options.join(","));
    }
    if let Some(p) = &kafka.kafka_sasl_password {
        command.env("TRIBUTARY_KAFKA_SASL_PASSWORD", p);
    }
    Ok(command)
}

/// A PostgreSQL connection (the connection task runs in the background).
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tributary_store::tls::Connect::from_url(url)
        .with_context(|| format!("the database URL {}", redact(url)))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    Ok(client)
}

/// The URL with another database name.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > base.find("//").map_or(0, |j| j + 1) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Polls `f` every `every` until it answers `Some`, at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// The machine the figures were measured on.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_gib": stats::round3(mem_kib / 1024.0 / 1024.0),
        "kernel": kernel.trim(),
    })
}

/// A number in (0, 1].
fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not in (0, 1]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_swap_the_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/tributary", "tributary_bench"),
            "postgres://u:p@h:5432/tributary_bench"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
