//! Strategies and oracles for this crate's property tests (test builds only).
//!
//! The strategies make what a client or anything writing to the topic could
//! send: strings with NUL, control characters, any Unicode, around the
//! 256-character limit and far past it; timestamps anywhere an `i64` of
//! seconds reaches, nanos out of range; payloads with NaN, infinities and
//! every other bit pattern of a double, deep nesting and sizes either side of
//! the 64 KiB limit. The oracles restate README's "Rules and errors" over
//! `char`s and `i128`s, independently of `validate.rs`.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::strategy::LazyJust;
use proptest::test_runner::TestCaseError;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use serde_json::{Map, Number, Value as Json};

use crate::v1::Event;
use crate::validate::FieldViolation;

/// Every property test's settings: 256 cases, and no failure files
/// written into the tree (a failure found becomes a plain regression test).
pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings as a client may send them in an event's text fields.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_.:-]{0,12}",
        2 => any::<String>(),
        2 => vec(any::<char>(), 0..24).prop_map(String::from_iter),
        1 => ("[a-z]{0,4}", "[a-z]{0,4}").prop_map(|(a, b)| format!("{a}\0{b}")),
        // Either side of the 256-character limit, in 1- to 4-byte characters.
        1 => (250usize..=260, prop::sample::select(vec!['a', 'é', '€', '😀', '\u{7f}']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
        1 => (0usize..100_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// An event's `source`, `user_id` or `session_id`: mostly what a client
/// sends, else anything [`text`] makes (each field of an event is invalid
/// about one time in ten, so that whole events are valid about half the time).
pub fn field_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9_.:-]{0,12}",
        3 => "\\PC{0,40}",
        2 => text(),
    ]
}

/// `^[a-z][a-z0-9_.-]{0,63}$`-shaped mostly, and anything.
pub fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => "[a-z][a-z0-9_.-]{0,63}",
        2 => "[a-z][a-z0-9_.-]{62,64}",
        1 => "[a-zA-Z0-9_. é-]{0,8}",
        1 => text(),
    ]
}

/// Empty (ingest assigns one), `^[A-Za-z0-9._:-]{1,128}$`-shaped, anything.
pub fn event_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        12 => "[A-Za-z0-9._:-]{1,128}",
        2 => "[A-Za-z0-9._:-]{127,129}",
        1 => text(),
    ]
}

fn now_seconds() -> i64 {
    Timestamp::from(SystemTime::now()).seconds
}

/// Seconds since the epoch: near now, around 0, at both ends of `i64`, any.
pub fn seconds() -> impl Strategy<Value = i64> {
    let now = now_seconds();
    prop_oneof![
        4 => now - 3 * 86_400..now + 3 * 86_400,
        1 => -2i64..2,
        1 => i64::MAX - 8_000..=i64::MAX,
        1 => i64::MIN..=i64::MIN + 8_000,
        2 => any::<i64>(),
    ]
}

/// Nanos, valid or not.
pub fn nanos() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => 0..1_000_000_000i32,
        1 => prop::sample::select(vec![0, 999, 1_000, 999_999_999, 1_000_000_000, -1, i32::MIN, i32::MAX]),
        1 => any::<i32>(),
    ]
}

pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    (seconds(), nanos()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })
}

/// What validation is judged against: the clock (ingest), or a record's
/// `received_at` as the processor decodes it, which is any `Timestamp` that
/// converts to a `SystemTime`.
pub fn now() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        LazyJust::new(SystemTime::now),
        timestamp().prop_filter_map("not a SystemTime", |t| SystemTime::try_from(t).ok()),
    ]
}

/// An offset (seconds, nanos) from `now` for `occurred_at`: a few hours
/// either side, and the 1 h limit with its neighbours.
pub fn shift() -> impl Strategy<Value = (i64, i32)> {
    prop_oneof![
        2 => (-7_200i64..3_600, 0..1_000_000_000i32),
        1 => (-7_200i64..7_200, 0..1_000_000_000i32),
        1 => (3_599i64..=3_601, prop::sample::select(vec![0, 1, 999, 1_000, 999_999_999])),
        1 => prop::sample::select(vec![(3_600, 0), (3_600, 1), (3_599, 999_999_999), (0, 0), (-1, 999_999_999)]),
    ]
}

/// `now` moved by `shift`, saturating at the ends of `Timestamp`.
pub fn shifted(now: SystemTime, (seconds, nanos): (i64, i32)) -> Timestamp {
    let base = Timestamp::from(now);
    let mut t = Timestamp {
        seconds: base.seconds.saturating_add(seconds),
        nanos: base.nanos + nanos,
    };
    t.normalize();
    t
}

/// Any `f64` bit pattern, with the edges of the integral printing named.
pub fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => any::<f64>(),
        2 => any::<u64>().prop_map(f64::from_bits),
        2 => (-1_000i64..1_000).prop_map(|n| n as f64),
        2 => prop::sample::select(vec![
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            0.5,
            1e21,
            1e-7,
            5e-324,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            -9_007_199_254_740_992.0,
            -9_007_199_254_740_993.0,
            18_446_744_073_709_551_616.0,
        ]),
    ]
}

