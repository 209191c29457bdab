use std::net::SocketAddr;

use tributary_platform::config::{ShutdownArgs, TelemetryArgs};

/// The query service. Every flag also reads a TRIBUTARY_* variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-query", version, about)]
pub struct Config {
    /// gRPC listen address (QueryService, health, reflection, gRPC-Web).
    #[arg(long, env = "TRIBUTARY_GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (/metrics, /live, /ready).
    #[arg(long, env = "TRIBUTARY_HTTP_ADDR", default_value = "0.0.0.0:9603")]
    pub http_addr: SocketAddr,
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:55432/tributary",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Most PostgreSQL connections this replica holds.
    #[arg(long, env = "TRIBUTARY_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    /// The longest a call may run, whatever deadline its client set (the
    /// client's shorter deadline always applies); its PostgreSQL statement is
    /// cancelled when either passes or the client goes away.
    #[arg(long, env = "TRIBUTARY_MAX_CALL_DURATION", value_parser = tributary_platform::config::parse_duration, default_value = "30s")]
    pub max_call_duration: std::time::Duration,
    #[command(flatten)]
    pub edge: tributary_platform::service::EdgeArgs,
    #[command(flatten)]
    pub cors: tributary_platform::cors::CorsArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}
