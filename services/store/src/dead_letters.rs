//! Dead letters: listing, and claiming them for a redrive exactly once.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;

use crate::StoreError;
use crate::events::Where;

#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub reason_contains: Option<String>,
    pub topic: Option<String>,
    pub include_redriven: bool,
    pub first_seen_after: Option<SystemTime>,
    pub first_seen_before: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub reason: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub first_seen_at: SystemTime,
    pub redriven_at: Option<SystemTime>,
}

const COLUMNS: &str = "id, topic, kafka_partition, kafka_offset, record_key, record_value, \
     header_keys, header_values, reason, event_id, event_type, first_seen_at, redriven_at";

fn row(r: &tokio_postgres::Row) -> DeadLetterRow {
    let keys: Vec<String> = r.get(6);
    let values: Vec<Vec<u8>> = r.get(7);
    DeadLetterRow {
        id: r.get(0),
        topic: r.get(1),
        partition: r.get(2),
        offset: r.get(3),
        key: r.get(4),
        value: r.get(5),
        headers: keys.into_iter().zip(values).collect(),
        reason: r.get(8),
        event_id: r.get(9),
        event_type: r.get(10),
        first_seen_at: r.get(11),
        redriven_at: r.get(12),
    }
}

fn where_clause(filter: &DeadLetterFilter) -> Where {
    let mut w = Where::new();
    if let Some(s) = &filter.reason_contains {
        // strpos, not LIKE: the client's text is matched literally.
        w.push("strpos(reason, $?) > 0", s.clone());
    }
    if let Some(t) = &filter.topic {
        w.push("topic = $?", t.clone());
    }
    if !filter.include_redriven {
        w.clauses.push("redriven_at IS NULL".into());
    }
    if let Some(t) = filter.first_seen_after {
        w.push("first_seen_at >= $?", t);
    }
    if let Some(t) = filter.first_seen_before {
        w.push("first_seen_at < $?", t);
    }
    w
}

/// Newest first, after the dead letter with id `after` (keyset paging).
pub async fn list(
    client: &impl GenericClient,
    filter: &DeadLetterFilter,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<DeadLetterRow>, StoreError> {
    let mut w = where_clause(filter);
    if let Some(id) = after {
        w.push("id < $?", id);
    }
    w.params.push(Box::new(limit));
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters {} ORDER BY id DESC LIMIT ${}",
        w.sql(),
        w.params.len()
    );
    let rows = client.query(&sql, &w.params()).await?;
    Ok(rows.iter().map(row).collect())
}

/// The ids a redrive selects: those given, or all matching a filter.
pub enum Selection {
    Ids(Vec<i64>),
    Filter(DeadLetterFilter),
}

/// Locks the selected dead letters not redriven yet and marks them redriven
/// (inside `tx`: commit only after re-publishing, roll back on failure).
/// Returns them, and the selected ids that had been redriven before. A
/// concurrent redrive of the same ids waits on the row locks, then finds
/// them redriven: no dead letter is re-published twice.
pub async fn claim_for_redrive(
    tx: &impl GenericClient,
    selection: &Selection,
    limit: i64,
) -> Result<(Vec<DeadLetterRow>, Vec<i64>), StoreError> {
    let (ids, already): (Vec<i64>, Vec<i64>) = match selection {
        Selection::Ids(ids) => {
            let rows = tx
                .query(
                    "SELECT id, redriven_at IS NOT NULL FROM dead_letters WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                    &[ids],
                )
                .await?;
            let mut fresh = Vec::new();
            let mut done = Vec::new();
            for r in &rows {
                if r.get::<_, bool>(1) {
                    done.push(r.get(0));
                } else {
                    fresh.push(r.get(0));
                }
            }
            (fresh, done)
        }
        Selection::Filter(filter) => {
            let mut f = filter.clone();
            f.include_redriven = false;
            let mut w = where_clause(&f);
            w.params.push(Box::new(limit));
            let sql = format!(
                "SELECT id FROM dead_letters {} ORDER BY id LIMIT ${} FOR UPDATE SKIP LOCKED",
                w.sql(),
                w.params.len()
            );
            let rows = tx.query(&sql, &w.params()).await?;
            (rows.iter().map(|r| r.get(0)).collect(), Vec::new())
        }
    };
    let sql = format!(
        "UPDATE dead_letters SET redriven_at = clock_timestamp()
         WHERE id = ANY($1) AND redriven_at IS NULL RETURNING {COLUMNS}"
    );
    let mut claimed: Vec<DeadLetterRow> = tx.query(&sql, &[&ids]).await?.iter().map(row).collect();
    claimed.sort_by_key(|d| d.id);
    Ok((claimed, already))
}