/// Payload keys: short, escapes of a JSON Pointer, NUL, any characters.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-d]{0,2}",
        1 => vec(any::<char>(), 0..6).prop_map(String::from_iter),
        1 => prop::sample::select(vec!["", "~", "/", "~0", "~1/", "a/b", "\0", "k\0", "\"", "\\", "é", "😀", "\u{2028}"])
            .prop_map(str::to_owned),
    ]
}

/// Payload string values.
pub fn string_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z ]{0,8}",
        3 => vec(any::<char>(), 0..16).prop_map(String::from_iter),
        1 => ("[a-z]{0,3}", "[a-z]{0,3}").prop_map(|(a, b)| format!("{a}\0{b}")),
        1 => (0usize..20_000).prop_map(|n| "y".repeat(n)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(None),
        1 => any::<i32>().prop_map(|n| Some(Kind::NullValue(n))),
        2 => any::<bool>().prop_map(|b| Some(Kind::BoolValue(b))),
        4 => number().prop_map(|n| Some(Kind::NumberValue(n))),
        4 => string_value().prop_map(|s| Some(Kind::StringValue(s))),
    ]
    .prop_map(|kind| Value { kind })
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn object(fields: std::collections::BTreeMap<String, Value>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    }
}

/// Any `google.protobuf.Value`, a few levels deep.
pub fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(list),
            btree_map(key(), inner, 0..5).prop_map(object),
        ]
    })
}

/// A value nested `depth` lists and structs deep, under the key `deep`:
/// around where prost's recursion limit (100 messages; a struct level costs
/// three, a list level two) refuses it, and far past it.
pub fn deep() -> impl Strategy<Value = Struct> {
    (
        prop_oneof![0usize..=130, 28usize..=52],
        vec(any::<bool>(), 130),
        leaf(),
    )
        .prop_map(|(depth, as_list, leaf)| {
            let v = as_list.iter().take(depth).fold(leaf, |v, &as_list| {
                if as_list {
                    list(vec![v])
                } else {
                    object([("k".to_owned(), v)].into())
                }
            });
            Struct {
                fields: [("deep".to_owned(), v)].into(),
            }
        })
}

/// `{"blob": "xxx…"}` whose JSON is within a few bytes of 64 KiB either side.
pub fn blob() -> impl Strategy<Value = Struct> {
    // `{"blob":""}` is 11 bytes.
    let limit = crate::validate::MAX_PAYLOAD_BYTES - 11;
    (limit - 4..=limit + 4).prop_map(|n| Struct {
        fields: [(
            "blob".to_owned(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(n))),
            },
        )]
        .into(),
    })
}

/// Any payload.
pub fn payload() -> impl Strategy<Value = Struct> {
    prop_oneof![
        6 => btree_map(key(), value(), 0..6).prop_map(|fields| Struct { fields }),
        1 => deep(),
        1 => blob(),
    ]
}

/// Any event, with or without a payload.
pub fn event() -> impl Strategy<Value = Event> {
    (
        event_id(),
        event_type(),
        field_text(),
        field_text(),
        field_text(),
        prop_oneof![3 => Just(None), 1 => timestamp().prop_map(Some)],
        option::of(payload()),
    )
        .prop_map(
            |(event_id, event_type, source, user_id, session_id, occurred_at, payload)| Event {
                event_id,
                event_type,
                source,
                user_id,
                session_id,
                occurred_at,
                payload,
            },
        )
}

// The oracles.

/// `^[a-z][a-z0-9_.-]{0,63}$`
pub fn is_event_type(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.chars().count() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-'))
}

/// `^[A-Za-z0-9._:-]{1,128}$`
pub fn is_event_id(s: &str) -> bool {
    (1..=128).contains(&s.chars().count())
        && s.chars()
            .all(|c| matches!(c, 'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | ':' | '-'))
}

/// At most 256 characters, no NUL.
pub fn is_text_field(s: &str) -> bool {
    s.chars().count() <= 256 && !s.contains('\0')
}

/// Nanoseconds since the epoch, negative before it.
pub fn nanos_since_epoch(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// A client's `occurred_at`: nanos in range, not before 1970, at most 1 h
/// after `now`.
pub fn is_occurred_at(ts: &Timestamp, now: SystemTime) -> bool {
    let at = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    (0..1_000_000_000).contains(&ts.nanos)
        && ts.seconds >= 0
        && at <= nanos_since_epoch(now) + 3_600 * 1_000_000_000
}

/// The payload's JSON, or `None` when it holds what JSON text in PostgreSQL
/// cannot (a non-finite number, a NUL in a key or a string). Integral numbers
/// below 2^53 are integers, as `json.rs` documents.
pub fn json_of(s: &Struct) -> Option<Map<String, Json>> {
    s.fields
        .iter()
        .map(|(k, v)| {
            if k.contains('\0') {
                return None;
            }
            Some((k.clone(), json_of_value(v)?))
        })
        .collect()
}

fn json_of_value(v: &Value) -> Option<Json> {
    Some(match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) if !n.is_finite() => return None,
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 2f64.powi(53) =>
        {
            #[allow(clippy::cast_possible_truncation)]
            Json::Number(Number::from(*n as i64))
        }
        Some(Kind::NumberValue(n)) => Json::Number(Number::from_f64(*n)?),
        Some(Kind::StringValue(s)) if s.contains('\0') => return None,
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            Json::Array(l.values.iter().map(json_of_value).collect::<Option<_>>()?)
        }
        Some(Kind::StructValue(s)) => Json::Object(json_of(s)?),
    })
}

