//! What the admin handlers share: the clients, the pool, the lag monitor and
//! the mapping of their failures to statuses. `grpc.rs` hands each call to a
//! handler module; handlers use this module, never `grpc.rs`.

use std::sync::Arc;

use rdkafka::consumer::BaseConsumer;
use tonic::Status;
use tributary_kafka::{KafkaArgs, KafkaError};
use tributary_platform::status as pstatus;

use crate::lag::LagMonitor;

#[derive(Clone)]
pub struct AdminContext {
    pub kafka: KafkaArgs,
    pub metadata: Arc<BaseConsumer>,
    pub lag: Arc<LagMonitor>,
    pub pool: tributary_store::Pool,
    /// Re-publishes redriven dead letters.
    pub producer: tributary_kafka::producer::Producer,
    pub addrs: ServiceAddrs,
    /// How the pipeline-status health checks reach the other services.
    pub client_tls: tributary_platform::tls::ClientTlsArgs,
    pub lag_groups: Vec<String>,
    /// Outgoing webhooks (rules) may reach only addresses this allows.
    pub webhooks: tributary_platform::egress::EgressPolicy,
}

/// Where GetPipelineStatus checks the other services' health.
#[derive(Clone)]
pub struct ServiceAddrs {
    pub ingest: String,
    pub processor: String,
    pub query: String,
}

/// PostgreSQL failures: UNAVAILABLE when retrying may help, else INTERNAL.
pub fn db_status(context: &str, e: &tributary_store::StoreError) -> Status {
    if e.is_transient() {
        pstatus::unavailable(context, e)
    } else {
        pstatus::internal(context, e)
    }
}

pub fn kafka_status(context: &str, e: &KafkaError) -> Status {
    match e {
        KafkaError::MissingTopic { topic } => {
            Status::not_found(format!("no topic named {topic:?}"))
        }
        _ => pstatus::unavailable(context, e),
    }
}

/// Runs a blocking Kafka call off the async threads. When the broker has
/// not answered shortly before the call's deadline, the caller gets
/// UNAVAILABLE with RetryInfo (the broker is why) instead of its own timeout;
/// the blocking call finishes on its own, bounded by its Kafka timeouts.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
    context: &'static str,
) -> Result<T, Status> {
    tokio::select! {
        done = tokio::task::spawn_blocking(f) => done
            .map_err(|e| pstatus::internal(context, &e))?
            .map_err(|e| kafka_status(context, &e)),
        () = tributary_platform::deadline::until_answer_by() => Err(pstatus::unavailable_retry(
            format!("{context}: the broker did not answer before the call's deadline; retry"),
            std::time::Duration::from_secs(1),
        )),
    }
}
