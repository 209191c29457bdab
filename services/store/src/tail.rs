//! Live tail: the processor announces each committed batch with a NOTIFY on
//! [`CHANNEL`] inside its transaction (so it is delivered only on commit);
//! each query replica LISTENs once and reads the announced rows once for all
//! of its tailing clients.
//!
//! The payload names Kafka positions, not event ids: a batch of 1000 ids
//! would not fit NOTIFY's 8000-byte limit, one range per partition does.

use deadpool_postgres::GenericClient;

use crate::StoreError;
use crate::events::{EVENT_COLUMNS, EventRow, event_row};

pub const CHANNEL: &str = "tributary_events";

/// Offsets `first..=last` of one partition, all committed in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// The ranges covering `positions` (partition, offset), one per partition.
pub fn ranges(positions: impl IntoIterator<Item = (i32, i64)>) -> Vec<Range> {
    let mut by_partition: std::collections::BTreeMap<i32, (i64, i64)> = Default::default();
    for (p, o) in positions {
        let e = by_partition.entry(p).or_insert((o, o));
        e.0 = e.0.min(o);
        e.1 = e.1.max(o);
    }
    by_partition
        .into_iter()
        .map(|(partition, (first, last))| Range {
            partition,
            first,
            last,
        })
        .collect()
}

pub fn encode(ranges: &[Range]) -> String {
    serde_json::Value::Array(
        ranges
            .iter()
            .map(|r| serde_json::json!([r.partition, r.first, r.last]))
            .collect(),
    )
    .to_string()
}

pub fn decode(payload: &str) -> Option<Vec<Range>> {
    let value: Vec<(i32, i64, i64)> = serde_json::from_str(payload).ok()?;
    Some(
        value
            .into_iter()
            .map(|(partition, first, last)| Range {
                partition,
                first,
                last,
            })
            .collect(),
    )
}

/// Announces committed rows; call inside the transaction that inserts them.
pub async fn notify_committed(
    client: &impl GenericClient,
    ranges: &[Range],
) -> Result<(), StoreError> {
    if ranges.is_empty() {
        return Ok(());
    }
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &encode(ranges)])
        .await?;
    Ok(())
}

/// The rows of announced ranges, oldest first.
pub async fn rows_in(
    client: &impl GenericClient,
    ranges: &[Range],
) -> Result<Vec<EventRow>, StoreError> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let partitions: Vec<i32> = ranges.iter().map(|r| r.partition).collect();
    let firsts: Vec<i64> = ranges.iter().map(|r| r.first).collect();
    let lasts: Vec<i64> = ranges.iter().map(|r| r.last).collect();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e
         JOIN unnest($1::int4[], $2::int8[], $3::int8[]) AS r(p, first, last)
           ON e.kafka_partition = r.p AND e.kafka_offset BETWEEN r.first AND r.last
         ORDER BY e.occurred_at, e.event_id"
    );
    let rows = client.query(&sql, &[&partitions, &firsts, &lasts]).await?;
    Ok(rows.iter().map(event_row).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_per_partition_round_trips() {
        let r = ranges([(1, 5), (0, 9), (1, 3), (1, 7)]);
        assert_eq!(
            r,
            [
                Range {
                    partition: 0,
                    first: 9,
                    last: 9
                },
                Range {
                    partition: 1,
                    first: 3,
                    last: 7
                }
            ]
        );
        assert_eq!(decode(&encode(&r)), Some(r));
        assert_eq!(decode("garbage"), None);
    }
}
