//! What the query handlers share: the pool, the tail hub, the time zones
//! PostgreSQL confirmed, and how their failures become statuses. `grpc.rs`
//! hands calls to handler modules; handlers use this module, never `grpc.rs`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tonic::Status;
use tributary_platform::status as pstatus;
use tributary_store::{Pool, StoreError};

#[derive(Clone)]
pub struct QueryContext {
    pub pool: Pool,
    pub tail: crate::tail::TailHub,
    /// Time zones PostgreSQL confirmed, so each is checked once per process.
    pub known_zones: Arc<Mutex<HashSet<String>>>,
}

pub fn db_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "postgres.query",
        otel.name = %format!("SELECT events ({operation})"),
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "SELECT",
        db.collection.name = "events",
    )
}

/// PostgreSQL failures: UNAVAILABLE when retrying may help, else INTERNAL.
pub fn store_status(context: &str, e: &StoreError) -> Status {
    if e.is_transient() {
        pstatus::unavailable(context, e)
    } else {
        pstatus::internal(context, e)
    }
}
