use std::net::SocketAddr;
use std::time::Duration;

use tributary_platform::config::{ShutdownArgs, TelemetryArgs, parse_duration};

/// The admin service. Every flag also reads a TRIBUTARY_* variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-admin", version, about)]
pub struct Config {
    /// gRPC listen address (AdminService, health, reflection, gRPC-Web).
    #[arg(long, env = "TRIBUTARY_GRPC_ADDR", default_value = "0.0.0.0:50053")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (/metrics with the lag gauges, /live, /ready).
    #[arg(long, env = "TRIBUTARY_HTTP_ADDR", default_value = "0.0.0.0:9604")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub kafka: tributary_kafka::KafkaArgs,
    /// PostgreSQL connection URL (dead letters, replay by time).
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:55432/tributary",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Consumer groups whose lag is exported (comma-separated). Every
    /// subscription's group (tributary.sub.<name>) is exported too, found by
    /// one query of the subscriptions table per refresh.
    #[arg(
        long,
        env = "TRIBUTARY_LAG_GROUPS",
        value_delimiter = ',',
        default_value = "tributary-processor"
    )]
    pub lag_groups: Vec<String>,
    /// How often the lag gauges are refreshed. Each refresh costs one
    /// committed-offsets request per group, one watermark request per
    /// partition, and one single-record fetch per lagging partition.
    #[arg(long, env = "TRIBUTARY_LAG_POLL_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub lag_poll_interval: Duration,
    /// How long events, dead letters and alerts are kept (`30d`, `36h`; `0`
    /// keeps everything). Older partitions of events are dropped whole, other
    /// old rows deleted in bounded batches (README, "Retention").
    #[arg(long, env = "TRIBUTARY_RETENTION", value_parser = tributary_platform::config::parse_retention, default_value = "30d")]
    pub retention: Duration,
    /// How often the store's maintenance runs (partitions created ahead,
    /// retention applied); also once at start. One replica works at a time.
    /// Retention deletes from a table for up to this long a round; a round
    /// that leaves rows past it is followed by the next after 1 s.
    #[arg(long, env = "TRIBUTARY_MAINTENANCE_INTERVAL", value_parser = parse_interval, default_value = "15m")]
    pub maintenance_interval: Duration,
    /// gRPC address of ingest, for GetPipelineStatus' health check.
    #[arg(long, env = "TRIBUTARY_INGEST_ADDR", default_value = "127.0.0.1:50051")]
    pub ingest_addr: String,
    /// gRPC address of the processor (health only).
    #[arg(
        long,
        env = "TRIBUTARY_PROCESSOR_ADDR",
        default_value = "127.0.0.1:50054"
    )]
    pub processor_addr: String,
    /// gRPC address of query.
    #[arg(long, env = "TRIBUTARY_QUERY_ADDR", default_value = "127.0.0.1:50052")]
    pub query_addr: String,
    /// The longest a call may run, whatever deadline its client set (the
    /// client's shorter deadline always applies); its PostgreSQL statement is
    /// cancelled when either passes or the client goes away.
    #[arg(long, env = "TRIBUTARY_MAX_CALL_DURATION", value_parser = tributary_platform::config::parse_duration, default_value = "30s")]
    pub max_call_duration: std::time::Duration,
    #[command(flatten)]
    pub webhooks: tributary_platform::egress::EgressArgs,
    #[command(flatten)]
    pub client_tls: tributary_platform::tls::ClientTlsArgs,
    #[command(flatten)]
    pub edge: tributary_platform::service::EdgeArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

/// A pause between rounds: at least a second.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?}: the interval is at least 1s"));
    }
    Ok(d)
}
