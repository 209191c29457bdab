//! Deterministic events: the n-th event of a run always has the same id,
//! type, user and payload, so a baseline can load the very rows our path
//! stored, and a check can recompute what a query must answer.

use std::time::{Duration, SystemTime};

use prost::Message as _;
use serde_json::json;
use tributary_proto::json::json_to_struct;
use tributary_proto::v1::{Event, EventEnvelope, IngestMetadata};

/// Event types of the ingest, persist and end-to-end scenarios.
pub const TYPES: [&str; 3] = ["bench.click", "bench.view", "bench.purchase"];
/// Users of the ingest scenarios (keys spread over every partition).
const USERS: u64 = 10_000;

/// Ids are `<prefix><n>`; a prefix names the run and the scenario.
pub fn event_id(prefix: &str, n: u64) -> String {
    format!("{prefix}{n}")
}

fn payload(n: u64) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(map) = json!({
        "amount": n % 1000,
        "currency": "EUR",
        "page": format!("/products/{}", n % 500),
        "campaign": format!("spring-{}", n % 7),
        "ok": n.is_multiple_of(2),
    }) else {
        unreachable!("a JSON object literal")
    };
    map
}

/// The n-th event of `prefix`, occurring at `occurred_at`.
pub fn event(prefix: &str, n: u64, occurred_at: SystemTime) -> Event {
    Event {
        event_id: event_id(prefix, n),
        event_type: TYPES[(n % TYPES.len() as u64) as usize].to_owned(),
        source: "bench".to_owned(),
        user_id: format!("u{}", n % USERS),
        session_id: format!("s{}", n % (USERS * 5)),
        occurred_at: Some(prost_types::Timestamp::from(occurred_at)),
        payload: Some(json_to_struct(payload(n))),
    }
}

/// What a producer puts on the topic for the n-th event: the same envelope
/// ingest builds (payload as JSON text, receive time, ingest metadata), its key
/// and a `traceparent` header of the same size. The raw-producer baseline
/// builds one per event, as ingest does.
pub struct RawRecord {
    pub key: String,
    pub value: Vec<u8>,
}

pub fn raw_record(prefix: &str, n: u64, now: SystemTime) -> RawRecord {
    let mut event = event(prefix, n, now);
    event.payload = None;
    let envelope = EventEnvelope {
        envelope_version: 1,
        payload_json: serde_json::Value::Object(payload(n)).to_string(),
        event: Some(event.clone()),
        received_at: Some(prost_types::Timestamp::from(now)),
        ingest: Some(IngestMetadata {
            instance: "bench".to_owned(),
            trace_id: TRACE_ID.to_owned(),
            schema_version: 0,
            redriven_from_dead_letter: 0,
        }),
    };
    RawRecord {
        key: event.user_id,
        value: envelope.encode_to_vec(),
    }
}

pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One row of the events table in PostgreSQL's COPY text format (every
/// column but `persisted_at`, which defaults to the time of the insert), in
/// the order of [`COPY_COLUMNS`].
pub fn copy_row(out: &mut String, e: &Event, payload_json: &str, partition: i32, offset: i64) {
    use std::fmt::Write as _;
    let ts = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
    };
    let occurred = ts(&e.occurred_at);
    for field in [
        e.event_id.as_str(),
        e.event_type.as_str(),
        e.source.as_str(),
        e.user_id.as_str(),
        e.session_id.as_str(),
        occurred.as_str(),
        occurred.as_str(),
    ] {
        push_copy_text(out, field);
        out.push('\t');
    }
    push_copy_text(out, payload_json);
    let _ = writeln!(out, "\t{partition}\t{offset}\t{TRACE_ID}\t0");
}

pub const COPY_COLUMNS: &str = "event_id, event_type, source, user_id, session_id, occurred_at, \
     received_at, payload, kafka_partition, kafka_offset, trace_id, schema_version";

/// The payload of the n-th event as the processor stores it.
pub fn payload_json(n: u64) -> String {
    serde_json::Value::Object(payload(n)).to_string()
}

/// COPY text escaping: backslash, tab, newline and carriage return.
fn push_copy_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// A small xorshift generator: the query scenario's users, types and windows
/// are reproducible from the seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The query data set: `QUERY_USERS` users, `QUERY_TYPES` types and
/// occurrence times spread evenly over `QUERY_SPAN` before `end`.
pub const QUERY_USERS: u64 = 100_000;
pub const QUERY_TYPES: u64 = 20;
pub const QUERY_SPAN: Duration = Duration::from_secs(20 * 24 * 3600);

/// The n-th event of the query data set.
pub fn query_event(n: u64, end: SystemTime) -> Event {
    let mut rng = Rng::new(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5);
    // Uniform over the span, whatever the row count: a larger data set is
    // the smaller one plus more rows over the same days.
    let back = rng.below(QUERY_SPAN.as_micros() as u64);
    Event {
        event_id: format!("q{n:010}"),
        event_type: format!("type.{:02}", rng.below(QUERY_TYPES)),
        source: format!("src{}", rng.below(8)),
        user_id: format!("user{}", rng.below(QUERY_USERS)),
        session_id: format!("sess{}", rng.below(QUERY_USERS * 4)),
        occurred_at: Some(prost_types::Timestamp::from(
            end - Duration::from_micros(back),
        )),
        payload: None,
    }
}

/// The n-th row of the query data set, as COPY text.
pub fn query_row(out: &mut String, n: u64, end: SystemTime) {
    copy_row(
        out,
        &query_event(n, end),
        &payload_json(n),
        (n % 6) as i32,
        i64::try_from(n / 6).unwrap_or(i64::MAX),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_deterministic_and_valid() {
        let t = SystemTime::now();
        let a = event("b1.", 7, t);
        let b = event("b1.", 7, t);
        assert_eq!(a, b);
        assert_eq!(a.event_id, "b1.7");
        assert!(tributary_proto::validate::is_event_id(&a.event_id));
        assert!(tributary_proto::validate::is_event_type(&a.event_type));
        assert_eq!(a.user_id, "u7");
    }

    #[test]
    fn copy_rows_escape_and_have_every_column() {
        let mut out = String::new();
        let mut e = event("x.", 1, SystemTime::UNIX_EPOCH);
        e.source = "a\tb\\c".into();
        copy_row(&mut out, &e, "{}", 3, 42);
        assert!(out.contains("a\\tb\\\\c"));
        assert!(out.ends_with('\n'));
        let columns = COPY_COLUMNS.split(',').count();
        assert_eq!(out.trim_end().split('\t').count(), columns);
    }

    #[test]
    fn query_rows_fall_inside_the_span() {
        let end = SystemTime::now();
        let mut out = String::new();
        query_row(&mut out, 0, end);
        query_row(&mut out, 999, end);
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn raw_records_decode_as_envelopes() {
        let r = raw_record("r.", 5, SystemTime::now());
        let env = EventEnvelope::decode(r.value.as_slice()).expect("an envelope");
        assert_eq!(env.event.map(|e| e.event_id), Some("r.5".to_owned()));
        assert_eq!(r.key, "u5");
    }
}
