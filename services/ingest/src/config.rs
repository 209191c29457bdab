use std::net::SocketAddr;
use std::time::Duration;

use tributary_platform::config::{ShutdownArgs, TelemetryArgs, parse_bytes, parse_duration};

/// The ingest service. Every flag also reads a TRIBUTARY_* variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-ingest", version, about)]
pub struct Config {
    /// gRPC listen address (IngestService, health, reflection, gRPC-Web).
    #[arg(long, env = "TRIBUTARY_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (/metrics, /live, /ready).
    #[arg(long, env = "TRIBUTARY_HTTP_ADDR", default_value = "0.0.0.0:9601")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub kafka: tributary_kafka::KafkaArgs,
    /// PostgreSQL connection URL, for the event-type registry (schemas are
    /// cached: ingest keeps serving while PostgreSQL is briefly down).
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:55432/tributary",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Refuse events whose type is not registered (default: accept them
    /// unchecked; registered types are always checked against their schema).
    #[arg(long, env = "TRIBUTARY_REQUIRE_REGISTERED_TYPES")]
    pub require_registered_types: bool,
    /// Full reload of the cached schemas, besides the per-change NOTIFY.
    #[arg(long, env = "TRIBUTARY_SCHEMA_REFRESH", value_parser = parse_duration, default_value = "30s")]
    pub schema_refresh: Duration,
    /// Events being produced at once, over all requests; past it, requests
    /// are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "TRIBUTARY_MAX_IN_FLIGHT_EVENTS", default_value_t = 50_000)]
    pub max_in_flight_events: usize,
    /// Bytes of encoded events being produced at once, over all requests
    /// (the memory that bound holds); past it, RESOURCE_EXHAUSTED too.
    /// Whichever of the two bounds is reached first refuses.
    #[arg(long, env = "TRIBUTARY_MAX_IN_FLIGHT_BYTES", value_parser = parse_bytes, default_value = "256MiB")]
    pub max_in_flight_bytes: u64,
    /// When the oldest publish still waiting for the broker's acks has
    /// waited longer than this, new publishes are refused with
    /// RESOURCE_EXHAUSTED and RetryInfo until it is answered: more callers
    /// than the broker can serve get fast refusals instead of everyone's
    /// latency growing. 0 turns it off.
    #[arg(long, env = "TRIBUTARY_MAX_QUEUE_DELAY", value_parser = parse_duration, default_value = "500ms")]
    pub max_queue_delay: Duration,
    /// Unacknowledged events one PublishStream may have before ingest stops
    /// reading from it (backpressure).
    #[arg(long, env = "TRIBUTARY_STREAM_WINDOW", default_value_t = 2_000)]
    pub stream_window: usize,
    /// How long an event may wait for the broker's ack before UNAVAILABLE
    /// (sooner when the call's deadline is nearer, or the broker stops
    /// answering its once-a-second probe: publishes are then refused at once).
    #[arg(long, env = "TRIBUTARY_PRODUCE_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub produce_timeout: Duration,
    /// How long the producer waits to fill a batch.
    #[arg(long, env = "TRIBUTARY_PRODUCE_LINGER", value_parser = parse_duration, default_value = "2ms")]
    pub linger: Duration,
    #[command(flatten)]
    pub edge: tributary_platform::service::EdgeArgs,
    #[command(flatten)]
    pub cors: tributary_platform::cors::CorsArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}
