//! Typed queries on `events` and `dead_letters`.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use crate::StoreError;

/// An event about to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub user_id: String,
    pub session_id: String,
    pub occurred_at: SystemTime,
    pub received_at: SystemTime,
    /// A JSON object as text.
    pub payload_json: String,
    pub partition: i32,
    pub offset: i64,
    pub trace_id: String,
    pub schema_version: i32,
}

/// A record the processor refused, with why.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub reason: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The subscription whose delivery gave up on it; '' for the processor.
    pub subscription: String,
    /// The event's user ('' for none) when the record decoded far enough to
    /// tell; `None` when it did not (an erasure decodes it later).
    pub user_id: Option<String>,
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub user_id: String,
    pub session_id: String,
    pub occurred_at: SystemTime,
    pub received_at: SystemTime,
    pub persisted_at: SystemTime,
    pub payload: serde_json::Value,
    pub partition: i32,
    pub offset: i64,
    pub trace_id: String,
    pub schema_version: i32,
}

/// The fields a filter looks at, of a stored row or of a record on its way
/// (dispatch filters records, query's tails filter rows).
pub struct Candidate<'a> {
    pub event_type: &'a str,
    pub source: &'a str,
    pub user_id: &'a str,
    pub session_id: &'a str,
    pub occurred_at: SystemTime,
    pub payload: &'a serde_json::Value,
}

impl EventRow {
    pub fn candidate(&self) -> Candidate<'_> {
        Candidate {
            event_type: &self.event_type,
            source: &self.source,
            user_id: &self.user_id,
            session_id: &self.session_id,
            occurred_at: self.occurred_at,
            payload: &self.payload,
        }
    }
}

impl EventFilter {
    /// The same filter ListEvents applies in SQL, applied to one event.
    pub fn matches(&self, e: &Candidate<'_>) -> bool {
        (self.event_types.is_empty() || self.event_types.iter().any(|t| t == e.event_type))
            && self.source.as_deref().is_none_or(|v| v == e.source)
            && self.user_id.as_deref().is_none_or(|v| v == e.user_id)
            && self.session_id.as_deref().is_none_or(|v| v == e.session_id)
            && self.occurred_after.is_none_or(|t| e.occurred_at >= t)
            && self.occurred_before.is_none_or(|t| e.occurred_at < t)
            && self
                .payload_contains
                .iter()
                .all(|doc| contains(e.payload, doc))
    }
}

/// PostgreSQL's `jsonb @>` for the documents payload matches build.
fn contains(value: &serde_json::Value, doc: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (value, doc) {
        (Value::Object(v), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| v.get(k).is_some_and(|vv| contains(vv, dv))),
        (Value::Array(v), Value::Array(d)) => {
            d.iter().all(|dv| v.iter().any(|vv| contains(vv, dv)))
        }
        // A top-level array contains a bare scalar in jsonb.
        (Value::Array(v), d) if !d.is_object() && !d.is_array() => v.iter().any(|vv| vv == d),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// Inserts a batch in one statement; an event whose id is already stored is
/// left alone (a redelivery or a client retry, even with another
/// occurred_at). Returns the ids inserted now.
///
/// `event_ids` decides: its primary key is the one place an id is unique
/// across the time partitions, and only the ids it took now get an events
/// row. Ids go in sorted, so two writers never wait on each other in
/// opposite orders.
pub async fn insert_events(
    client: &impl GenericClient,
    events: &[NewEvent],
) -> Result<Vec<String>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    with_columns(client, INSERT_EVENTS, events).await
}

/// The processor's insert: the event_ids insert decides, then the row goes
/// to its time partition. `$1`..`$12` as [`with_columns`] binds them.
const INSERT_EVENTS: &str = "WITH input AS (
                 SELECT DISTINCT ON (event_id) *
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::timestamptz[], $7::timestamptz[], $8::text[], $9::int4[],
                             $10::int8[], $11::text[], $12::int4[])
                      AS e(event_id, event_type, source, user_id, session_id, occurred_at,
                           received_at, payload, kafka_partition, kafka_offset, trace_id,
                           schema_version)
                 ORDER BY event_id, kafka_partition, kafka_offset
             ), fresh AS (
                 INSERT INTO event_ids (event_id, occurred_at)
                 SELECT event_id, occurred_at FROM input
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING event_id
             )
             INSERT INTO events (event_id, event_type, source, user_id, session_id,
                                 occurred_at, received_at, payload, kafka_partition,
                                 kafka_offset, trace_id, schema_version)
             SELECT e.event_id, e.event_type, e.source, e.user_id, e.session_id,
                    e.occurred_at, e.received_at, e.payload::jsonb, e.kafka_partition,
                    e.kafka_offset, e.trace_id, e.schema_version
             FROM input e JOIN fresh USING (event_id)
             RETURNING event_id";

