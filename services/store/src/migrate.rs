//! Embedded, versioned schema migrations.
//!
//! Versions are UTC timestamps (`YYYYMMDDhhmmss_name`), so two changes that
//! each add a migration never pick the same name. Each migration runs in its
//! own transaction under an advisory lock (several replicas may start at
//! once); a migration edited after it was applied is refused.

use crate::StoreError;
use crate::pool::Pool;

pub struct Migration {
    pub version: &'static str,
    pub sql: &'static str,
}

/// In order. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: "20261121230000_events_and_dead_letters",
        sql: include_str!("../migrations/20261121230000_events_and_dead_letters.sql"),
    },
    Migration {
        version: "20261122004500_query_depth",
        sql: include_str!("../migrations/20261122004500_query_depth.sql"),
    },
    Migration {
        version: "20261122010500_registry_and_rules",
        sql: include_str!("../migrations/20261122010500_registry_and_rules.sql"),
    },
    Migration {
        version: "20261122015500_replay_index",
        sql: include_str!("../migrations/20261122015500_replay_index.sql"),
    },
    Migration {
        version: "20261122090000_payload_gin_no_fastupdate",
        sql: include_str!("../migrations/20261122090000_payload_gin_no_fastupdate.sql"),
    },
    Migration {
        version: "20261122110000_payload_gin_small_pending_list",
        sql: include_str!("../migrations/20261122110000_payload_gin_small_pending_list.sql"),
    },
    Migration {
        version: "20261201000000_api_keys",
        sql: include_str!("../migrations/20261201000000_api_keys.sql"),
    },
    Migration {
        version: "20261201120000_subscriptions",
        sql: include_str!("../migrations/20261201120000_subscriptions.sql"),
    },
    Migration {
        version: "20261201130000_subscription_dead_letters",
        sql: include_str!("../migrations/20261201130000_subscription_dead_letters.sql"),
    },
    Migration {
        version: "20261202000000_partitioned_events",
        sql: include_str!("../migrations/20261202000000_partitioned_events.sql"),
    },
    Migration {
        version: "20261202010000_retention",
        sql: include_str!("../migrations/20261202010000_retention.sql"),
    },
    Migration {
        version: "20261202100000_erasure",
        sql: include_str!("../migrations/20261202100000_erasure.sql"),
    },
    Migration {
        version: "20261203000000_detach_then_drop",
        sql: include_str!("../migrations/20261203000000_detach_then_drop.sql"),
    },
];

/// Any fixed number; all Tributary migrators contend for this one lock.
pub const LOCK_KEY: i64 = 0x7472_6962_7574_6172; // "tributar"

/// The migration that makes events a partitioned table.
pub const PARTITIONED_EVENTS: &str = "20261202000000_partitioned_events";

impl Migration {
    /// The first sentence of its leading comment.
    pub fn summary(&self) -> String {
        let comment: Vec<&str> = self
            .sql
            .lines()
            .map_while(|l| l.strip_prefix("--"))
            .map(str::trim)
            .collect();
        let text = comment.join(" ");
        match text.find(". ") {
            Some(end) => text[..=end].to_owned(),
            None if text.is_empty() => "(no comment)".to_owned(),
            None => text,
        }
    }
}

/// The migrations not applied yet, in order (reads only).
pub async fn pending(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<Vec<&'static Migration>, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    let applied: std::collections::HashSet<String> = if exists {
        client
            .query("SELECT version FROM schema_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Default::default()
    };
    Ok(MIGRATIONS
        .iter()
        .filter(|m| !applied.contains(m.version))
        .collect())
}

