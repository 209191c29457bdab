//! From the store's rows to the contract's messages (filters:
//! `tributary_platform::filter`).

use tributary_proto::json::json_to_struct;
use tributary_proto::v1::{Event, StoredEvent};
use tributary_store::events::EventRow;

pub fn stored_event(row: EventRow) -> StoredEvent {
    let payload = match row.payload {
        serde_json::Value::Object(map) => Some(json_to_struct(map)),
        _ => None,
    };
    StoredEvent {
        event: Some(Event {
            event_id: row.event_id,
            event_type: row.event_type,
            source: row.source,
            user_id: row.user_id,
            session_id: row.session_id,
            occurred_at: Some(row.occurred_at.into()),
            payload,
        }),
        received_at: Some(row.received_at.into()),
        persisted_at: Some(row.persisted_at.into()),
        partition: row.partition,
        offset: row.offset,
        trace_id: row.trace_id,
        schema_version: row.schema_version,
    }
}