/// Runs `sql` with the events' columns bound as arrays, `$1`..`$12`:
/// event_id, event_type, source, user_id, session_id, occurred_at,
/// received_at, payload (JSON text), kafka_partition, kafka_offset,
/// trace_id, schema_version; answers the first column of each row returned.
/// [`insert_events`] runs its statement this way; the bench runs the
/// statement of the layout before partitions this way too.
pub async fn with_columns(
    client: &impl GenericClient,
    sql: &str,
    events: &[NewEvent],
) -> Result<Vec<String>, StoreError> {
    macro_rules! column {
        ($field:ident) => {
            events.iter().map(|e| &e.$field).collect::<Vec<_>>()
        };
    }
    let rows = client
        .query(
            sql,
            &[
                &column!(event_id),
                &column!(event_type),
                &column!(source),
                &column!(user_id),
                &column!(session_id),
                &column!(occurred_at),
                &column!(received_at),
                &column!(payload_json),
                &column!(partition),
                &column!(offset),
                &column!(trace_id),
                &column!(schema_version),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records dead letters; a record already recorded (same topic, partition and
/// offset: a redelivery) is left as it was. Returns how many were new.
pub async fn insert_dead_letters(
    client: &impl GenericClient,
    letters: &[NewDeadLetter],
) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for d in letters {
        let (keys, values): (Vec<&str>, Vec<&[u8]>) = d
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .unzip();
        inserted += client
            .execute(
                "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, record_key,
                                           record_value, header_keys, header_values, reason,
                                           event_id, event_type, subscription, user_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (subscription, topic, kafka_partition, kafka_offset) DO NOTHING",
                &[
                    &d.topic,
                    &d.partition,
                    &d.offset,
                    &d.key,
                    &d.value,
                    &keys,
                    &values,
                    &d.reason,
                    &d.event_id,
                    &d.event_type,
                    &d.subscription,
                    &d.user_id,
                ],
            )
            .await?;
    }
    Ok(inserted)
}

pub(crate) const EVENT_COLUMNS: &str = "event_id, event_type, source, user_id, session_id, occurred_at, \
     received_at, persisted_at, payload, kafka_partition, kafka_offset, trace_id, schema_version";

pub(crate) fn event_row(r: &tokio_postgres::Row) -> EventRow {
    EventRow {
        event_id: r.get(0),
        event_type: r.get(1),
        source: r.get(2),
        user_id: r.get(3),
        session_id: r.get(4),
        occurred_at: r.get(5),
        received_at: r.get(6),
        persisted_at: r.get(7),
        payload: r.get(8),
        partition: r.get(9),
        offset: r.get(10),
        trace_id: r.get(11),
        schema_version: r.get(12),
    }
}

pub async fn get_event(
    client: &impl GenericClient,
    event_id: &str,
) -> Result<Option<EventRow>, StoreError> {
    // event_ids names the one partition to look in (pruned when the
    // statement runs).
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events
          WHERE event_id = $1
            AND occurred_at = (SELECT occurred_at FROM event_ids WHERE event_id = $1)"
    );
    Ok(client
        .query_opt(&sql, &[&event_id])
        .await?
        .as_ref()
        .map(event_row))
}

/// What ListEvents filters on; empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_types: Vec<String>,
    pub source: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// Inclusive.
    pub occurred_after: Option<SystemTime>,
    /// Exclusive.
    pub occurred_before: Option<SystemTime>,
    /// Each a JSON document the payload must contain (`payload @> doc`).
    pub payload_contains: Vec<serde_json::Value>,
}

/// The last row of a page: the next page starts strictly after it in the
/// order (occurred_at DESC, event_id DESC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub occurred_at: SystemTime,
    pub event_id: String,
}