/// What [`PARTITIONED_EVENTS`] will do to the events already stored, as
/// lines for `migrate --dry-run` (reads only).
pub async fn conversion_plan(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<Vec<String>, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('events') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(vec!["events: created partitioned (a new database)".into()]);
    }
    let row = client
        .query_one(
            "SELECT count(*), max(occurred_at)::text,
                    (date_bin('1 day', max(occurred_at), timestamptz '2000-01-01 00:00:00+00')
                     + interval '1 day')::text
               FROM events",
            &[],
        )
        .await?;
    let rows: i64 = row.get(0);
    Ok(
        match (
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<String>>(2),
        ) {
            (Some(newest), Some(bound)) => vec![
                format!(
                    "events: {rows} row(s) stay in place as partition events_legacy (occurred_at before {bound}; the newest is {newest})"
                ),
                format!(
                    "event_ids: filled with {rows} row(s); the processor's inserts wait until the migration commits, queries wait only for its last steps (docs/upgrading.md)"
                ),
                "events_default: created; new partitions follow the legacy one".into(),
            ],
            _ => vec!["events: empty; replaced by the partitioned table".into()],
        },
    )
}

/// Applies what is missing, then creates the partitions of the next days;
/// returns the versions it applied.
pub async fn run(pool: &Pool) -> Result<Vec<&'static str>, StoreError> {
    run_with(pool, None).await
}

/// [`run`], setting the width of partitions created from now on (`None`
/// keeps the stored one).
pub async fn run_with(
    pool: &Pool,
    width: Option<std::time::Duration>,
) -> Result<Vec<&'static str>, StoreError> {
    migrate_to(pool, None, Some(width)).await
}

/// Applies the migrations up to and including `last`, nothing after it and
/// no partition upkeep: an older schema, for upgrade tests and the bench's
/// baseline of the layout before partitions.
pub async fn run_until(pool: &Pool, last: &str) -> Result<Vec<&'static str>, StoreError> {
    migrate_to(pool, Some(last), None).await
}

/// Under the migrators' lock: the migrations up to `last` (all when
/// `None`), then, with `upkeep`, the width it names (if any) and the
/// partitions of the next days.
async fn migrate_to(
    pool: &Pool,
    last: Option<&str>,
    upkeep: Option<Option<std::time::Duration>>,
) -> Result<Vec<&'static str>, StoreError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let mut result = apply(&mut client, last).await;
    // At every run: the width, and the partitions of the next days (their
    // advisory lock is this one again, held by this session already).
    if result.is_ok()
        && let Some(width) = upkeep
        && let Err(e) = prepare_partitions(&mut client, width).await
    {
        result = Err(e);
    }
    // Unlock even when a migration failed; the session ends with the
    // connection anyway, but the pool keeps connections.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn prepare_partitions(
    client: &mut deadpool_postgres::Object,
    width: Option<std::time::Duration>,
) -> Result<(), StoreError> {
    if let Some(width) = width
        && crate::partitions::width(&*client).await? != width
    {
        crate::partitions::set_width(&*client, width).await?;
        tracing::info!(
            seconds = width.as_secs(),
            "new partitions of events get a new width"
        );
    }
    crate::partitions::ensure_ahead(client, std::time::SystemTime::now()).await?;
    Ok(())
}

async fn apply(
    client: &mut deadpool_postgres::Object,
    last: Option<&str>,
) -> Result<Vec<&'static str>, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    text PRIMARY KEY,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let rows = client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?;
    let applied: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut done = Vec::new();
    let upto = match last {
        Some(v) => MIGRATIONS
            .iter()
            .position(|m| m.version == v)
            .map(|i| i + 1)
            .ok_or(StoreError::Invariant("run_until: no such migration"))?,
        None => MIGRATIONS.len(),
    };
    for m in &MIGRATIONS[..upto] {
        let checksum = checksum(m.sql);
        if let Some(existing) = applied.get(m.version) {
            if *existing != checksum {
                return Err(StoreError::MigrationChanged {
                    version: m.version.to_owned(),
                    applied: existing.clone(),
                    embedded: checksum,
                });
            }
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
            &[&m.version, &checksum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, "applied migration");
        done.push(m.version);
    }
    Ok(done)
}

/// FNV-1a 64 of the text: stable across builds and platforms.
pub fn checksum(text: &str) -> String {
    checksum_bytes(text.as_bytes())
}

/// FNV-1a 64 as 16 hex digits.
pub fn checksum_bytes(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_are_unique_and_ordered() {
        let versions: Vec<&str> = super::MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert!(
            versions
                .iter()
                .all(|v| v.len() > 15 && v.as_bytes()[14] == b'_')
        );
    }
}
