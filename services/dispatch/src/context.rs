//! What dispatch's push workers and pull streams share.

use std::time::Duration;

use serde_json::Value;
use tributary_platform::egress::EgressPolicy;
use tributary_store::events::{Candidate, EventFilter, NewEvent};

use crate::metrics::DispatchMetrics;

pub struct Shared {
    pub kafka: tributary_kafka::KafkaArgs,
    pub pool: tributary_store::Pool,
    pub schemas: tributary_store::schema_cache::SchemaCache,
    pub webhooks: EgressPolicy,
    pub metrics: DispatchMetrics,
    pub failing_after: Duration,
    /// Erased users' tombstones, refreshed every [`ERASURES_REFRESH`]:
    /// their records below the tombstone offsets are not delivered.
    pub tombstones: tributary_store::erasure::Tombstones,
}

/// How often dispatch reads new erasure tombstones. The window: for at most
/// this long after an erasure commits, a subscription reading the user's
/// older records (a seek, a lagging group) may still deliver them; from then
/// on they are skipped. Its dead letters are checked in PostgreSQL instead,
/// under the erasure lock, so none of the user's is ever written back.
pub const ERASURES_REFRESH: Duration = Duration::from_secs(2);

/// The event's payload when `filter` takes the event; `None` when it does
/// not (or the payload is not JSON, which a decoded event's always is).
pub fn matching(filter: &EventFilter, e: &NewEvent) -> Option<Value> {
    let payload: Value = serde_json::from_str(&e.payload_json).ok()?;
    let candidate = Candidate {
        event_type: &e.event_type,
        source: &e.source,
        user_id: &e.user_id,
        session_id: &e.session_id,
        occurred_at: e.occurred_at,
        payload: &payload,
    };
    filter.matches(&candidate).then_some(payload)
}