/// The payload's JSON text, or `None` when it must be refused (unstorable,
/// or more than 64 KiB).
pub fn payload_text(s: &Struct) -> Option<String> {
    json_of(s)
        .map(|m| Json::Object(m).to_string())
        .filter(|t| t.len() <= 64 * 1024)
}

/// Whether the JSON Pointer `pointer` names, in `s`, what a refusal of that
/// kind is about: a non-finite number (`nul` false), or a string or key with
/// a NUL (`nul` true).
pub fn names_the_offence(s: &Struct, pointer: &str, nul: bool) -> bool {
    let Some(rest) = pointer.strip_prefix('/') else {
        return false;
    };
    let tokens: Vec<String> = rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    offence_in_struct(s, &tokens, nul)
}

fn offence_in_struct(s: &Struct, tokens: &[String], nul: bool) -> bool {
    let Some((key, rest)) = tokens.split_first() else {
        return false;
    };
    let Some(value) = s.fields.get(key) else {
        return false;
    };
    (rest.is_empty() && nul && key.contains('\0')) || offence_in_value(value, rest, nul)
}

fn offence_in_value(value: &Value, tokens: &[String], nul: bool) -> bool {
    match (&value.kind, tokens.split_first()) {
        (Some(Kind::NumberValue(n)), None) => !nul && !n.is_finite(),
        (Some(Kind::StringValue(s)), None) => nul && s.contains('\0'),
        (Some(Kind::StructValue(s)), Some(_)) => offence_in_struct(s, tokens, nul),
        (Some(Kind::ListValue(l)), Some((index, rest))) => index
            .parse::<usize>()
            .ok()
            .and_then(|i| l.values.get(i))
            .is_some_and(|v| offence_in_value(v, rest, nul)),
        _ => false,
    }
}

/// The fields (`event_type`, …) README's rules refuse in `event`, judged at
/// `now`, given the payload's JSON text (`None`: refused) and whether the
/// event has a payload at all.
pub fn refused_fields(
    event: &Event,
    payload: Option<&Option<String>>,
    now: SystemTime,
) -> BTreeSet<&'static str> {
    let mut refused = BTreeSet::new();
    if !is_event_type(&event.event_type) {
        refused.insert("event_type");
    }
    if !event.event_id.is_empty() && !is_event_id(&event.event_id) {
        refused.insert("event_id");
    }
    for (name, value) in [
        ("source", &event.source),
        ("user_id", &event.user_id),
        ("session_id", &event.session_id),
    ] {
        if !is_text_field(value) {
            refused.insert(name);
        }
    }
    if event
        .occurred_at
        .as_ref()
        .is_some_and(|ts| !is_occurred_at(ts, now))
    {
        refused.insert("occurred_at");
    }
    if payload.is_some_and(|text| text.as_ref().is_none_or(|t| t.len() > 64 * 1024)) {
        refused.insert("payload");
    }
    refused
}

/// `ts` truncated to microseconds, checked rather than computed.
pub fn is_truncation_of(truncated: &Timestamp, ts: &Timestamp) -> bool {
    truncated.seconds == ts.seconds
        && truncated.nanos % 1_000 == 0
        && (0..1_000).contains(&(ts.nanos - truncated.nanos))
}

/// The fields a refusal can name, as `FieldViolation::field` ends.
pub const FIELDS: [&str; 7] = [
    "event_type",
    "event_id",
    "source",
    "user_id",
    "session_id",
    "occurred_at",
    "payload",
];

/// The fields `violations` name: at least one, each once, as a path under
/// `prefix` (`events[3].user_id`), with a reason.
pub fn named_fields(
    violations: &[FieldViolation],
    prefix: &str,
) -> Result<BTreeSet<&'static str>, TestCaseError> {
    let mut named = BTreeSet::new();
    for v in violations {
        let field = v
            .field
            .strip_prefix(prefix)
            .and_then(|f| f.strip_prefix('.'))
            .and_then(|f| FIELDS.into_iter().find(|known| *known == f));
        prop_assert!(
            field.is_some(),
            "{:?} is not a field of {}",
            v.field,
            prefix
        );
        prop_assert!(!v.description.is_empty(), "{:?} says nothing", v.field);
        prop_assert!(
            named.insert(field.unwrap_or_default()),
            "{:?} named twice",
            v.field
        );
    }
    prop_assert!(!named.is_empty(), "refused without a violation");
    Ok(named)
}
