//! Metric types shared by every service. Names follow the table in
//! shared/ARCHITECTURE.md; dashboards and alert rules rely on them.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Buckets for millisecond-scale RPCs and hops (0.5 ms … 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registering twice, or a bad name, is a programming error caught by the
/// first test that builds the service; surface it as an error, not a panic.
pub type MetricsResult<T> = Result<T, prometheus::Error>;

pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> MetricsResult<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> MetricsResult<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

pub fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> MetricsResult<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// `tributary_build_info{service,version} 1`.
pub fn register_build_info(registry: &Registry, service: &str) -> MetricsResult<()> {
    let g = gauge_vec(
        registry,
        "tributary_build_info",
        "Build information; always 1",
        &["service", "version"],
    )?;
    g.with_label_values(&[service, crate::VERSION]).set(1);
    Ok(())
}

/// RED metrics of a gRPC server, recorded by [`crate::grpc::TelemetryLayer`].
#[derive(Clone)]
pub struct GrpcServerMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl GrpcServerMetrics {
    pub fn register(registry: &Registry) -> MetricsResult<Self> {
        Ok(Self {
            requests: counter_vec(
                registry,
                "tributary_grpc_server_requests_total",
                "gRPC requests handled, by service, method and gRPC status code name",
                &["service", "method", "code"],
            )?,
            duration: histogram_vec(
                registry,
                "tributary_grpc_server_request_duration_seconds",
                "gRPC request duration until the last response byte, by service and method",
                &["service", "method"],
                LATENCY_BUCKETS,
            )?,
        })
    }

    /// Creates the series of a method at zero so dashboards see no gap.
    pub fn init_method(&self, service: &str, method: &str) {
        let _ = self.requests.with_label_values(&[service, method, "OK"]);
        let _ = self.duration.with_label_values(&[service, method]);
    }

    pub fn observe(&self, service: &str, method: &str, code: tonic::Code, seconds: f64) {
        self.requests
            .with_label_values(&[service, method, code_name(code)])
            .inc();
        self.duration
            .with_label_values(&[service, method])
            .observe(seconds);
    }
}

/// gRPC code names as the metric label (`OK`, `InvalidArgument`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Prometheus text exposition of everything in `registry`.
pub fn encode(registry: &Registry) -> String {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}
