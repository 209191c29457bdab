//! What every Tributary service shares: configuration parsing, telemetry,
//! shutdown signals, the HTTP port (`/metrics`, `/live`, `/ready`), the gRPC
//! server with its health, reflection and RED/tracing layer, and the one
//! mapping from errors to `tonic::Status`.

pub mod admission;
pub mod auth;
pub mod config;
pub mod cors;
pub mod deadline;
pub mod egress;
pub mod filter;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod record;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod trace_context;

/// The version every binary reports (`tributary_build_info`, `--version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
