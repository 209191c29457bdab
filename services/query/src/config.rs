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
        hide_default_value = true
    )]
    pub database_url: String,
    /// Most PostgreSQL connections this replica holds.
    #[arg(long, env = "TRIBUTARY_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}
