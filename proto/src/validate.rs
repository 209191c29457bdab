//! The rules an event must meet. Ingest enforces them before producing, and
//! the processor enforces them again on what it consumes (anything could have
//! written to the topic), so both use this one implementation.

use std::time::{Duration, SystemTime};

use prost_types::Timestamp;

use crate::json::{JsonError, struct_to_json};
use crate::v1::Event;

pub const MAX_EVENT_TYPE_LEN: usize = 64;
pub const MAX_EVENT_ID_LEN: usize = 128;
pub const MAX_TEXT_FIELD_CHARS: usize = 256;
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(3600);
pub const MAX_BATCH_EVENTS: usize = 1000;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// One invalid field: `field` is the path in the request (`event.event_type`,
/// `events[3].payload`), `description` says why, in lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// An event that passed validation, with what validation computed.
#[derive(Debug, Clone)]
pub struct ValidEvent {
    /// The payload as compact JSON text (`{}` when absent).
    pub payload_json: String,
    /// `occurred_at`, truncated to microseconds (what PostgreSQL stores), or
    /// `now` when the client left it unset.
    pub occurred_at: Timestamp,
}

/// Checks one event; `prefix` is its path in the request (e.g. `event`).
/// Collects every violation rather than stopping at the first.
pub fn validate_event(
    event: &Event,
    prefix: &str,
    now: SystemTime,
) -> Result<ValidEvent, Vec<FieldViolation>> {
    let payload_json = event
        .payload
        .as_ref()
        .map(|p| struct_to_json(p).map(|map| serde_json::Value::Object(map).to_string()));
    validate_with_payload(event, payload_json, prefix, now)
}

/// [`validate_event`] for an event whose payload was already turned into
/// JSON text (`None`: no payload); `event.payload` itself is not looked at.
/// Ingest writes the text straight from the request's bytes
/// ([`crate::wire::struct_json`]).
pub fn validate_with_payload(
    event: &Event,
    payload_json: Option<Result<String, JsonError>>,
    prefix: &str,
    now: SystemTime,
) -> Result<ValidEvent, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let mut violation = |field: &str, description: String| {
        violations.push(FieldViolation {
            field: format!("{prefix}.{field}"),
            description,
        });
    };

    if event.event_type.is_empty() {
        violation("event_type", "is required".into());
    } else if !is_event_type(&event.event_type) {
        violation("event_type", "must match ^[a-z][a-z0-9_.-]{0,63}$".into());
    }
    if !event.event_id.is_empty() && !is_event_id(&event.event_id) {
        violation("event_id", "must match ^[A-Za-z0-9._:-]{1,128}$".into());
    }
    for (name, value) in [
        ("source", &event.source),
        ("user_id", &event.user_id),
        ("session_id", &event.session_id),
    ] {
        if value.chars().count() > MAX_TEXT_FIELD_CHARS {
            violation(
                name,
                format!("must be at most {MAX_TEXT_FIELD_CHARS} characters"),
            );
        } else if value.contains('\0') {
            violation(name, "must not contain a NUL character".into());
        }
    }

    let occurred_at = match &event.occurred_at {
        None => Some(truncate_to_micros(&Timestamp::from(now))),
        Some(ts) => match check_occurred_at(ts, now) {
            Ok(ts) => Some(ts),
            Err(why) => {
                violation("occurred_at", why);
                None
            }
        },
    };

    let payload_json = match payload_json {
        None => Some("{}".to_owned()),
        Some(Ok(text)) if text.len() > MAX_PAYLOAD_BYTES => {
            violation(
                "payload",
                format!(
                    "is {} bytes as JSON; the limit is {MAX_PAYLOAD_BYTES}",
                    text.len()
                ),
            );
            None
        }
        Some(Ok(text)) => Some(text),
        Some(Err(e)) => {
            violation("payload", e.to_string());
            None
        }
    };

    match (occurred_at, payload_json) {
        (Some(occurred_at), Some(payload_json)) if violations.is_empty() => Ok(ValidEvent {
            payload_json,
            occurred_at,
        }),
        _ => Err(violations),
    }
}

fn check_occurred_at(ts: &Timestamp, now: SystemTime) -> Result<Timestamp, String> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err("has nanos out of range".into());
    }
    if ts.seconds < 0 {
        return Err("must not be before 1970-01-01T00:00:00Z".into());
    }
    // The processor judges at a record's received_at, which can be anything
    // up to the end of SystemTime: past it, no timestamp is too late.
    let too_late = now
        .checked_add(MAX_FUTURE_SKEW)
        .map(Timestamp::from)
        .is_some_and(|latest| (ts.seconds, ts.nanos) > (latest.seconds, latest.nanos));
    if too_late {
        return Err("must not be more than 1h in the future".into());
    }
    Ok(truncate_to_micros(ts))
}

