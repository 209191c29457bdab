//! The time partitions of `events`: which exist, and creating them ahead.
//!
//! `events` is range-partitioned by `occurred_at` (migration
//! 20261202000000). Range partitions are named `events_p<start>`; the old
//! unpartitioned table of an upgraded deployment is `events_legacy`
//! (everything before its bound), and `events_default` takes any row no
//! range partition covers. New partitions start where the newest ends, with
//! the width stored in `event_partitioning`, so two writers of different
//! settings never overlap.

use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;

use crate::StoreError;

/// How far ahead of now range partitions exist after [`ensure_ahead`].
pub const AHEAD: Duration = Duration::from_secs(3 * 24 * 3600);

/// One partition of `events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// Inclusive; `None` for the legacy partition (MINVALUE) and the default.
    pub from: Option<SystemTime>,
    /// Exclusive; `None` for the default partition.
    pub to: Option<SystemTime>,
    /// The planner's estimate (`pg_class.reltuples`; -1 before the first
    /// ANALYZE).
    pub rows_estimate: i64,
}

impl Partition {
    pub fn is_default(&self) -> bool {
        self.to.is_none()
    }
}

/// Every partition of `events`, ranges in order, the default last.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Partition>, StoreError> {
    // The bounds are read back from their SQL text; the regular expression
    // leaves NULL for MINVALUE and for the default partition.
    let rows = client
        .query(
            "SELECT c.relname::text,
                    (regexp_match(b.bound, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
                    (regexp_match(b.bound, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz,
                    c.reltuples::int8
               FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b
              WHERE i.inhparent = 'events'::regclass",
            &[],
        )
        .await?;
    let mut parts: Vec<Partition> = rows
        .iter()
        .map(|r| Partition {
            name: r.get(0),
            from: r.get(1),
            to: r.get(2),
            rows_estimate: r.get(3),
        })
        .collect();
    // Ranges by their end (the legacy one first), the default last.
    parts.sort_by_key(|p| (p.to.is_none(), p.to));
    Ok(parts)
}

/// The width of new partitions.
pub async fn width(client: &impl GenericClient) -> Result<Duration, StoreError> {
    let row = client
        .query_one(
            "SELECT extract(epoch FROM width)::int8 FROM event_partitioning",
            &[],
        )
        .await?;
    Ok(Duration::from_secs(
        u64::try_from(row.get::<_, i64>(0)).unwrap_or(86_400),
    ))
}

/// Sets the width of partitions created from now on.
pub async fn set_width(client: &impl GenericClient, width: Duration) -> Result<(), StoreError> {
    let seconds = i64::try_from(width.as_secs()).unwrap_or(i64::MAX);
    client
        .execute(
            "UPDATE event_partitioning SET width = make_interval(secs => $1::int8::float8)",
            &[&seconds],
        )
        .await?;
    Ok(())
}

/// A range partition to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub from: SystemTime,
    pub to: SystemTime,
}

/// The partitions missing to cover `[from, until)`. Without a gap after
/// the newest partition: when it ends before `from`, the plan starts there.
/// Each new partition ends on the next multiple of the width counted from
/// 2000-01-01 UTC, or where an existing one starts.
pub fn plan(
    existing: &[Partition],
    width: Duration,
    from: SystemTime,
    until: SystemTime,
) -> Vec<Planned> {
    let width_s = width.as_secs().max(3600);
    let ranges: Vec<(Option<SystemTime>, SystemTime)> = existing
        .iter()
        .filter_map(|p| Some((p.from, p.to?)))
        .collect();
    let mut t = align_down(from, width_s);
    if let Some(newest) = ranges.iter().map(|r| r.1).max() {
        t = t.min(newest);
    }
    let mut planned = Vec::new();
    while t < until {
        if let Some(&(_, to)) = ranges
            .iter()
            .find(|(f, to)| f.is_none_or(|f| f <= t) && t < *to)
        {
            t = to;
            continue;
        }
        let next_start = ranges.iter().filter_map(|r| r.0).filter(|f| *f > t).min();
        let mut end = align_down(t, width_s) + Duration::from_secs(width_s);
        if let Some(n) = next_start {
            end = end.min(n);
        }
        planned.push(Planned {
            name: name(t, width_s),
            from: t,
            to: end,
        });
        t = end;
    }
    planned
}

/// 2000-01-01T00:00:00Z, the origin the widths count from.
const ORIGIN_UNIX: u64 = 946_684_800;

fn align_down(t: SystemTime, width_s: u64) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let since = secs.saturating_sub(ORIGIN_UNIX);
    SystemTime::UNIX_EPOCH + Duration::from_secs(ORIGIN_UNIX + since - since % width_s)
}

/// `events_p20261201` for whole days, `events_p20261201_1300` otherwise.
fn name(start: SystemTime, width_s: u64) -> String {
    let secs = start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (y, m, d) = civil_from_days(secs / 86_400);
    let (h, min) = (secs % 86_400 / 3600, secs % 3600 / 60);
    if width_s.is_multiple_of(86_400) && secs.is_multiple_of(86_400) {
        format!("events_p{y:04}{m:02}{d:02}")
    } else {
        format!("events_p{y:04}{m:02}{d:02}_{h:02}{min:02}")
    }
}

/// (year, month, day) of a day counted from 1970-01-01 (H. Hinnant's
/// algorithm, for days after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Creates the range partitions missing for the next [`AHEAD`] (see
/// [`ensure`]).
pub async fn ensure_ahead(
    client: &mut deadpool_postgres::Object,
    now: SystemTime,
) -> Result<Vec<(Planned, i64)>, StoreError> {
    ensure(client, now, now + AHEAD).await
}

/// Creates the range partitions missing up to `until` (when there are none
/// yet, from `from` aligned down to the width), moving into each the rows
/// the default partition holds for its range. Serialised with migrations
/// and other replicas by the migrators' advisory lock. Returns what it
/// created and how many rows each took from the default partition.
pub async fn ensure(
    client: &mut deadpool_postgres::Object,
    from: SystemTime,
    until: SystemTime,
) -> Result<Vec<(Planned, i64)>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&crate::migrate::LOCK_KEY],
    )
    .await?;
    let existing = list(&tx).await?;
    let width = width(&tx).await?;
    let mut created = Vec::new();
    for p in plan(&existing, width, from, until) {
        let moved: i64 = tx
            .query_one(
                "SELECT tributary_create_event_partition($1, $2, $3)",
                &[&p.name, &p.from, &p.to],
            )
            .await?
            .get(0);
        created.push((p, moved));
    }
    tx.commit().await?;
    for (p, moved) in &created {
        tracing::info!(partition = %p.name, moved_from_default = moved, "created an events partition");
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "2026-12-01T13:20:00Z" (this exact shape only).
    fn at(rfc3339: &str) -> SystemTime {
        let n = |r: std::ops::Range<usize>| rfc3339[r].parse::<u64>().expect("digits");
        let (y, m, d) = (n(0..4), n(5..7), n(8..10));
        let days = (0..)
            .find(|&days| civil_from_days(days) == (y, m, d))
            .expect("a date after 1970");
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19))
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_453), (2025, 12, 31));
        assert_eq!(civil_from_days(20_543), (2026, 3, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn plans_from_the_newest_bound_to_the_horizon() {
        let existing = [
            Partition {
                name: "events_legacy".into(),
                from: None,
                to: Some(at("2026-11-30T00:00:00Z")),
                rows_estimate: 10,
            },
            Partition {
                name: "events_default".into(),
                from: None,
                to: None,
                rows_estimate: 0,
            },
        ];
        let day = Duration::from_secs(86_400);
        let now = at("2026-12-01T13:20:00Z");
        let p = plan(&existing, day, now, now + AHEAD);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "events_p20261130",
                "events_p20261201",
                "events_p20261202",
                "events_p20261203",
                "events_p20261204"
            ]
        );
        assert_eq!(p[0].from, at("2026-11-30T00:00:00Z"));
        assert_eq!(p[4].to, at("2026-12-05T00:00:00Z"));
        // Nothing more once they exist.
        let all: Vec<Partition> = p
            .iter()
            .map(|p| Partition {
                name: p.name.clone(),
                from: Some(p.from),
                to: Some(p.to),
                rows_estimate: 0,
            })
            .collect();
        assert!(plan(&all, day, now, now + AHEAD).is_empty());
    }

    #[test]
    fn a_fresh_table_starts_at_now_aligned_and_hours_get_longer_names() {
        let now = at("2026-12-01T13:20:00Z");
        let p = plan(
            &[],
            Duration::from_secs(6 * 3600),
            now,
            now + Duration::from_secs(3600),
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "events_p20261201_1200");
        assert_eq!(p[0].from, at("2026-12-01T12:00:00Z"));
        assert_eq!(p[0].to, at("2026-12-01T18:00:00Z"));
    }

    #[test]
    fn a_backfill_range_fills_the_days_before_the_oldest() {
        let existing = [Partition {
            name: "events_p20261201".into(),
            from: Some(at("2026-12-01T00:00:00Z")),
            to: Some(at("2026-12-02T00:00:00Z")),
            rows_estimate: 0,
        }];
        let day = Duration::from_secs(86_400);
        let p = plan(
            &existing,
            day,
            at("2026-11-29T08:00:00Z"),
            at("2026-12-03T00:00:00Z"),
        );
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["events_p20261129", "events_p20261130", "events_p20261202"]
        );
        // Under a legacy partition (MINVALUE) nothing is planned before its bound.
        let legacy = [Partition {
            name: "events_legacy".into(),
            from: None,
            to: Some(at("2026-11-30T00:00:00Z")),
            rows_estimate: 0,
        }];
        let p = plan(
            &legacy,
            day,
            at("2026-11-01T00:00:00Z"),
            at("2026-11-30T12:00:00Z"),
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "events_p20261130");
    }

    #[test]
    fn an_unaligned_start_ends_on_the_next_boundary() {
        // After a width change from 6 h to 1 day: the hours before it and
        // after it up to midnight are filled, later partitions are whole days.
        let existing = [Partition {
            name: "events_p20261201_1200".into(),
            from: Some(at("2026-12-01T12:00:00Z")),
            to: Some(at("2026-12-01T18:00:00Z")),
            rows_estimate: 0,
        }];
        let now = at("2026-12-01T13:20:00Z");
        let p = plan(
            &existing,
            Duration::from_secs(86_400),
            now,
            at("2026-12-02T12:00:00Z"),
        );
        let spans: Vec<(&str, SystemTime, SystemTime)> =
            p.iter().map(|p| (p.name.as_str(), p.from, p.to)).collect();
        assert_eq!(
            spans,
            [
                (
                    "events_p20261201",
                    at("2026-12-01T00:00:00Z"),
                    at("2026-12-01T12:00:00Z")
                ),
                (
                    "events_p20261201_1800",
                    at("2026-12-01T18:00:00Z"),
                    at("2026-12-02T00:00:00Z")
                ),
                (
                    "events_p20261202",
                    at("2026-12-02T00:00:00Z"),
                    at("2026-12-03T00:00:00Z")
                ),
            ]
        );
    }
}
