//! Erasure of a user (AdminService.EraseUser) and the tombstones that keep
//! the user's records still in Kafka from coming back.
//!
//! An erasure deletes the user's events, the alerts they raised and the
//! user's dead letters (the processor's and subscriptions'), and records a
//! tombstone: HMAC-SHA256(erasure key, user_id), never the id itself, with
//! each topic partition's end offset at that moment. The processor and
//! dispatch skip the user's records below those offsets (they were in the
//! topic when the user was erased) and handle later ones normally.
//!
//! Race-free by one advisory lock: an erasure takes it exclusively as its
//! transaction's first statement, and every transaction that could write a
//! user's rows back (the processor's batch, a redrive, a subscription's dead
//! letters) takes it shared as its first statement and then asks
//! [`erased`]. So a writer either commits before the erasure's deletes run
//! (and they see its rows), or starts after the erasure committed (and sees
//! its tombstone). The lock also makes erasures commit in `erasure_id`
//! order, which lets [`Tombstones`] follow them by id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;

use crate::hmac::hmac_sha256;
use crate::{Pool, StoreError};

/// The erasure lock (any fixed number; distinct from the migrators' lock).
const LOCK: i64 = 0x7472_6962_5f65_7261; // "trib_era"

/// Dead letters with no `user_id` yet, decoded per round trip.
const BACKFILL_BATCH: i64 = 100;

/// A user's keyed hash: HMAC-SHA256(erasure key, user_id).
pub type UserHash = [u8; 32];

/// The key of the user hashes. Never logged: `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ErasureKey([u8; 32]);

impl std::fmt::Debug for ErasureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErasureKey(..)")
    }
}

impl ErasureKey {
    pub fn user_hash(&self, user_id: &str) -> UserHash {
        hmac_sha256(&self.0, user_id.as_bytes())
    }
}

/// The erasure key, made on first use: 32 bytes from the operating system's
/// CSPRNG, inserted unless a key exists (a concurrent first use loses the
/// race and reads the winner's), then read. Run it outside a transaction
/// that may roll back, or a key could be cached that was never stored.
pub async fn key(client: &impl GenericClient) -> Result<ErasureKey, StoreError> {
    const READ: &str = "SELECT key FROM erasure_key";
    let row = match client.query_opt(READ, &[]).await? {
        Some(row) => row,
        None => {
            let mut fresh = [0u8; 32];
            getrandom::fill(&mut fresh).map_err(|_| {
                StoreError::Invariant("the operating system's random source failed")
            })?;
            client
                .execute(
                    "INSERT INTO erasure_key (key) VALUES ($1) ON CONFLICT (singleton) DO NOTHING",
                    &[&fresh.as_slice()],
                )
                .await?;
            client.query_one(READ, &[]).await?
        }
    };
    let bytes: Vec<u8> = row.get(0);
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Invariant("erasure_key.key is not 32 bytes"))?;
    Ok(ErasureKey(key))
}

/// Waits for running erasures and keeps new ones out until the transaction
/// ends: the first statement of a transaction that writes rows of users.
pub async fn lock_shared(tx: &impl GenericClient) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&LOCK])
        .await?;
    Ok(())
}

/// Waits for every transaction holding the lock shared, and keeps new ones
/// waiting until this transaction ends. Taking it twice in one transaction
/// is harmless (an erasure reads the end offsets under it, then erases).
pub async fn lock_exclusive(tx: &impl GenericClient) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    Ok(())
}

/// [`lock_exclusive`], waiting at most `within` for this and every later
/// lock of the transaction (then [`StoreError::is_lock_timeout`]). While an
/// erasure waits, new shared requests queue behind it: the bound keeps a
/// long redrive from stalling the processor through a waiting erasure.
pub async fn lock_exclusive_within(
    tx: &impl GenericClient,
    within: Duration,
) -> Result<(), StoreError> {
    let ms = format!("{}ms", within.as_millis().max(1));
    tx.execute("SELECT set_config('lock_timeout', $1, true)", &[&ms])
        .await?;
    lock_exclusive(tx).await
}

