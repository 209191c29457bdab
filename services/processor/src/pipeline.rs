//! The consume → store → commit loop.
//!
//! At-least-once: a batch's offsets are stored only after its rows (and its
//! dead letters) are committed, so a crash re-delivers rather than loses.
//! Exactly-once rows: the insert ignores event ids already stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt as _;
use opentelemetry::trace::SpanContext;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tributary_kafka::consumer::Consumer;
use tributary_kafka::producer::{Producer, Record};
use tributary_platform::shutdown::CancellationToken;
use tributary_store::Pool;
use tributary_store::erasure::{self, ErasureKey};
use tributary_store::events::{self, NewDeadLetter, NewEvent};

use crate::metrics::ProcessorMetrics;
use tributary_platform::record::{self as decode, Decoded};

pub struct Pipeline {
    pub consumer: Arc<Consumer>,
    /// The topic consumed (erasure tombstones are per topic).
    pub topic: String,
    pub pool: Pool,
    pub dlq: Producer,
    pub dlq_topic: String,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    /// Batches stored at once (each in its own transaction).
    pub store_concurrency: usize,
    pub max_backoff: Duration,
    pub metrics: ProcessorMetrics,
    pub schemas: tributary_store::schema_cache::SchemaCache,
    pub rules: crate::rules::RuleCache,
    /// Where rule webhooks may connect.
    pub webhooks: tributary_platform::egress::EgressPolicy,
    /// The key of erasure tombstones' user hashes, read (or made) once.
    pub erasure_key: tokio::sync::OnceCell<ErasureKey>,
}

/// Why storing a batch stopped short.
enum Interrupted {
    Shutdown,
}

