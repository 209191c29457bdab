//! Turns a consumed record into a row to store, or a dead letter with why.
//!
//! Anything can write to the topic, so the processor re-checks what ingest
//! checked: a record that fails here would fail again on every redelivery
//! (poison), and goes to the dead-letter topic and table instead of blocking
//! its partition.

use std::time::SystemTime;

use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::message::{Headers as _, OwnedMessage};
use tributary_proto::v1::EventEnvelope;
use tributary_proto::validate::{self, MAX_PAYLOAD_BYTES};
use tributary_store::events::{NewDeadLetter, NewEvent};
use tributary_store::schema_cache::SchemaCache;

/// The envelope versions this processor understands.
const MAX_ENVELOPE_VERSION: u32 = 1;

pub enum Decoded {
    Event(Box<DecodedEvent>),
    Poison(Box<NewDeadLetter>),
}

pub struct DecodedEvent {
    pub row: NewEvent,
    /// The producer's trace context, for the batch span's link.
    pub parent: Option<opentelemetry::trace::SpanContext>,
}

pub fn decode(message: &OwnedMessage, schemas: &SchemaCache) -> Decoded {
    match decode_event(message, schemas) {
        Ok(event) => Decoded::Event(Box::new(event)),
        Err(rejection) => Decoded::Poison(Box::new(dead_letter(message, rejection))),
    }
}

/// Why a record cannot be stored, and what of it could be read.
pub struct Rejection {
    pub reason: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
}

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            event_id: None,
            event_type: None,
        }
    }
}

fn decode_event(message: &OwnedMessage, schemas: &SchemaCache) -> Result<DecodedEvent, Rejection> {
    let value = message
        .payload()
        .ok_or_else(|| Rejection::new("record has no value"))?;
    let envelope = EventEnvelope::decode(value)
        .map_err(|e| Rejection::new(format!("value is not a tributary.v1.EventEnvelope: {e}")))?;
    let mut event = envelope
        .event
        .ok_or_else(|| Rejection::new("envelope has no event"))?;
    let identify = |reason: String, event: &tributary_proto::v1::Event| Rejection {
        reason,
        event_id: Some(event.event_id.clone()).filter(|s| !s.is_empty()),
        event_type: Some(event.event_type.clone()).filter(|s| !s.is_empty()),
    };
    if envelope.envelope_version > MAX_ENVELOPE_VERSION {
        return Err(identify(
            format!(
                "envelope version {} is newer than this processor understands ({MAX_ENVELOPE_VERSION})",
                envelope.envelope_version
            ),
            &event,
        ));
    }
    if event.event_id.is_empty() {
        return Err(identify(
            "event_id is required in the envelope".into(),
            &event,
        ));
    }
    let received_at = envelope
        .received_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or_else(SystemTime::now);
    if event.occurred_at.is_none() {
        event.occurred_at = Some(prost_types::Timestamp::from(received_at));
    }
    // The payload travels as JSON text; check the event's other fields with
    // the same rules ingest applies, judged at the time ingest received it.
    event.payload = None;
    let valid = validate::validate_event(&event, "event", received_at)
        .map_err(|violations| identify(tributary_platform::status::summary(&violations), &event))?;
    let payload = check_payload(&envelope.payload_json).map_err(|why| identify(why, &event))?;
    let occurred_at = SystemTime::try_from(valid.occurred_at)
        .map_err(|e| identify(format!("event.occurred_at: {e}"), &event))?;

    let mut ingest = envelope.ingest.unwrap_or_default();
    // Ingest checked the payload against the version it recorded. A record
    // that bypassed ingest (version 0) of a registered type is checked here.
    if ingest.schema_version == 0
        && let Some(schema) = schemas.get(&event.event_type)
    {
        let failures = tributary_store::event_types::violations(&schema.validator, &payload);
        if let Some((pointer, why)) = failures.into_iter().next() {
            return Err(identify(
                format!(
                    "event.payload: at {pointer}: {why} (schema {} version {})",
                    event.event_type, schema.version
                ),
                &event,
            ));
        }
        ingest.schema_version = schema.version;
    }
    let parent = parent_context(message);
    Ok(DecodedEvent {
        row: NewEvent {
            event_id: event.event_id,
            event_type: event.event_type,
            source: event.source,
            user_id: event.user_id,
            session_id: event.session_id,
            occurred_at,
            received_at,
            payload_json: envelope.payload_json,
            partition: message.partition(),
            offset: message.offset(),
            trace_id: ingest.trace_id,
            schema_version: ingest.schema_version,
        },
        parent,
    })
}