/// One partition's end offset (the offset its next record gets) when the
/// user was erased: the user's records below it are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOffset {
    pub topic: String,
    pub partition: i32,
    pub end_offset: i64,
}

/// What an erasure removed, and its audit record.
#[derive(Debug, Clone)]
pub struct Erasure {
    pub erasure_id: i64,
    pub erased_at: SystemTime,
    pub events: i64,
    pub alerts: i64,
    /// The processor's dead letters.
    pub dead_letters: i64,
    /// Subscriptions' dead letters.
    pub subscription_dead_letters: i64,
}

/// Reads the user of a dead letter's record value (the event envelope);
/// `None` when it does not decode. The store does not know the envelope, so
/// the caller passes this.
pub type UserOf = dyn Fn(&[u8]) -> Option<String> + Sync;

/// Fills `user_id` of up to [`BACKFILL_BATCH`] dead letters that have none
/// (rows from before the column, records that did not decode), from their
/// record value; '' when it does not decode, so each row is decoded once.
/// True when it filled a whole batch (more may be left).
pub async fn backfill_dead_letter_users(
    client: &impl GenericClient,
    user_of: &UserOf,
) -> Result<bool, StoreError> {
    let rows = client
        .query(
            "SELECT id, record_value FROM dead_letters WHERE user_id IS NULL ORDER BY id LIMIT $1",
            &[&BACKFILL_BATCH],
        )
        .await?;
    let (ids, users): (Vec<i64>, Vec<String>) = rows
        .iter()
        .map(|r| {
            let value: Option<Vec<u8>> = r.get(1);
            let user = value.as_deref().and_then(user_of).unwrap_or_default();
            (r.get::<_, i64>(0), user)
        })
        .unzip();
    if !ids.is_empty() {
        client
            .execute(
                "UPDATE dead_letters d SET user_id = u.user_id
                 FROM unnest($1::int8[], $2::text[]) AS u(id, user_id)
                 WHERE d.id = u.id AND d.user_id IS NULL",
                &[&ids, &users],
            )
            .await?;
    }
    Ok(ids.len() as i64 == BACKFILL_BATCH)
}

/// Erases `user_id` inside `tx` (commit it to make the erasure count):
/// takes the erasure lock exclusively, fills the missing users of dead
/// letters, deletes the user's events, their alerts and the user's dead
/// letters, and records the tombstone with `end_offsets`. The caller should
/// read `end_offsets` after taking the lock itself ([`lock_exclusive`]), so
/// that nothing a writer published before the erasure lies above them.
pub async fn erase_user(
    tx: &impl GenericClient,
    user_id: &str,
    key: &ErasureKey,
    end_offsets: &[EndOffset],
    user_of: &UserOf,
) -> Result<Erasure, StoreError> {
    if user_id.is_empty() {
        return Err(StoreError::Invariant("erase_user needs a user_id"));
    }
    lock_exclusive(tx).await?;
    // Normally nothing is left to fill by now (the caller fills them before
    // taking the lock); rows written meanwhile by an older processor are.
    while backfill_dead_letter_users(tx, user_of).await? {}

    // user_id is not the partition key: every partition's events_by_user
    // index is probed. The user's event ids leave event_ids with the rows.
    let counts = tx
        .query_one(
            "WITH gone AS (
                 DELETE FROM events WHERE user_id = $1 RETURNING event_id
             ), gone_ids AS (
                 DELETE FROM event_ids WHERE event_id IN (SELECT event_id FROM gone) RETURNING 1
             ), gone_alerts AS (
                 DELETE FROM alerts WHERE event_id IN (SELECT event_id FROM gone) RETURNING 1
             )
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_alerts)",
            &[&user_id],
        )
        .await?;
    let (events, alerts): (i64, i64) = (counts.get(0), counts.get(1));
    let letters = tx
        .query_one(
            "WITH gone AS (
                 DELETE FROM dead_letters WHERE user_id = $1 RETURNING subscription
             )
             SELECT count(*) FILTER (WHERE subscription = ''),
                    count(*) FILTER (WHERE subscription <> '')
             FROM gone",
            &[&user_id],
        )
        .await?;
    let (dead_letters, subscription_dead_letters): (i64, i64) = (letters.get(0), letters.get(1));

    let hash = key.user_hash(user_id);
    let audit = tx
        .query_one(
            "INSERT INTO erasures (user_hash, events, alerts, dead_letters, subscription_dead_letters)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING erasure_id, erased_at",
            &[
                &hash.as_slice(),
                &events,
                &alerts,
                &dead_letters,
                &subscription_dead_letters,
            ],
        )
        .await?;
    let erasure_id: i64 = audit.get(0);
    let (topics, partitions, ends): (Vec<&str>, Vec<i32>, Vec<i64>) = end_offsets
        .iter()
        .map(|o| (o.topic.as_str(), o.partition, o.end_offset))
        .fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |(mut t, mut p, mut e), (topic, partition, end)| {
                t.push(topic);
                p.push(partition);
                e.push(end);
                (t, p, e)
            },
        );
    tx.execute(
        "INSERT INTO erasure_offsets (erasure_id, user_hash, topic, kafka_partition, end_offset)
         SELECT $1, $2, o.topic, o.kafka_partition, o.end_offset
         FROM unnest($3::text[], $4::int4[], $5::int8[]) AS o(topic, kafka_partition, end_offset)",
        &[&erasure_id, &hash.as_slice(), &topics, &partitions, &ends],
    )
    .await?;
    Ok(Erasure {
        erasure_id,
        erased_at: audit.get(1),
        events,
        alerts,
        dead_letters,
        subscription_dead_letters,
    })
}