/// Builds the WHERE clause of a filter with bound parameters only: no value
/// is ever spliced into the SQL text.
pub struct Where {
    pub clauses: Vec<String>,
    pub params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Where {
    pub fn new() -> Self {
        Self {
            clauses: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Adds `template` with `$?` replaced by the next parameter number.
    pub fn push(&mut self, template: &str, value: impl ToSql + Sync + Send + 'static) {
        self.params.push(Box::new(value));
        let n = self.params.len();
        self.clauses.push(template.replace("$?", &format!("${n}")));
    }

    pub fn from_filter(filter: &EventFilter) -> Self {
        let mut w = Self::new();
        if !filter.event_types.is_empty() {
            w.push("event_type = ANY($?)", filter.event_types.clone());
        }
        if let Some(v) = &filter.source {
            w.push("source = $?", v.clone());
        }
        if let Some(v) = &filter.user_id {
            w.push("user_id = $?", v.clone());
        }
        if let Some(v) = &filter.session_id {
            w.push("session_id = $?", v.clone());
        }
        if let Some(t) = filter.occurred_after {
            w.push("occurred_at >= $?", t);
        }
        if let Some(t) = filter.occurred_before {
            w.push("occurred_at < $?", t);
        }
        for doc in &filter.payload_contains {
            w.push("payload @> $?", doc.clone());
        }
        w
    }

    pub fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }

    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

impl Default for Where {
    fn default() -> Self {
        Self::new()
    }
}

/// One page, newest first, starting after `after`.
pub async fn list_events(
    client: &impl GenericClient,
    filter: &EventFilter,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<EventRow>, StoreError> {
    let mut w = Where::from_filter(filter);
    if let Some(c) = after {
        w.params.push(Box::new(c.occurred_at));
        w.params.push(Box::new(c.event_id.clone()));
        let n = w.params.len();
        w.clauses
            .push(format!("(occurred_at, event_id) < (${}, ${n})", n - 1));
    }
    w.params.push(Box::new(limit));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events {} ORDER BY occurred_at DESC, event_id DESC LIMIT ${}",
        w.sql(),
        w.params.len()
    );
    let rows = client.query(&sql, &w.params()).await?;
    Ok(rows.iter().map(event_row).collect())
}

/// For replay from a point in time, per partition: the first stored offset of
/// an event received at or after `at`, or, when none was, one past the last
/// stored offset (nothing of that partition is replayed). Partitions without
/// stored events are absent. (The broker's ListOffsets by timestamp is not
/// reliable, so the stored positions decide.)
pub async fn offsets_received_since(
    client: &impl GenericClient,
    at: SystemTime,
    partitions: &[i32],
) -> Result<Vec<(i32, i64)>, StoreError> {
    // Per partition, two index probes: the first row received at or after
    // `at` (events_by_partition_received), else one past the partition's last
    // stored offset (events_by_position).
    let rows = client
        .query(
            "SELECT p,
                    COALESCE(
                        (SELECT min(e.kafka_offset) FROM events e
                          WHERE e.kafka_partition = p AND e.received_at >= $1),
                        (SELECT max(e.kafka_offset) + 1 FROM events e WHERE e.kafka_partition = p))
             FROM unnest($2::int4[]) AS p
             ORDER BY p",
            &[&at, &partitions],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get(0), r.get::<_, Option<i64>>(1)?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_follows_jsonb() {
        let payload = json!({"order": {"country": "DE", "amount": 3, "tags": ["a", "b"]}});
        assert!(contains(&payload, &json!({"order": {"country": "DE"}})));
        assert!(contains(&payload, &json!({"order": {"amount": 3.0}})));
        assert!(contains(&payload, &json!({"order": {"tags": ["b"]}})));
        assert!(!contains(&payload, &json!({"order": {"country": "FR"}})));
        assert!(!contains(&payload, &json!({"missing": 1})));
    }
}
