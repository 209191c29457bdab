use std::net::SocketAddr;
use std::time::Duration;

use tributary_platform::config::{ShutdownArgs, TelemetryArgs, parse_duration};

/// Dispatch: delivers subscriptions (push webhooks, and Pull streams). Every flag also reads a
/// TRIBUTARY_* variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-dispatch", version, about)]
pub struct Config {
    /// gRPC listen address (health and reflection).
    #[arg(long, env = "TRIBUTARY_GRPC_ADDR", default_value = "0.0.0.0:50055")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (/metrics, /live, /ready).
    #[arg(long, env = "TRIBUTARY_HTTP_ADDR", default_value = "0.0.0.0:9605")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub kafka: tributary_kafka::KafkaArgs,
    /// PostgreSQL connection URL (the subscriptions, the event-type schemas).
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:55432/tributary",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// How often the subscriptions table is read for changes (one small
    /// query: the names and generations).
    #[arg(long, env = "TRIBUTARY_POLL_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub poll_interval: Duration,
    /// A subscription whose every attempt has failed for this long turns
    /// FAILING (it keeps retrying, and turns ACTIVE by itself on success).
    #[arg(long, env = "TRIBUTARY_FAILING_AFTER", value_parser = parse_duration, default_value = "10m")]
    pub failing_after: Duration,
    #[command(flatten)]
    pub webhooks: tributary_platform::egress::EgressArgs,
    #[command(flatten)]
    pub edge: tributary_platform::service::EdgeArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}