/// PostgreSQL keeps microseconds: truncating before storing makes what a
/// client reads back equal what keyset page tokens compare against.
pub fn truncate_to_micros(ts: &Timestamp) -> Timestamp {
    Timestamp {
        seconds: ts.seconds,
        nanos: ts.nanos - ts.nanos % 1000,
    }
}

/// `^[a-z][a-z0-9_.-]{0,63}$`
pub fn is_event_type(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_EVENT_TYPE_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes[1..].iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// `^[A-Za-z0-9._:-]{1,128}$`
pub fn is_event_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_EVENT_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The Kafka record key: user_id, else session_id, else event_id, so one
/// user's (or session's) events stay in one partition, in order.
pub fn partition_key(event: &Event) -> &str {
    if !event.user_id.is_empty() {
        &event.user_id
    } else if !event.session_id.is_empty() {
        &event.session_id
    } else {
        &event.event_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str) -> Event {
        Event {
            event_type: event_type.into(),
            ..Default::default()
        }
    }

    fn fields(r: Result<ValidEvent, Vec<FieldViolation>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn event_type_pattern() {
        for ok in ["a", "page.view", "a_b-c.d9", &"x".repeat(64)] {
            assert!(is_event_type(ok), "{ok}");
        }
        for bad in ["", "A", "9a", "_a", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(!is_event_type(bad), "{bad}");
        }
    }

    #[test]
    fn event_id_pattern() {
        assert!(is_event_id("Order-1:2.3_x"));
        assert!(is_event_id(&"a".repeat(128)));
        for bad in ["", "a b", "a/b", "ä", &"a".repeat(129)] {
            assert!(!is_event_id(bad), "{bad}");
        }
    }

    #[test]
    fn collects_every_violation_with_its_path() {
        let now = SystemTime::now();
        let mut e = event("Bad");
        e.event_id = "has space".into();
        e.user_id = "u".repeat(257);
        e.session_id = "a\0b".into();
        e.occurred_at = Some(Timestamp::from(now + Duration::from_secs(3601 + 5)));
        assert_eq!(
            fields(validate_event(&e, "events[2]", now)),
            [
                "events[2].event_type",
                "events[2].event_id",
                "events[2].user_id",
                "events[2].session_id",
                "events[2].occurred_at"
            ]
        );
    }

    #[test]
    fn defaults_and_truncates_occurred_at_and_sizes_the_payload() {
        let now = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let ok = validate_event(&event("a"), "event", now);
        let ok = ok.ok();
        assert_eq!(
            ok.as_ref()
                .map(|v| (v.occurred_at.seconds, v.occurred_at.nanos)),
            Some((1_700_000_000, 123_456_000))
        );
        assert_eq!(ok.map(|v| v.payload_json), Some("{}".to_owned()));

        let mut big = event("a");
        let blob = "x".repeat(MAX_PAYLOAD_BYTES);
        big.payload = Some(crate::json::json_to_struct(
            serde_json::json!({ "blob": blob })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ));
        assert_eq!(
            fields(validate_event(&big, "event", now)),
            ["event.payload"]
        );
    }

    #[test]
    fn an_hour_ahead_is_the_limit() {
        let now = SystemTime::now();
        let mut e = event("a");
        e.occurred_at = Some(Timestamp::from(now + MAX_FUTURE_SKEW));
        assert!(validate_event(&e, "event", now).is_ok());
    }

    #[test]
    fn a_received_at_near_the_end_of_time_is_judged_without_overflow() {
        // Found by the properties below: `now + 1h` panicked ("overflow when
        // adding duration to instant") for a `now` within an hour of the end
        // of SystemTime, and the processor judges a record at its
        // received_at, which whoever writes to the topic chooses.
        let now = SystemTime::try_from(Timestamp {
            seconds: i64::MAX - 3599,
            nanos: 0,
        })
        .unwrap();
        let mut e = event("a");
        e.occurred_at = Some(Timestamp {
            seconds: 1_795_835_474,
            nanos: 0,
        });
        assert!(validate_event(&e, "event", now).is_ok());
        e.occurred_at = Some(Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        });
        assert!(validate_event(&e, "event", now).is_ok());
    }

    #[test]
    fn partition_key_prefers_user_then_session_then_id() {
        let mut e = event("a");
        e.event_id = "id".into();
        assert_eq!(partition_key(&e), "id");
        e.session_id = "s".into();
        assert_eq!(partition_key(&e), "s");
        e.user_id = "u".into();
        assert_eq!(partition_key(&e), "u");
    }

    mod properties {
        use proptest::option;
        use proptest::prelude::*;

        use super::*;
        use crate::testing;

        fn prefix() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("event".to_owned()),
                (0..1000usize).prop_map(|i| format!("events[{i}]")),
            ]
        }

        proptest! {
            #![proptest_config(crate::testing::config())]

            /// Any event, judged at any time: accepted exactly when README's
            /// rules allow it (with the payload's JSON text and occurred_at
            /// truncated to microseconds), else refused naming exactly the
            /// fields that break them; a payload refused for what it holds
            /// names the place, a JSON Pointer to it.
            #[test]
            fn an_event_is_valid_exactly_when_the_rules_allow_it(
                now in testing::now(),
                mut event in testing::event(),
                shift in option::of(testing::shift()),
                prefix in prefix(),
            ) {
                if let Some(shift) = shift {
                    event.occurred_at = Some(testing::shifted(now, shift));
                }
                let text = event.payload.as_ref().map(testing::payload_text);
                let refused = testing::refused_fields(&event, text.as_ref(), now);
                match validate_event(&event, &prefix, now) {
                    Ok(valid) => {
                        prop_assert!(refused.is_empty(), "accepted; the rules refuse {:?}", refused);
                        let expected = text.flatten().unwrap_or_else(|| "{}".to_owned());
                        prop_assert_eq!(valid.payload_json, expected);
                        let stated = event.occurred_at.unwrap_or_else(|| Timestamp::from(now));
                        prop_assert!(
                            testing::is_truncation_of(&valid.occurred_at, &stated),
                            "{:?} is not {:?} truncated to microseconds",
                            valid.occurred_at,
                            stated
                        );
                    }
                    Err(violations) => {
                        prop_assert_eq!(&testing::named_fields(&violations, &prefix)?, &refused);
                        let payload = event.payload.as_ref().zip(
                            violations.iter().find(|v| v.field.ends_with(".payload")),
                        );
                        if let Some((payload, v)) = payload
                            && testing::json_of(payload).is_none()
                        {
                            let named_place = [(" is not a finite number", false), (" contains a NUL character", true)]
                                .into_iter()
                                .any(|(why, nul)| {
                                    v.description.strip_suffix(why).is_some_and(|pointer| {
                                        testing::names_the_offence(payload, pointer, nul)
                                    })
                                });
                            prop_assert!(named_place, "{:?} does not point at the offence", v.description);
                        }
                    }
                }
            }
        }

        fn verdict() -> impl Strategy<Value = Result<String, JsonError>> {
            prop_oneof![
                "\\{[a-z\"]{0,10}\\}".prop_map(Ok),
                (MAX_PAYLOAD_BYTES - 4..=MAX_PAYLOAD_BYTES + 4).prop_map(|n| Ok("x".repeat(n))),
                "/[a-z~]{0,6}".prop_map(|path| Err(JsonError::NonFiniteNumber { path })),
                "/[a-z\\x00]{0,6}".prop_map(|path| Err(JsonError::NulCharacter { path })),
                ("/[a-z0-9]{0,6}", "[a-z ]{1,12}")
                    .prop_map(|(path, why)| Err(JsonError::Malformed { path, why })),
            ]
        }

        proptest! {
            #![proptest_config(crate::testing::config())]

            /// What ingest calls, with the payload's JSON already written (or
            /// refused): the text is kept as it is unless over 64 KiB, and a
            /// refusal becomes the payload's violation with its reason.
            #[test]
            fn a_written_payload_is_kept_or_its_refusal_named(
                now in testing::now(),
                event in testing::event(),
                payload in option::of(verdict()),
                prefix in prefix(),
            ) {
                let text = payload.as_ref().map(|p| p.as_ref().ok().cloned());
                let refused = testing::refused_fields(&event, text.as_ref(), now);
                match validate_with_payload(&event, payload.clone(), &prefix, now) {
                    Ok(valid) => {
                        prop_assert!(refused.is_empty(), "accepted; the rules refuse {:?}", refused);
                        let expected = text.flatten().unwrap_or_else(|| "{}".to_owned());
                        prop_assert_eq!(valid.payload_json, expected);
                    }
                    Err(violations) => {
                        prop_assert_eq!(&testing::named_fields(&violations, &prefix)?, &refused);
                        if let Some(Err(e)) = &payload {
                            let v = violations.iter().find(|v| v.field.ends_with(".payload"));
                            prop_assert_eq!(v.map(|v| v.description.clone()), Some(e.to_string()));
                        }
                    }
                }
            }
        }
    }
}