impl Pipeline {
    /// Runs until `token` is cancelled; then commits what was stored.
    pub async fn run(self, token: CancellationToken) {
        // Records that bypassed ingest are checked against registered
        // schemas: consuming before they are loaded would let them through.
        while !(self.schemas.loaded() && self.rules.loaded()) {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        // Batches are collected by their own task, so collecting the next
        // never competes with (or is cancelled by) storing the previous ones.
        let (batches_tx, mut batches) = tokio::sync::mpsc::channel::<Vec<OwnedMessage>>(1);
        let collector = tokio::spawn(collect_batches(
            self.consumer.clone(),
            self.batch_size,
            self.batch_timeout,
            batches_tx,
        ));
        // Up to `store_concurrency` batches are stored at once (PostgreSQL
        // spends most of a batch's time in index updates on one core); they
        // complete in the order they were taken, so offsets only ever move
        // forward past batches that are all committed.
        let mut storing = futures_util::stream::FuturesOrdered::<
            futures_util::future::BoxFuture<'_, (Vec<OwnedMessage>, Result<(), Interrupted>)>,
        >::new();
        // Set when a batch ended unstored: no later batch may move offsets.
        let mut interrupted = false;
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                Some((batch, outcome)) = storing.next(), if !storing.is_empty() => match outcome {
                    Ok(()) => self.store_offsets(&batch),
                    Err(Interrupted::Shutdown) => {
                        interrupted = true;
                        break;
                    }
                },
                batch = batches.recv(), if storing.len() < self.store_concurrency => {
                    let Some(batch) = batch else { break };
                    let this = &self;
                    let token = &token;
                    storing.push_back(Box::pin(async move {
                        let outcome = this.store_batch(&batch, token).await;
                        (batch, outcome)
                    }));
                }
            }
        }
        collector.abort();
        let _ = collector.await;
        // Batches being stored finish (a store stops early only when the
        // database is down); offsets move past them in order, as above, and
        // never past a batch that ended unstored. Dropping the rest rolls
        // their transactions back; they are read again after a restart.
        while !interrupted && let Some((batch, outcome)) = storing.next().await {
            match outcome {
                Ok(()) => self.store_offsets(&batch),
                Err(Interrupted::Shutdown) => interrupted = true,
            }
        }
        drop(storing);
        // Stored offsets are committed now rather than at the next
        // auto-commit tick, so a restart resumes exactly after the last batch.
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed at shutdown"),
            // NoOffset: nothing was stored since the last commit.
            Err(e) => tracing::info!(error = %e, "no offsets committed at shutdown"),
        }
    }

    /// Stores one batch, retrying with backoff while PostgreSQL or the DLQ
    /// is unavailable. Returns only when everything is committed, or on
    /// shutdown (then nothing of the batch counts as done).
    async fn store_batch(
        &self,
        batch: &[OwnedMessage],
        token: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let start = Instant::now();
        let mut rows: Vec<NewEvent> = Vec::with_capacity(batch.len());
        let mut links: Vec<SpanContext> = Vec::new();
        let mut linked = std::collections::HashSet::new();
        let mut poison: Vec<NewDeadLetter> = Vec::new();
        for message in batch {
            match decode::decode(message, &self.schemas) {
                Decoded::Event(e) => {
                    // The records of one ingest request share its producer
                    // span: link it once.
                    if let Some(parent) = e.parent
                        && linked.insert((parent.trace_id(), parent.span_id()))
                    {
                        links.push(parent);
                    }
                    rows.push(e.row);
                }
                Decoded::Poison(d) => poison.push(*d),
            }
        }

        // Concurrent batches insert in one order (by event id): a duplicate
        // in both then makes one wait for the other, never a deadlock.
        rows.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));

        // The batch span starts its own trace and links to each producer span
        // (OpenTelemetry messaging conventions for batch receive).
        let span = tracing::info_span!(
            parent: None,
            "processor.batch",
            otel.name = "process tributary.events",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.batch.message_count = i64::try_from(batch.len()).unwrap_or(i64::MAX),
        );
        for link in links {
            span.add_link(link);
        }

        let mut attempt: u32 = 0;
        let outcome = loop {
            let result = self
                .try_store(&rows, &poison, batch)
                .instrument(span.clone())
                .await;
            match result {
                Ok(outcome) => break outcome,
                Err(e) => {
                    attempt += 1;
                    let pause = backoff(attempt, self.max_backoff);
                    tracing::warn!(attempt, error = %tributary_platform::status::chain(&e), retry_in = ?pause, "storing a batch failed; offsets not advanced");
                    tokio::select! {
                        () = token.cancelled() => return Err(Interrupted::Shutdown),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        };

        let committed_at = SystemTime::now();
        for row in rows
            .iter()
            .filter(|r| outcome.inserted.contains(&r.event_id))
        {
            if let Ok(d) = committed_at.duration_since(row.received_at) {
                self.metrics.ingest_to_persist.observe(d.as_secs_f64());
            }
        }
        self.metrics.persisted(outcome.inserted.len());
        self.metrics.duplicates(
            rows.len()
                .saturating_sub(outcome.inserted.len() + outcome.refused + outcome.erased_rows),
        );
        self.metrics
            .dead_lettered(outcome.dead_lettered + outcome.refused);
        self.metrics
            .erased(outcome.erased_rows + outcome.erased_letters);
        self.metrics.batch_size.observe(batch.len() as f64);
        self.metrics
            .batch_duration
            .observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// One attempt: dead letters to the DLQ topic (acked), then one
    /// transaction with the rows and the dead-letter rows.
    async fn try_store(
        &self,
        rows: &[NewEvent],
        poison: &[NewDeadLetter],
        batch: &[OwnedMessage],
    ) -> Result<Stored, StoreFailure> {
        // An erased user's poison must not reach the dead-letter topic
        // either (the transaction below checks again, under the lock).
        let (poison, erased_early) = self.without_erased(poison).await?;
        self.publish_dead_letters(&poison).await?;
        match self.insert(rows, &poison).await {
            Ok(done) => Ok(Stored {
                inserted: done.inserted,
                refused: 0,
                erased_rows: done.erased_rows,
                erased_letters: erased_early + done.erased_letters,
                dead_lettered: poison.len() - done.erased_letters,
            }),
            Err(e) if e.is_data_error() => {
                // One row the database refuses (data it cannot hold) must
                // not block the partition: isolate it, row by row.
                tracing::warn!(error = %tributary_platform::status::chain(&e), "batch refused by the database; storing row by row");
                let mut stored = self.store_row_by_row(rows, batch).await?;
                stored.erased_letters = erased_early;
                stored.dead_lettered = poison.len();
                Ok(stored)
            }
            Err(e) => Err(StoreFailure::Db(e)),
        }
    }

    async fn insert(
        &self,
        rows: &[NewEvent],
        poison: &[NewDeadLetter],
    ) -> Result<Inserted, tributary_store::StoreError> {
        let (inserted, alerts) = self.insert_with_alerts(rows, poison).await?;
        self.announce_alerts(alerts);
        Ok(inserted)
    }

    /// The erasure key, read (or made) on first use, outside any batch's
    /// transaction (a rolled-back one must not leave a key cached).
    async fn erasure_key(&self) -> Result<&ErasureKey, tributary_store::StoreError> {
        self.erasure_key
            .get_or_try_init(|| async {
                let client = self.pool.get().await?;
                erasure::key(&client).await
            })
            .await
    }

    /// The dead letters not of erased users (below their tombstones), and
    /// how many were. Asks PostgreSQL only when one names a user.
    async fn without_erased(
        &self,
        letters: &[NewDeadLetter],
    ) -> Result<(Vec<NewDeadLetter>, usize), StoreFailure> {
        if !letters
            .iter()
            .any(|d| d.user_id.as_deref().is_some_and(|u| !u.is_empty()))
        {
            return Ok((letters.to_vec(), 0));
        }
        let key = self.erasure_key().await.map_err(StoreFailure::Db)?;
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreFailure::Db(e.into()))?;
        let gone = erasure::erased(&client, key, &self.topic, letter_positions(letters))
            .await
            .map_err(StoreFailure::Db)?;
        let kept: Vec<NewDeadLetter> = letters
            .iter()
            .filter(|d| !gone.contains(&(d.partition, d.offset)))
            .cloned()
            .collect();
        let erased = letters.len() - kept.len();
        Ok((kept, erased))
    }

    /// Counts the alerts recorded by a committed batch and sends webhooks.
    fn announce_alerts(&self, alerts: Vec<(i64, String, String)>) {
        for (alert_id, rule_id, body) in alerts {
            let name = self
                .rules
                .name_of(&rule_id)
                .unwrap_or_else(|| rule_id.clone());
            self.metrics.rule_alerts.with_label_values(&[&name]).inc();
            if let Some(rule) = self.rules.webhook_of(&rule_id) {
                tokio::spawn(crate::rules::deliver(
                    self.pool.clone(),
                    self.webhooks.clone(),
                    alert_id,
                    rule,
                    body,
                ));
            }
        }
    }

    /// Inserts the batch and the alerts its new rows raise, in one transaction.
    /// Returns the new event ids and the new alerts (id, rule id, JSON body).
    async fn insert_with_alerts(
        &self,
        rows: &[NewEvent],
        poison: &[NewDeadLetter],
    ) -> Result<(Inserted, Vec<(i64, String, String)>), tributary_store::StoreError> {
        let span = tracing::info_span!(
            "postgres.insert",
            otel.name = "INSERT events",
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = "INSERT",
            db.collection.name = "events",
            db.operation.batch.size = rows.len(),
        );
        let (rows_len, poison_len) = (rows.len(), poison.len());
        async {
            let key = self.erasure_key().await?;
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            // First, the erasure lock (shared): an erasure either committed
            // before (its tombstone is seen below) or waits for this commit
            // (and deletes these rows). Then one indexed query for the
            // batch's users drops erased users' records below their
            // tombstones: they are not stored, and count as done.
            erasure::lock_shared(&tx).await?;
            let positions = rows
                .iter()
                .map(|r| (r.user_id.as_str(), r.partition, r.offset))
                .chain(letter_positions(poison));
            let gone = erasure::erased(&tx, key, &self.topic, positions).await?;
            let kept_rows: Vec<NewEvent>;
            let kept_letters: Vec<NewDeadLetter>;
            let (rows, poison) = if gone.is_empty() {
                (rows, poison)
            } else {
                let kept = |p: i32, o: i64| !gone.contains(&(p, o));
                kept_rows = rows
                    .iter()
                    .filter(|r| kept(r.partition, r.offset))
                    .cloned()
                    .collect();
                kept_letters = poison
                    .iter()
                    .filter(|d| kept(d.partition, d.offset))
                    .cloned()
                    .collect();
                (kept_rows.as_slice(), kept_letters.as_slice())
            };
            let erased_rows = rows_len - rows.len();
            let erased_letters = poison_len - poison.len();
            let inserted: std::collections::HashSet<String> = events::insert_events(&tx, rows)
                .await?
                .into_iter()
                .collect();
            events::insert_dead_letters(&tx, poison).await?;
            // Tailing clients hear of the new rows when (and only if) they commit.
            let positions = rows
                .iter()
                .filter(|r| inserted.contains(&r.event_id))
                .map(|r| (r.partition, r.offset));
            tributary_store::tail::notify_committed(&tx, &tributary_store::tail::ranges(positions))
                .await?;
            let candidates = self.rules.evaluate(rows, &inserted);
            let recorded = tributary_store::rules::insert_alerts(&tx, &candidates).await?;
            tx.commit().await?;
            let alerts = recorded
                .into_iter()
                .filter_map(|(alert_id, rule_id, event_id)| {
                    let a = candidates
                        .iter()
                        .find(|a| a.rule_id == rule_id && a.event_id == event_id)?;
                    let body = serde_json::json!({
                        "alert_id": alert_id, "rule_id": rule_id, "event_id": a.event_id,
                        "event_type": a.event_type, "observed": a.observed,
                    });
                    Some((alert_id, rule_id, body.to_string()))
                })
                .collect();
            Ok((
                Inserted {
                    inserted,
                    erased_rows,
                    erased_letters,
                },
                alerts,
            ))
        }
        .instrument(span)
        .await
    }

    async fn store_row_by_row(
        &self,
        rows: &[NewEvent],
        batch: &[OwnedMessage],
    ) -> Result<Stored, StoreFailure> {
        let mut stored = Stored {
            inserted: Default::default(),
            refused: 0,
            erased_rows: 0,
            erased_letters: 0,
            dead_lettered: 0,
        };
        for row in rows {
            match self.insert(std::slice::from_ref(row), &[]).await {
                Ok(done) => {
                    stored.inserted.extend(done.inserted);
                    stored.erased_rows += done.erased_rows;
                }
                Err(e) if e.is_data_error() => {
                    let Some(message) = batch
                        .iter()
                        .find(|m| m.partition() == row.partition && m.offset() == row.offset)
                    else {
                        return Err(StoreFailure::Db(e));
                    };
                    let letter = decode::dead_letter(
                        message,
                        decode::rejection_for(row, format!("database refused the row: {e}")),
                    );
                    let letters = std::slice::from_ref(&letter);
                    self.publish_dead_letters(letters).await?;
                    self.insert(&[], letters).await.map_err(StoreFailure::Db)?;
                    // (The row was not erased: the insert above checked.)
                    stored.refused += 1;
                }
                Err(e) => return Err(StoreFailure::Db(e)),
            }
        }
        Ok(stored)
    }

    async fn publish_dead_letters(&self, letters: &[NewDeadLetter]) -> Result<(), StoreFailure> {
        for d in letters {
            let partition = d.partition.to_string();
            let offset = d.offset.to_string();
            let mut headers: Vec<(&str, &[u8])> = d
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            headers.push(("tributary.dlq.reason", d.reason.as_bytes()));
            headers.push(("tributary.dlq.source.topic", d.topic.as_bytes()));
            headers.push(("tributary.dlq.source.partition", partition.as_bytes()));
            headers.push(("tributary.dlq.source.offset", offset.as_bytes()));
            self.dlq
                .send(Record {
                    topic: &self.dlq_topic,
                    key: d.key.as_deref(),
                    value: d.value.as_deref().unwrap_or_default(),
                    headers: &headers,
                })
                .await
                .map_err(StoreFailure::Dlq)?;
        }
        Ok(())
    }

    /// Marks the batch done: the next commit resumes after its last record
    /// in each partition.
    fn store_offsets(&self, batch: &[OwnedMessage]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in batch {
            let e = next.entry((m.topic(), m.partition())).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in next {
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!(error = %e, "cannot list an offset to store");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // A partition revoked mid-batch: its new owner re-reads those
            // records, and the idempotent insert makes that harmless.
            tracing::info!(error = %e, "offsets not stored (partition revoked?)");
        }
    }
}

/// Collects batches into `out` until it closes: each waits for a first
/// record, then takes more until it holds `size` or `timeout` has passed
/// since the first.
async fn collect_batches(
    consumer: Arc<Consumer>,
    size: usize,
    timeout: Duration,
    out: tokio::sync::mpsc::Sender<Vec<OwnedMessage>>,
) {
    loop {
        let mut batch = Vec::with_capacity(size);
        match consumer.recv().await {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                tracing::warn!(error = %e, "consume failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while batch.len() < size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consume failed");
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        if out.send(batch).await.is_err() {
            return;
        }
    }
}

struct Stored {
    inserted: std::collections::HashSet<String>,
    /// Rows the database refused, dead-lettered instead.
    refused: usize,
    /// Rows of erased users (below their tombstones), not stored.
    erased_rows: usize,
    /// Poison of erased users, neither published nor stored.
    erased_letters: usize,
    /// Poison stored as dead letters.
    dead_lettered: usize,
}

/// What one transaction did.
struct Inserted {
    /// The event ids inserted now.
    inserted: std::collections::HashSet<String>,
    erased_rows: usize,
    erased_letters: usize,
}

/// (user, partition, offset) of the dead letters that name a user.
fn letter_positions(letters: &[NewDeadLetter]) -> impl Iterator<Item = (&str, i32, i64)> {
    letters
        .iter()
        .filter_map(|d| Some((d.user_id.as_deref()?, d.partition, d.offset)))
}

#[derive(Debug, thiserror::Error)]
enum StoreFailure {
    #[error("postgresql: {0}")]
    Db(tributary_store::StoreError),
    #[error("dead-letter topic: {0}")]
    Dlq(tributary_kafka::producer::ProduceError),
}

/// 100 ms, doubling, capped at `max`.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.min(16).saturating_sub(1));
    Duration::from_millis(ms).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let max = Duration::from_secs(5);
        let got: Vec<u128> = (1..=8).map(|a| backoff(a, max).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
