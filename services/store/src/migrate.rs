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
        version: "20261202100000_erasure",
        sql: include_str!("../migrations/20261202100000_erasure.sql"),
    },
];

/// Any fixed number; all Tributary migrators contend for this one lock.
const LOCK_KEY: i64 = 0x7472_6962_7574_6172; // "tributar"

/// Applies what is missing; returns the versions it applied.
pub async fn run(pool: &Pool) -> Result<Vec<&'static str>, StoreError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply(&mut client).await;
    // Unlock even when a migration failed; the session ends with the
    // connection anyway, but the pool keeps connections.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply(client: &mut deadpool_postgres::Object) -> Result<Vec<&'static str>, StoreError> {
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
    for m in MIGRATIONS {
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
