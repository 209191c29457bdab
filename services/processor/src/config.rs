use std::net::SocketAddr;
use std::time::Duration;

use tributary_platform::config::{ShutdownArgs, TelemetryArgs, parse_duration};

/// The processor. Every flag also reads a TRIBUTARY_* variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-processor", version, about)]
pub struct Config {
    /// gRPC listen address (health and reflection).
    #[arg(long, env = "TRIBUTARY_GRPC_ADDR", default_value = "0.0.0.0:50054")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (/metrics, /live, /ready).
    #[arg(long, env = "TRIBUTARY_HTTP_ADDR", default_value = "0.0.0.0:9602")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub kafka: tributary_kafka::KafkaArgs,
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:55432/tributary",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Consumer group id.
    #[arg(
        long,
        env = "TRIBUTARY_CONSUMER_GROUP",
        default_value = "tributary-processor"
    )]
    pub group: String,
    /// Most records stored in one transaction.
    #[arg(long, env = "TRIBUTARY_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub batch_size: u32,
    /// Longest a batch waits to fill after its first record.
    #[arg(long, env = "TRIBUTARY_BATCH_TIMEOUT", value_parser = parse_duration, default_value = "50ms")]
    pub batch_timeout: Duration,
    /// Batches stored at once, each in its own transaction (offsets still
    /// advance in order: only past batches that are all committed).
    #[arg(long, env = "TRIBUTARY_STORE_CONCURRENCY", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub store_concurrency: u32,
    /// Longest pause between retries while PostgreSQL (or the DLQ) is down.
    #[arg(long, env = "TRIBUTARY_MAX_BACKOFF", value_parser = parse_duration, default_value = "5s")]
    pub max_backoff: Duration,
    #[command(flatten)]
    pub webhooks: tributary_platform::egress::EgressArgs,
    #[command(flatten)]
    pub edge: tributary_platform::service::EdgeArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}
