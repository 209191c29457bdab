//! Turns a consumed record into an event (a row to store, or to deliver), or
//! a dead letter with why: the processor and dispatch judge records alike.
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
    /// The event's user ('' for none), when the envelope decoded: an
    /// erasure finds the user's dead letters by it.
    pub user_id: Option<String>,
}

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            event_id: None,
            event_type: None,
            user_id: None,
        }
    }
}

/// The user of a record value (an event envelope), '' for an event without
/// one; `None` when the value is not an envelope with an event. What an
/// erasure reads from dead letters stored before they recorded their user.
pub fn user_id_of(value: &[u8]) -> Option<String> {
    EventEnvelope::decode(value).ok()?.event.map(|e| e.user_id)
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
        user_id: Some(event.user_id.clone()),
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
        .map_err(|violations| identify(crate::status::summary(&violations), &event))?;
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
    let cx = crate::trace_context::extract_from_pairs(pairs);
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
        subscription: String::new(),
        user_id: rejection.user_id,
    }
}

/// Keeps a rejection built elsewhere (the database refused a row) in the same
/// shape as decode rejections.
pub fn rejection_for(row: &NewEvent, reason: String) -> Rejection {
    Rejection {
        reason,
        event_id: Some(row.event_id.clone()),
        event_type: Some(row.event_type.clone()),
        user_id: Some(row.user_id.clone()),
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

    #[test]
    fn dead_letters_name_their_user_when_the_envelope_decodes() {
        let mut value = EventEnvelope::decode(envelope("Bad", "{}").as_slice()).unwrap();
        if let Some(e) = value.event.as_mut() {
            e.user_id = "u-7".into();
        }
        let bytes = value.encode_to_vec();
        match decode_plain(&record(Some(bytes.clone()))) {
            Decoded::Poison(p) => assert_eq!(p.user_id.as_deref(), Some("u-7")),
            Decoded::Event(_) => panic!("an invalid event type was stored"),
        }
        match decode_plain(&record(Some(b"\xff\xff garbage".to_vec()))) {
            Decoded::Poison(p) => assert_eq!(p.user_id, None),
            Decoded::Event(_) => panic!("garbage was stored"),
        }
        assert_eq!(user_id_of(&bytes).as_deref(), Some("u-7"));
        assert_eq!(user_id_of(&envelope("a", "{}")).as_deref(), Some(""));
        assert_eq!(user_id_of(b"\xff\xff garbage"), None);
    }

    #[test]
    fn a_received_at_near_the_end_of_time_is_judged_not_a_panic() {
        // Found by the properties below: judging occurred_at against
        // received_at + 1 h overflowed SystemTime and panicked, so one record
        // written to the topic by anyone stopped the processor on every
        // redelivery.
        let mut value = EventEnvelope::decode(envelope("a", "{}").as_slice()).unwrap();
        value.received_at = Some(prost_types::Timestamp {
            seconds: i64::MAX - 3599,
            nanos: 0,
        });
        match decode_plain(&record(Some(value.encode_to_vec()))) {
            Decoded::Event(e) => assert_eq!(
                e.row.received_at,
                SystemTime::try_from(value.received_at.unwrap()).unwrap()
            ),
            Decoded::Poison(p) => panic!("poisoned: {}", p.reason),
        }
    }

    mod properties {
        use std::time::{Duration, UNIX_EPOCH};

        use proptest::collection::vec;
        use proptest::option;
        use proptest::prelude::*;
        use prost_types::Timestamp;
        use rdkafka::message::{Header, OwnedHeaders};
        use serde_json::Value as Json;
        use tributary_proto::testing::{
            is_event_id, is_event_type, is_text_field, nanos_since_epoch as nanos, seconds,
        };
        use tributary_proto::v1::{Event, IngestMetadata};

        use super::*;

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "[a-z0-9_.:-]{0,12}",
                2 => any::<String>(),
                2 => vec(any::<char>(), 0..24).prop_map(String::from_iter),
                1 => ("[a-z]{0,4}", "[a-z]{0,4}").prop_map(|(a, b)| format!("{a}\0{b}")),
                1 => (250usize..=260, prop::sample::select(vec!['a', 'é', '😀']))
                    .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
                1 => (0usize..100_000).prop_map(|n| "x".repeat(n)),
            ]
        }

        /// Mostly what a client sends, else anything.
        fn field_text() -> impl Strategy<Value = String> {
            prop_oneof![8 => "[a-z0-9_.:-]{0,12}", 3 => "\\PC{0,40}", 2 => text()]
        }

        fn event_type() -> impl Strategy<Value = String> {
            prop_oneof![16 => "[a-z][a-z0-9_.-]{0,64}", 1 => text()]
        }

        fn event_id() -> impl Strategy<Value = String> {
            prop_oneof![1 => Just(String::new()), 16 => "[A-Za-z0-9._:-]{1,129}", 1 => text()]
        }

        fn timestamp() -> impl Strategy<Value = Timestamp> {
            let nanos = prop_oneof![
                4 => 0..1_000_000_000i32,
                1 => prop::sample::select(vec![999_999_999, 1_000_000_000, -1, i32::MIN, i32::MAX]),
            ];
            (seconds(), nanos).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })
        }

        /// Any JSON, NUL characters included.
        fn json() -> impl Strategy<Value = Json> {
            let leaf = prop_oneof![
                Just(Json::Null),
                any::<bool>().prop_map(Json::Bool),
                any::<i64>().prop_map(Json::from),
                any::<f64>().prop_map(Json::from),
                prop_oneof![
                    4 => "[a-z ]{0,8}",
                    1 => vec(any::<char>(), 0..8).prop_map(String::from_iter)
                ]
                .prop_map(Json::String),
            ];
            leaf.prop_recursive(5, 32, 4, |inner| {
                prop_oneof![
                    vec(inner.clone(), 0..4).prop_map(Json::Array),
                    vec(
                        (
                            prop_oneof![12 => "[a-c]{0,2}", 1 => Just("k\0".to_owned())],
                            inner
                        ),
                        0..4
                    )
                    .prop_map(|fields| Json::Object(fields.into_iter().collect())),
                ]
            })
        }

        /// The payload text: JSON (of an object mostly), anything, around
        /// the 64 KiB limit, around serde_json's nesting limit.
        fn payload_json() -> impl Strategy<Value = String> {
            prop_oneof![
                10 => vec(("[a-c]{1,2}", json()), 0..4)
                    .prop_map(|fields| Json::Object(fields.into_iter().collect()).to_string()),
                2 => json().prop_map(|j| j.to_string()),
                2 => text(),
                1 => prop::sample::select(vec!["{}", "{\"a\":1e400}", "{\"a\":\"\\ud800\"}", "{\"a\":\"\\u0000\"}", "{\"a\":1,\"a\":2}", " {} ", "{}{}", ""])
                    .prop_map(str::to_owned),
                1 => (MAX_PAYLOAD_BYTES - 14..=MAX_PAYLOAD_BYTES - 8)
                    .prop_map(|n| format!("{{\"blob\":\"{}\"}}", "x".repeat(n))),
                1 => (120usize..136).prop_map(|n| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n))),
            ]
        }

        fn event() -> impl Strategy<Value = Event> {
            (
                event_id(),
                event_type(),
                field_text(),
                field_text(),
                field_text(),
                prop_oneof![3 => Just(None), 1 => timestamp().prop_map(Some)],
            )
                .prop_map(
                    |(event_id, event_type, source, user_id, session_id, occurred_at)| Event {
                        event_id,
                        event_type,
                        source,
                        user_id,
                        session_id,
                        occurred_at,
                        // The envelope carries the payload as JSON text; anything
                        // here is ignored.
                        payload: None,
                    },
                )
        }

        fn envelope() -> impl Strategy<Value = EventEnvelope> {
            let ingest = (text(), "[0-9a-f]{32}|.{0,8}", any::<i32>(), any::<i64>()).prop_map(
                |(instance, trace_id, schema_version, redriven)| IngestMetadata {
                    instance,
                    trace_id,
                    schema_version,
                    redriven_from_dead_letter: redriven,
                },
            );
            (
                prop_oneof![12 => Just(1u32), 1 => Just(0u32), 1 => Just(2u32), 1 => any::<u32>()],
                option::weighted(0.95, event()),
                payload_json(),
                option::weighted(0.8, timestamp()),
                option::of(ingest),
            )
                .prop_map(
                    |(envelope_version, event, payload_json, received_at, ingest)| EventEnvelope {
                        envelope_version,
                        event,
                        payload_json,
                        received_at,
                        ingest,
                    },
                )
        }

        /// A record's value: anything, an envelope, an envelope with bytes
        /// changed, cut or added.
        fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
            let edited = (envelope(), vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4)).prop_map(
                |(envelope, edits)| {
                    let mut bytes = envelope.encode_to_vec();
                    for (at, b, how) in edits {
                        let len = bytes.len();
                        match how {
                            0 if len > 0 => bytes[at % len] = b,
                            1 => bytes.truncate(at % (len + 1)),
                            _ => bytes.insert(at % (len + 1), b),
                        }
                    }
                    bytes
                },
            );
            option::weighted(
                0.97,
                prop_oneof![
                    1 => vec(any::<u8>(), 0..128),
                    8 => envelope().prop_map(|e| e.encode_to_vec()),
                    2 => edited,
                ],
            )
        }

        /// Record headers: trace context (well-formed or not) and anything.
        fn headers() -> impl Strategy<Value = Vec<(String, Option<Vec<u8>>)>> {
            let key = prop_oneof![
                Just("traceparent".to_owned()),
                Just("TraceParent".to_owned()),
                Just("tracestate".to_owned()),
                any::<String>(),
            ];
            let value = prop_oneof![
                "00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]".prop_map(String::into_bytes),
                "[ -~]{0,64}".prop_map(String::into_bytes),
                vec(any::<u8>(), 0..64),
            ];
            vec((key, option::of(value)), 0..4)
        }

        fn record_with(
            value: Option<Vec<u8>>,
            key: Option<Vec<u8>>,
            partition: i32,
            offset: i64,
            headers: &[(String, Option<Vec<u8>>)],
        ) -> OwnedMessage {
            let headers = (!headers.is_empty()).then(|| {
                headers
                    .iter()
                    .fold(OwnedHeaders::new(), |all, (key, value)| {
                        all.insert(Header {
                            key,
                            value: value.as_deref(),
                        })
                    })
            });
            OwnedMessage::new(
                value,
                key,
                "tributary.events".into(),
                rdkafka::Timestamp::NotAvailable,
                partition,
                offset,
                headers,
            )
        }

        // The oracles (README's rules over chars and i128 nanoseconds) are
        // tributary_proto::testing's; these two are the processor's own.

        fn has_nul(j: &Json) -> bool {
            match j {
                Json::String(s) => s.contains('\0'),
                Json::Array(a) => a.iter().any(has_nul),
                Json::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
                _ => false,
            }
        }

        /// A JSON object of at most 64 KiB without NUL.
        fn is_payload(text: &str) -> bool {
            text.len() <= MAX_PAYLOAD_BYTES
                && serde_json::from_str::<Json>(text).is_ok_and(|j| j.is_object() && !has_nul(&j))
        }

        /// Whether README's rules take the envelope's event, received at
        /// `received_at`.
        fn storable(envelope: &EventEnvelope, received_at: SystemTime) -> bool {
            let Some(event) = &envelope.event else {
                return false;
            };
            let occurred_at = event
                .occurred_at
                .unwrap_or_else(|| Timestamp::from(received_at));
            let at =
                i128::from(occurred_at.seconds) * 1_000_000_000 + i128::from(occurred_at.nanos);
            envelope.envelope_version <= 1
                && is_event_id(&event.event_id)
                && is_event_type(&event.event_type)
                && [&event.source, &event.user_id, &event.session_id]
                    .into_iter()
                    .all(|t| is_text_field(t))
                && (0..1_000_000_000).contains(&occurred_at.nanos)
                && occurred_at.seconds >= 0
                && at <= nanos(received_at) + 3_600 * 1_000_000_000
                && is_payload(&envelope.payload_json)
        }

        /// What a record must become: `Some(true)` stored, `Some(false)`
        /// dead-lettered, `None` either (received_at is the clock's, which
        /// moved while deciding).
        fn verdict(value: Option<&[u8]>, before: SystemTime, after: SystemTime) -> Option<bool> {
            let Some(envelope) = value.and_then(|v| EventEnvelope::decode(v).ok()) else {
                return Some(false);
            };
            match envelope
                .received_at
                .and_then(|t| SystemTime::try_from(t).ok())
            {
                Some(at) => Some(storable(&envelope, at)),
                None => {
                    let (early, late) = (storable(&envelope, before), storable(&envelope, after));
                    (early == late).then_some(early)
                }
            }
        }

        fn check_row(
            row: &NewEvent,
            value: &[u8],
            partition: i32,
            offset: i64,
            before: SystemTime,
            after: SystemTime,
        ) -> Result<(), TestCaseError> {
            let envelope = EventEnvelope::decode(value);
            prop_assert!(envelope.is_ok(), "stored an undecodable record");
            let envelope = envelope.unwrap_or_default();
            let event = envelope.event.clone().unwrap_or_default();
            prop_assert!(is_event_id(&row.event_id), "event_id {:?}", row.event_id);
            prop_assert!(
                is_event_type(&row.event_type),
                "event_type {:?}",
                row.event_type
            );
            for text in [&row.source, &row.user_id, &row.session_id] {
                prop_assert!(is_text_field(text), "{:?}", text);
            }
            prop_assert_eq!(
                (
                    &row.event_id,
                    &row.event_type,
                    &row.source,
                    &row.user_id,
                    &row.session_id
                ),
                (
                    &event.event_id,
                    &event.event_type,
                    &event.source,
                    &event.user_id,
                    &event.session_id
                )
            );
            prop_assert!(
                is_payload(&row.payload_json),
                "payload {:?}",
                row.payload_json
            );
            prop_assert_eq!(&row.payload_json, &envelope.payload_json);
            match envelope
                .received_at
                .and_then(|t| SystemTime::try_from(t).ok())
            {
                Some(at) => prop_assert_eq!(row.received_at, at),
                None => prop_assert!((before..=after).contains(&row.received_at)),
            }
            let stated = event
                .occurred_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or(row.received_at);
            let occurred = nanos(row.occurred_at);
            prop_assert!(occurred >= 0, "stored before 1970: {:?}", row.occurred_at);
            prop_assert_eq!(occurred % 1_000, 0, "not in microseconds");
            prop_assert!(
                (0..1_000).contains(&(nanos(stated) - occurred)),
                "{:?} is not {:?} in microseconds",
                row.occurred_at,
                stated
            );
            prop_assert!(
                occurred <= nanos(row.received_at) + 3_600 * 1_000_000_000,
                "more than 1 h after received_at"
            );
            prop_assert_eq!((row.partition, row.offset), (partition, offset));
            let ingest = envelope.ingest.unwrap_or_default();
            prop_assert_eq!(&row.trace_id, &ingest.trace_id);
            prop_assert_eq!(row.schema_version, ingest.schema_version);
            Ok(())
        }

        proptest! {
            #![proptest_config(tributary_proto::testing::config())]

            /// Any record: stored as a row README's rules allow (the
            /// envelope's event, payload text as it came, occurred_at in
            /// microseconds, at most 1 h after received_at) exactly when the
            /// rules allow it, else dead-lettered with a reason and the record
            /// kept as it came.
            #[test]
            fn a_record_is_stored_valid_or_dead_lettered(
                value in value(),
                key in option::of(vec(any::<u8>(), 0..8)),
                partition in any::<i32>(),
                offset in any::<i64>(),
                headers in headers(),
            ) {
                tracing_propagator();
                let message = record_with(value.clone(), key.clone(), partition, offset, &headers);
                let before = SystemTime::now();
                let decoded = decode(&message, &SchemaCache::default());
                let after = SystemTime::now();
                let expected = verdict(value.as_deref(), before, after);
                match decoded {
                    Decoded::Event(e) => {
                        prop_assert_ne!(expected, Some(false), "stored; the rules refuse it");
                        check_row(&e.row, value.as_deref().unwrap_or_default(), partition, offset, before, after)?;
                    }
                    Decoded::Poison(p) => {
                        prop_assert_ne!(expected, Some(true), "dead-lettered: {}", p.reason);
                        prop_assert!(!p.reason.is_empty());
                        prop_assert_eq!(&p.value, &value);
                        prop_assert_eq!(&p.key, &key);
                        prop_assert_eq!(
                            (p.topic.as_str(), p.partition, p.offset),
                            ("tributary.events", partition, offset)
                        );
                        prop_assert_eq!(p.headers.len(), headers.len());
                        prop_assert!(p.event_id.as_ref().is_none_or(|id| !id.is_empty()));
                        prop_assert!(p.event_type.as_ref().is_none_or(|t| !t.is_empty()));
                    }
                }
            }
        }

        /// The W3C propagator the processor runs with, so `traceparent`
        /// headers are parsed as in production.
        fn tracing_propagator() {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                let _provider = crate::telemetry::tracer_provider("processor", None);
            });
        }

        proptest! {
            #![proptest_config(tributary_proto::testing::config())]

            /// What ingest accepts, the processor stores as it was accepted:
            /// any event valid at any receipt time (from 1970 to the end of
            /// `SystemTime`), in the envelope ingest writes.
            #[test]
            fn what_ingest_accepts_is_stored(
                received in prop_oneof![
                    Just(0u64),
                    0..u64::try_from(i64::MAX).unwrap_or(u64::MAX),
                    u64::try_from(i64::MAX - 8_000).unwrap_or(0)..=u64::try_from(i64::MAX).unwrap_or(0),
                ],
                received_nanos in 0..1_000_000_000u32,
                clock in any::<bool>(),
                mut event in event(),
                shift in option::of(-7_200i64..=3_600),
                payload in vec(("[a-c]{1,2}", json()), 0..4),
            ) {
                let now = if clock {
                    SystemTime::now()
                } else {
                    UNIX_EPOCH + Duration::new(received, received_nanos)
                };
                if let Some(shift) = shift {
                    let mut at = Timestamp::from(now);
                    at.seconds = at.seconds.saturating_add(shift);
                    event.occurred_at = Some(at);
                }
                event.payload = Some(tributary_proto::json::json_to_struct(payload.into_iter().collect()));
                let Ok(valid) = validate::validate_event(&event, "event", now) else {
                    return Ok(());
                };
                // As ingest's `prepare` writes it.
                if event.event_id.is_empty() {
                    event.event_id = "0190f1c2-7e5d-7a3b-9c1d-2e3f4a5b6c7d".into();
                }
                event.occurred_at = Some(valid.occurred_at);
                event.payload = None;
                let written = EventEnvelope {
                    envelope_version: 1,
                    event: Some(event.clone()),
                    payload_json: valid.payload_json.clone(),
                    received_at: Some(Timestamp::from(now)),
                    ingest: Some(IngestMetadata::default()),
                };
                match decode_plain(&record(Some(written.encode_to_vec()))) {
                    Decoded::Event(e) => {
                        prop_assert_eq!(&e.row.event_id, &event.event_id);
                        prop_assert_eq!(&e.row.payload_json, &valid.payload_json);
                        prop_assert_eq!(Timestamp::from(e.row.occurred_at), valid.occurred_at);
                        prop_assert_eq!(e.row.received_at, now);
                    }
                    Decoded::Poison(p) => prop_assert!(false, "ingest accepted it; dead-lettered: {}", p.reason),
                }
            }
        }
    }
}
