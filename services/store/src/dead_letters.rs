//! Dead letters: listing, and claiming them for a redrive exactly once. The
//! processor's letters have subscription ''; a subscription's are redriven
//! by dispatch delivering them again (the redrive queue below).

use std::time::SystemTime;

use deadpool_postgres::GenericClient;

use crate::StoreError;
use crate::events::Where;

#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Whose letters: '' for the processor's.
    pub subscription: String,
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
    pub subscription: String,
    pub redrive_requested_at: Option<SystemTime>,
}

const COLUMNS: &str = "id, topic, kafka_partition, kafka_offset, record_key, record_value, \
     header_keys, header_values, reason, event_id, event_type, first_seen_at, redriven_at, \
     subscription, redrive_requested_at";

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
        subscription: r.get(13),
        redrive_requested_at: r.get(14),
    }
}

fn where_clause(filter: &DeadLetterFilter) -> Where {
    let mut w = Where::new();
    w.push("subscription = $?", filter.subscription.clone());
    if let Some(s) = &filter.reason_contains {
        // strpos, not LIKE: the client's text is matched literally.
        w.push("strpos(reason, $?) > 0", s.clone());
    }
    if let Some(t) = &filter.topic {
        w.push("topic = $?", t.clone());
    }
    if !filter.include_redriven {
        w.clauses
            .push("redriven_at IS NULL AND redrive_requested_at IS NULL".into());
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

/// Locks the selected dead letters not redriven yet and marks them: the
/// processor's redriven (inside `tx`: commit only after re-publishing, roll
/// back on failure), a subscription's as waiting for dispatch to deliver
/// them again. Returns them, and the selected ids that had been redriven (or
/// asked for) before. A concurrent redrive of the same ids waits on the row
/// locks, then finds them marked: no dead letter is redriven twice.
pub async fn claim_for_redrive(
    tx: &impl GenericClient,
    selection: &Selection,
    limit: i64,
) -> Result<(Vec<DeadLetterRow>, Vec<i64>), StoreError> {
    let (ids, already): (Vec<i64>, Vec<i64>) = match selection {
        Selection::Ids(ids) => {
            let rows = tx
                .query(
                    "SELECT id, redriven_at IS NOT NULL OR redrive_requested_at IS NOT NULL
                     FROM dead_letters WHERE id = ANY($1) ORDER BY id FOR UPDATE",
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
        "UPDATE dead_letters
         SET redriven_at = CASE WHEN subscription = '' THEN clock_timestamp() END,
             redrive_requested_at = CASE WHEN subscription <> '' THEN clock_timestamp() END
         WHERE id = ANY($1) AND redriven_at IS NULL AND redrive_requested_at IS NULL
         RETURNING {COLUMNS}"
    );
    let mut claimed: Vec<DeadLetterRow> = tx.query(&sql, &[&ids]).await?.iter().map(row).collect();
    claimed.sort_by_key(|d| d.id);
    Ok((claimed, already))
}

/// A subscription's letters waiting to be delivered again, oldest first.
pub async fn redrive_queue(
    client: &impl GenericClient,
    subscription: &str,
    limit: i64,
) -> Result<Vec<DeadLetterRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters
         WHERE subscription = $1 AND redrive_requested_at IS NOT NULL AND redriven_at IS NULL
         ORDER BY id LIMIT $2"
    );
    let rows = client.query(&sql, &[&subscription, &limit]).await?;
    Ok(rows.iter().map(row).collect())
}

/// Ends a redrive of `ids`: delivered (the endpoint answered 2xx) marks them
/// redriven; otherwise the request is cleared and `reason` says why, so they
/// can be redriven again later.
pub async fn finish_redrive(
    client: &impl GenericClient,
    ids: &[i64],
    delivered: bool,
    reason: &str,
) -> Result<u64, StoreError> {
    let n = if delivered {
        client
            .execute(
                "UPDATE dead_letters SET redriven_at = clock_timestamp()
                 WHERE id = ANY($1) AND redriven_at IS NULL",
                &[&ids],
            )
            .await?
    } else {
        client
            .execute(
                "UPDATE dead_letters SET redrive_requested_at = NULL, reason = $2
                 WHERE id = ANY($1) AND redriven_at IS NULL",
                &[&ids, &reason],
            )
            .await?
    };
    Ok(n)
}