/// Which of `records` (user_id, partition, offset) of `topic` belong to
/// erased users and lie below their tombstone's end offset: those must not
/// be stored or delivered. One indexed query for the records' distinct
/// users (none when no record has a user). Inside a writer's transaction,
/// call it after [`lock_shared`].
pub async fn erased<'a>(
    client: &impl GenericClient,
    key: &ErasureKey,
    topic: &str,
    records: impl IntoIterator<Item = (&'a str, i32, i64)>,
) -> Result<HashSet<(i32, i64)>, StoreError> {
    let mut hashes: HashMap<&'a str, UserHash> = HashMap::new();
    let records: Vec<(UserHash, i32, i64)> = records
        .into_iter()
        .filter(|(user, _, _)| !user.is_empty())
        .map(|(user, partition, offset)| {
            let hash = *hashes.entry(user).or_insert_with(|| key.user_hash(user));
            (hash, partition, offset)
        })
        .collect();
    if records.is_empty() {
        return Ok(HashSet::new());
    }
    let wanted: Vec<&[u8]> = hashes.values().map(<[u8; 32]>::as_slice).collect();
    let rows = client
        .query(
            "SELECT user_hash, kafka_partition, max(end_offset) FROM erasure_offsets
             WHERE user_hash = ANY($1) AND topic = $2
             GROUP BY user_hash, kafka_partition",
            &[&wanted, &topic],
        )
        .await?;
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let mut ends: HashMap<(UserHash, i32), i64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let hash: Vec<u8> = r.get(0);
        if let Ok(hash) = UserHash::try_from(hash) {
            ends.insert((hash, r.get(1)), r.get(2));
        }
    }
    Ok(records
        .into_iter()
        .filter(|(hash, partition, offset)| {
            ends.get(&(*hash, *partition))
                .is_some_and(|end| offset < end)
        })
        .map(|(_, partition, offset)| (partition, offset))
        .collect())
}

/// The tombstones in memory, for a reader that judges records one by one
/// (dispatch): refreshed from `erasure_offsets` every few seconds by
/// [`follow`], so an erasure is seen within one refresh interval.
#[derive(Clone, Default)]
pub struct Tombstones {
    known: Arc<RwLock<Known>>,
    loaded: Arc<AtomicBool>,
}

#[derive(Default)]
struct Known {
    key: Option<ErasureKey>,
    /// The highest erasure_id read (erasures commit in id order).
    last_erasure: i64,
    /// Per user hash: (topic, partition, the highest end offset).
    ends: HashMap<UserHash, Vec<(String, i32, i64)>>,
}