fn check_payload(text: &str) -> Result<serde_json::Value, String> {
    if text.len() > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "event.payload: is {} bytes as JSON; the limit is {MAX_PAYLOAD_BYTES}",
            text.len()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("event.payload: is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("event.payload: must be a JSON object".into());
    }
    if contains_nul(&value) {
        return Err("event.payload: contains a NUL character".into());
    }
    Ok(value)
}

/// PostgreSQL's jsonb cannot hold U+0000 in keys or strings.
fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(contains_nul),
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

fn parent_context(message: &OwnedMessage) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::TraceContextExt as _;
    let headers = message.headers()?;
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|h| Some((h.key, std::str::from_utf8(h.value?).ok()?)))
        .collect();
    let cx = tributary_platform::trace_context::extract_from_pairs(pairs);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

pub fn dead_letter(message: &OwnedMessage, rejection: Rejection) -> NewDeadLetter {
    let headers = message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    NewDeadLetter {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
        reason: rejection.reason,
        event_id: rejection.event_id,
        event_type: rejection.event_type,
    }
}

/// Keeps a rejection built elsewhere (the database refused a row) in the same
/// shape as decode rejections.
pub fn rejection_for(row: &NewEvent, reason: String) -> Rejection {
    Rejection {
        reason,
        event_id: Some(row.event_id.clone()),
        event_type: Some(row.event_type.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn record(value: Option<Vec<u8>>) -> OwnedMessage {
        OwnedMessage::new(
            value,
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            3,
            42,
            None,
        )
    }

    fn envelope(event_type: &str, payload_json: &str) -> Vec<u8> {
        EventEnvelope {
            envelope_version: 1,
            event: Some(tributary_proto::v1::Event {
                event_id: "e1".into(),
                event_type: event_type.into(),
                ..Default::default()
            }),
            payload_json: payload_json.into(),
            received_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            ingest: None,
        }
        .encode_to_vec()
    }

    fn decode_plain(m: &OwnedMessage) -> Decoded {
        decode(m, &SchemaCache::default())
    }

    fn reason(d: Decoded) -> String {
        match d {
            Decoded::Event(_) => "stored".into(),
            Decoded::Poison(p) => p.reason,
        }
    }

    #[test]
    fn a_good_envelope_becomes_a_row_with_its_kafka_position() {
        match decode_plain(&record(Some(envelope("page.view", r#"{"a":1}"#)))) {
            Decoded::Event(e) => {
                assert_eq!((e.row.partition, e.row.offset), (3, 42));
                assert_eq!(e.row.payload_json, r#"{"a":1}"#);
            }
            Decoded::Poison(p) => panic!("poisoned: {}", p.reason),
        }
    }

    #[test]
    fn poison_is_named() {
        assert_eq!(reason(decode_plain(&record(None))), "record has no value");
        assert!(
            reason(decode_plain(&record(Some(b"\xff\xff garbage".to_vec()))))
                .starts_with("value is not a tributary.v1.EventEnvelope")
        );
        assert!(
            reason(decode_plain(&record(Some(envelope("Bad", "{}"))))).contains("event.event_type")
        );
        assert_eq!(
            reason(decode_plain(&record(Some(envelope("a", "[1]"))))),
            "event.payload: must be a JSON object"
        );
        assert_eq!(
            reason(decode_plain(&record(Some(envelope(
                "a",
                r#"{"x":"\u0000"}"#
            ))))),
            "event.payload: contains a NUL character"
        );
    }
}