impl Tombstones {
    /// Whether the first load succeeded (before it, nothing is known erased).
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The key, once loaded.
    pub fn key(&self) -> Option<ErasureKey> {
        self.read().key.clone()
    }

    /// Whether the record at `partition`/`offset` of `topic` belongs to an
    /// erased user and lies below the tombstone's end offset. No hashing
    /// while nobody was erased.
    pub fn is_erased(&self, topic: &str, user_id: &str, partition: i32, offset: i64) -> bool {
        if user_id.is_empty() {
            return false;
        }
        let known = self.read();
        let Some(key) = known.key.as_ref().filter(|_| !known.ends.is_empty()) else {
            return false;
        };
        known.ends.get(&key.user_hash(user_id)).is_some_and(|ends| {
            ends.iter()
                .any(|(t, p, end)| t == topic && *p == partition && offset < *end)
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the key (the first time) and the tombstones recorded since the
    /// last refresh. Returns how many rows were new.
    pub async fn refresh(&self, pool: &Pool) -> Result<usize, StoreError> {
        let client = pool.get().await?;
        let (has_key, last) = {
            let k = self.read();
            (k.key.is_some(), k.last_erasure)
        };
        let new_key = if has_key {
            None
        } else {
            Some(key(&client).await?)
        };
        let rows = client
            .query(
                "SELECT erasure_id, user_hash, topic, kafka_partition, end_offset
                 FROM erasure_offsets WHERE erasure_id > $1 ORDER BY erasure_id",
                &[&last],
            )
            .await?;
        let mut known = self
            .known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(k) = new_key {
            known.key = Some(k);
        }
        for r in &rows {
            let id: i64 = r.get(0);
            let Ok(hash) = UserHash::try_from(r.get::<_, Vec<u8>>(1)) else {
                continue;
            };
            let (topic, partition, end): (String, i32, i64) = (r.get(2), r.get(3), r.get(4));
            known.last_erasure = known.last_erasure.max(id);
            let ends = known.ends.entry(hash).or_default();
            match ends
                .iter_mut()
                .find(|(t, p, _)| *t == topic && *p == partition)
            {
                Some(e) => e.2 = e.2.max(end),
                None => ends.push((topic, partition, end)),
            }
        }
        drop(known);
        self.loaded.store(true, Ordering::Release);
        Ok(rows.len())
    }
}

/// Refreshes `tombstones` every `every` until `stop` resolves; a failed
/// refresh keeps what is known and is retried at the next tick.
pub async fn follow(
    tombstones: Tombstones,
    pool: Pool,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        match tombstones.refresh(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tombstones = n, "erasure tombstones loaded"),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot read erasure tombstones; keeping the known ones")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_never_printed() {
        assert_eq!(format!("{:?}", ErasureKey([7; 32])), "ErasureKey(..)");
    }

    #[test]
    fn tombstones_cover_a_users_records_below_the_end_offset_only() {
        let key = ErasureKey([1; 32]);
        let tombstones = Tombstones::default();
        assert!(!tombstones.is_erased("events", "u1", 0, 0), "nothing known");
        {
            let mut known = tombstones.known.write().unwrap_or_else(|e| e.into_inner());
            known.key = Some(key.clone());
            known
                .ends
                .insert(key.user_hash("u1"), vec![("events".into(), 0, 10)]);
        }
        assert!(tombstones.is_erased("events", "u1", 0, 9));
        assert!(
            !tombstones.is_erased("events", "u1", 0, 10),
            "after the erasure"
        );
        assert!(
            !tombstones.is_erased("events", "u1", 1, 0),
            "another partition"
        );
        assert!(!tombstones.is_erased("other", "u1", 0, 0), "another topic");
        assert!(!tombstones.is_erased("events", "u2", 0, 0), "another user");
        assert!(!tombstones.is_erased("events", "", 0, 0), "no user");
        assert_ne!(key.user_hash("u1"), ErasureKey([2; 32]).user_hash("u1"));
    }
}
