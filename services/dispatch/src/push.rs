//! One push subscription's delivery: a consumer in the subscription's group
//! reads the topic, judges each record as the processor does, keeps the
//! events its filter matches, and POSTs them in batches to the webhook,
//! signed; a batch is retried (same `webhook-id`, fresh timestamp and
//! signature) until the endpoint takes it, and only then are its offsets
//! stored for commit. One batch at a time, so a key's events arrive in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::OwnedMessage;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tributary_kafka::consumer::{self, ConsumerSettings};
use tributary_platform::record::{self, Decoded};
use tributary_proto::v1::{Subscription, subscription};
use tributary_store::dead_letters as letters;
use tributary_store::events::{EventFilter, NewDeadLetter, NewEvent};
use tributary_store::subscriptions::{self as store, SubscriptionRow};

use crate::context::{Shared, matching};

/// The settings a worker runs with, read from the stored spec.
struct Settings {
    url: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    filter: EventFilter,
    max_events: usize,
    max_bytes: usize,
    max_wait: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    /// 0: unlimited.
    max_attempts: u32,
    max_age: Duration,
    rate: f64,
}

fn settings(spec: &Subscription) -> Option<Settings> {
    let Some(subscription::Delivery::Push(push)) = &spec.delivery else {
        return None;
    };
    let d = |d: Option<&prost_types::Duration>, default: Duration| {
        d.and_then(|d| Duration::try_from(*d).ok())
            .unwrap_or(default)
    };
    let batch = spec.batch.unwrap_or_default();
    let retry = spec.retry.unwrap_or_default();
    let filter =
        tributary_platform::filter::store_filter(&spec.filter.clone().unwrap_or_default()).ok()?;
    Some(Settings {
        url: push.url.clone(),
        headers: push
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timeout: d(push.timeout.as_ref(), Duration::from_secs(15)),
        filter,
        max_events: usize::try_from(batch.max_events.max(1)).unwrap_or(100),
        max_bytes: usize::try_from(batch.max_bytes.max(1024)).unwrap_or(1 << 20),
        max_wait: d(batch.max_wait.as_ref(), Duration::from_secs(1)),
        min_backoff: d(retry.min_backoff.as_ref(), Duration::from_secs(1)),
        max_backoff: d(retry.max_backoff.as_ref(), Duration::from_secs(60)),
        max_attempts: u32::try_from(retry.max_attempts).unwrap_or(0),
        max_age: d(retry.max_age.as_ref(), Duration::from_secs(24 * 3600)),
        rate: spec.rate_per_second,
    })
}

/// How a worker ended.
pub enum Ended {
    /// Stopped from outside (a change, a delete, shutdown).
    Stopped,
    /// The endpoint answered 410 Gone: the subscription is disabled.
    Disabled,
    /// It cannot run (its spec is not a push subscription, or the consumer
    /// could not be made); the reason is logged.
    Failed,
}

/// A batch in the making: the events' JSON, and past which offset of each
/// partition the records read for it end.
#[derive(Default)]
struct Batch {
    events: Vec<Value>,
    /// The records behind `events`, to keep as dead letters if delivery
    /// gives up on them.
    sources: Vec<Source>,
    bytes: usize,
    /// partition → the next offset to read.
    next: BTreeMap<i32, i64>,
    /// Records read that the filter (or the validation) skipped.
    filtered: u64,
    /// Records of erased users (below their tombstones) skipped.
    erased: u64,
    /// The producer spans of the batch's events (each once), for the
    /// delivery span's links.
    links: Vec<opentelemetry::trace::SpanContext>,
}

/// A delivered event's record, as read.
struct Source {
    message: OwnedMessage,
    event_id: String,
    event_type: String,
    user_id: String,
}

pub async fn run(shared: Arc<Shared>, row: SubscriptionRow, token: CancellationToken) -> Ended {
    let name = row.name.clone();
    let spec = Subscription::decode(row.spec.as_slice()).unwrap_or_default();
    let Some(settings) = settings(&spec) else {
        tracing::warn!(subscription = %name, "not a valid push subscription; not delivering");
        return Ended::Failed;
    };
    // Until the tombstones are read, nothing is known erased: deliver
    // nothing before.
    while !shared.tombstones.loaded() {
        tokio::select! {
            () = token.cancelled() => return Ended::Stopped,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let group = store::consumer_group(&name);
    let consumer = match consumer::build(
        &shared.kafka,
        &ConsumerSettings {
            group: group.clone(),
            session_timeout: Duration::from_secs(10),
            auto_commit_interval: Duration::from_secs(1),
        },
    ) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!(subscription = %name, error = %e, "cannot make the consumer");
            return Ended::Failed;
        }
    };
    if let Err(e) = consumer.subscribe(&[shared.kafka.topic.as_str()]) {
        tracing::warn!(subscription = %name, error = %e, "cannot subscribe");
        return Ended::Failed;
    }
    tracing::info!(subscription = %name, %group, url = %settings.url, "delivering");
    let mut worker = Worker {
        shared: shared.clone(),
        name: name.clone(),
        settings,
        row,
        consumer: consumer.clone(),
        failing_since: None,
        state: "active",
        reported: None,
        next_allowed: Instant::now(),
        redrive_checked: None,
    };
    shared.metrics.set_state(&name, "active");
    let ended = worker.work(&token).await;
    // Closing leaves the group (and commits what was stored); it blocks on
    // the broker, so not on a runtime thread.
    drop(worker);
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    ended
}

struct Worker {
    shared: Arc<Shared>,
    name: String,
    settings: Settings,
    row: SubscriptionRow,
    consumer: Arc<consumer::Consumer>,
    /// When the attempts began failing (every one since).
    failing_since: Option<Instant>,
    state: &'static str,
    /// When the last delivery was written back to the table.
    reported: Option<Instant>,
    /// The rate limit: no batch before this.
    next_allowed: Instant,
    /// When the redrive queue was last looked at.
    redrive_checked: Option<Instant>,
}

/// Writes of a delivery's time to the table, at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often a worker looks for dead letters a redrive asked it to deliver
/// (one indexed query).
const REDRIVE_EVERY: Duration = Duration::from_secs(2);

impl Worker {
    async fn work(&mut self, token: &CancellationToken) -> Ended {
        loop {
            if let Some(ended) = self.redrive(token).await {
                return ended;
            }
            let Some(batch) = self.collect(token).await else {
                return Ended::Stopped;
            };
            let shared = self.shared.clone();
            let m = &shared.metrics;
            m.events
                .with_label_values(&[&self.name, "filtered"])
                .inc_by(batch.filtered);
            m.events
                .with_label_values(&[&self.name, "erased"])
                .inc_by(batch.erased);
            if !batch.events.is_empty() {
                // One trace per delivery, linked to its events' producer
                // spans (as the processor's batch span is).
                let span = delivery_span(&self.name, batch.events.len(), false);
                for link in &batch.links {
                    span.add_link(link.clone());
                }
                match self.deliver(&batch.events, token).instrument(span).await {
                    Delivery::Done => m
                        .events
                        .with_label_values(&[&self.name, "delivered"])
                        .inc_by(batch.events.len() as u64),
                    Delivery::GaveUp(why) => {
                        if !self.dead_letter(&batch, &why, token).await {
                            return Ended::Stopped;
                        }
                    }
                    Delivery::Stopped => return Ended::Stopped,
                    Delivery::Gone => return Ended::Disabled,
                }
            }
            self.store_offsets(&batch);
        }
    }

    /// Keeps the batch's records as this subscription's dead letters (retried
    /// until PostgreSQL takes them: only then does delivery move on); false
    /// when stopped first.
    async fn dead_letter(&mut self, batch: &Batch, why: &str, token: &CancellationToken) -> bool {
        let reason = format!("delivery gave up: {why}");
        let rows: Vec<NewDeadLetter> = batch
            .sources
            .iter()
            .map(|s| {
                let mut d = record::dead_letter(
                    &s.message,
                    record::Rejection {
                        reason: reason.clone(),
                        event_id: Some(s.event_id.clone()),
                        event_type: Some(s.event_type.clone()),
                        user_id: Some(s.user_id.clone()),
                    },
                );
                d.subscription.clone_from(&self.name);
                d
            })
            .collect();
        let topic = self.shared.kafka.topic.clone();
        let tombstones = self.shared.tombstones.clone();
        let erased = loop {
            let r = self
                .shared
                .pool
                .run(async |c| {
                    // As the processor stores: under the erasure lock, and
                    // not the letters of a user erased meanwhile.
                    let key = match tombstones.key() {
                        Some(k) => k,
                        None => tributary_store::erasure::key(c).await?,
                    };
                    let tx = c.transaction().await?;
                    tributary_store::erasure::lock_shared(&tx).await?;
                    let gone = tributary_store::erasure::erased(
                        &tx,
                        &key,
                        &topic,
                        rows.iter()
                            .filter_map(|d| Some((d.user_id.as_deref()?, d.partition, d.offset))),
                    )
                    .await?;
                    let kept: Vec<NewDeadLetter> = rows
                        .iter()
                        .filter(|d| !gone.contains(&(d.partition, d.offset)))
                        .cloned()
                        .collect();
                    tributary_store::events::insert_dead_letters(&tx, &kept).await?;
                    tx.commit().await?;
                    Ok(rows.len() - kept.len())
                })
                .await;
            match r {
                Ok(n) => break n,
                Err(e) => {
                    tracing::warn!(subscription = %self.name, error = %tributary_store::error_chain(&e), "cannot keep the dead letters; retrying");
                    tokio::select! {
                        () = token.cancelled() => return false,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let kept = rows.len() - erased;
        tracing::warn!(subscription = %self.name, events = kept, erased, reason = %reason, "batch dead-lettered");
        let m = &self.shared.metrics;
        m.events
            .with_label_values(&[&self.name, "dead_lettered"])
            .inc_by(kept as u64);
        m.events
            .with_label_values(&[&self.name, "erased"])
            .inc_by(erased as u64);
        true
    }

    /// Delivers the letters a redrive asked for (at most a batch, looked at
    /// every few seconds); `Some` when the worker must end.
    async fn redrive(&mut self, token: &CancellationToken) -> Option<Ended> {
        if self
            .redrive_checked
            .is_some_and(|at| at.elapsed() < REDRIVE_EVERY)
        {
            return None;
        }
        self.redrive_checked = Some(Instant::now());
        let (name, limit) = (self.name.clone(), self.settings.max_events as i64);
        let queued = match self
            .shared
            .pool
            .run(async |c| letters::redrive_queue(c, &name, limit).await)
            .await
        {
            Ok(q) if !q.is_empty() => q,
            Ok(_) => return None,
            Err(e) => {
                tracing::debug!(subscription = %self.name, error = %tributary_store::error_chain(&e), "cannot read the redrive queue");
                return None;
            }
        };
        let mut events = Vec::new();
        let mut ids = Vec::new();
        let mut undecodable = Vec::new();
        let mut erased = Vec::new();
        for d in queued {
            let message = OwnedMessage::new(
                d.value,
                d.key,
                d.topic,
                rdkafka::Timestamp::NotAvailable,
                d.partition,
                d.offset,
                Some(
                    d.headers
                        .iter()
                        .fold(rdkafka::message::OwnedHeaders::new(), |h, (k, v)| {
                            h.insert(rdkafka::message::Header {
                                key: k,
                                value: Some(v),
                            })
                        }),
                ),
            );
            match record::decode(&message, &self.shared.schemas) {
                Decoded::Event(e) if self.erased(&e.row) => erased.push(d.id),
                Decoded::Event(e) => match serde_json::from_str(&e.row.payload_json) {
                    Ok(payload) => {
                        events.push(stored_event_json(&e.row, payload));
                        ids.push(d.id);
                    }
                    Err(_) => undecodable.push(d.id),
                },
                Decoded::Poison(_) => undecodable.push(d.id),
            }
        }
        if !undecodable.is_empty() {
            self.finish_redrive(
                &undecodable,
                false,
                "not a valid event any more; not delivered",
            )
            .await;
        }
        if !erased.is_empty() {
            // (The erasure deletes such letters; one queued just before it
            // committed is let go here.)
            self.finish_redrive(&erased, false, "the user was erased; not delivered")
                .await;
            self.shared
                .metrics
                .events
                .with_label_values(&[&self.name, "erased"])
                .inc_by(erased.len() as u64);
        }
        if events.is_empty() {
            return None;
        }
        let m = self.shared.metrics.clone();
        let span = delivery_span(&self.name, events.len(), true);
        match self.deliver(&events, token).instrument(span).await {
            Delivery::Done => {
                self.finish_redrive(&ids, true, "").await;
                m.events
                    .with_label_values(&[&self.name, "delivered"])
                    .inc_by(ids.len() as u64);
                tracing::info!(subscription = %self.name, events = ids.len(), "dead letters delivered again");
                None
            }
            Delivery::GaveUp(why) => {
                tracing::warn!(subscription = %self.name, events = ids.len(), reason = %why, "redrive gave up; the dead letters stay, to be redriven again");
                self.finish_redrive(&ids, false, &format!("redrive gave up: {why}"))
                    .await;
                None
            }
            // Still asked for: delivered when the worker runs again.
            Delivery::Stopped => Some(Ended::Stopped),
            Delivery::Gone => Some(Ended::Disabled),
        }
    }

    async fn finish_redrive(&self, ids: &[i64], delivered: bool, reason: &str) {
        let r = self
            .shared
            .pool
            .run(async |c| letters::finish_redrive(c, ids, delivered, reason).await)
            .await;
        if let Err(e) = r {
            // Delivered but not marked: the next look delivers it again (at
            // least once); not delivered and not cleared: it is retried.
            tracing::warn!(subscription = %self.name, error = %tributary_store::error_chain(&e), "cannot record the redrive's outcome");
        }
    }

    /// Whether the event is an erased user's, below the tombstone.
    fn erased(&self, e: &NewEvent) -> bool {
        self.shared.tombstones.is_erased(
            &self.shared.kafka.topic,
            &e.user_id,
            e.partition,
            e.offset,
        )
    }

    /// Marks the batch done: the next commit resumes after it.
    fn store_offsets(&self, batch: &Batch) {
        if batch.next.is_empty() {
            return;
        }
        let mut tpl = rdkafka::TopicPartitionList::with_capacity(batch.next.len());
        for (partition, next) in &batch.next {
            if let Err(e) = tpl.add_partition_offset(
                &self.shared.kafka.topic,
                *partition,
                rdkafka::Offset::Offset(*next),
            ) {
                tracing::warn!(error = %e, "cannot list an offset to store");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // A partition moved to another replica meanwhile: it re-delivers
            // from the last commit (at least once).
            tracing::info!(subscription = %self.name, error = %e, "offsets not stored (partition revoked?)");
        }
    }

    /// Reads records until the batch is full or its first event has waited
    /// `max_wait`; `None` when stopped. A batch of only skipped records
    /// comes back as soon as nothing more is waiting, so their offsets move.
    async fn collect(&self, token: &CancellationToken) -> Option<Batch> {
        let mut batch = Batch::default();
        let mut first: Option<Instant> = None;
        let idle = Duration::from_millis(500);
        loop {
            let wait = match first {
                Some(at) => self.settings.max_wait.saturating_sub(at.elapsed()),
                // Nothing read: come back now and then for the redrive queue.
                None if batch.next.is_empty() => REDRIVE_EVERY,
                None => idle,
            };
            let message = tokio::select! {
                () = token.cancelled() => return None,
                m = tokio::time::timeout(wait, self.consumer.recv()) => m,
            };
            let message = match message {
                Err(_) => return Some(batch),
                Ok(Err(e)) => {
                    tracing::warn!(subscription = %self.name, error = %e, "cannot read the topic");
                    tokio::select! {
                        () = token.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
                Ok(Ok(m)) => m.detach(),
            };
            batch.next.insert(message.partition(), message.offset() + 1);
            match record::decode(&message, &self.shared.schemas) {
                Decoded::Poison(_) => batch.filtered += 1,
                Decoded::Event(event) if self.erased(&event.row) => batch.erased += 1,
                Decoded::Event(event) => match matching(&self.settings.filter, &event.row) {
                    Some(payload) => {
                        let json = stored_event_json(&event.row, payload);
                        batch.bytes += json.to_string().len() + 1;
                        batch.events.push(json);
                        if let Some(parent) = event.parent
                            && !batch.links.iter().any(|l| l.span_id() == parent.span_id())
                        {
                            batch.links.push(parent);
                        }
                        batch.sources.push(Source {
                            message,
                            event_id: event.row.event_id.clone(),
                            event_type: event.row.event_type.clone(),
                            user_id: event.row.user_id.clone(),
                        });
                        first.get_or_insert_with(Instant::now);
                    }
                    None => batch.filtered += 1,
                },
            }
            if batch.events.len() >= self.settings.max_events
                || batch.bytes >= self.settings.max_bytes
            {
                return Some(batch);
            }
        }
    }

    /// Retries the batch until the endpoint takes it, or the retry policy
    /// gives up on it (`GaveUp`), or the worker is stopped.
    async fn deliver(&mut self, events: &[Value], token: &CancellationToken) -> Delivery {
        let body = json!({"subscription": self.name, "events": events}).to_string();
        let id = message_id();
        let first = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            // The rate: batches spaced so that events per second stay under it.
            let now = Instant::now();
            if self.next_allowed > now {
                tokio::select! {
                    () = token.cancelled() => return Delivery::Stopped,
                    () = tokio::time::sleep_until(self.next_allowed.into()) => {}
                }
            }
            if self.changed().await {
                return Delivery::Stopped;
            }
            attempt += 1;
            let outcome = self.attempt(&id, body.as_bytes()).await;
            let wait = match outcome {
                Attempt::Delivered => {
                    self.delivered();
                    if self.settings.rate > 0.0 {
                        self.next_allowed = Instant::now()
                            + Duration::from_secs_f64(events.len() as f64 / self.settings.rate);
                    }
                    return Delivery::Done;
                }
                Attempt::Gone => {
                    self.disable(token).await;
                    return Delivery::Gone;
                }
                Attempt::Failed { why, retry_after } => {
                    let s = &self.settings;
                    let exhausted = (s.max_attempts > 0 && attempt >= s.max_attempts)
                        || first.elapsed() >= s.max_age;
                    self.failed(&why, !exhausted).await;
                    if exhausted {
                        return Delivery::GaveUp(format!("{why} (after {attempt} attempts)"));
                    }
                    let backoff = backoff(&self.settings, attempt);
                    retry_after.map_or(backoff, |r| r.max(self.settings.min_backoff))
                }
            };
            tokio::select! {
                () = token.cancelled() => return Delivery::Stopped,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Whether the subscription was changed (paused, updated) or deleted
    /// since this worker started: then it delivers nothing more, and the
    /// supervisor starts what the change asks for. PostgreSQL down: no.
    async fn changed(&self) -> bool {
        let name = self.name.clone();
        match self
            .shared
            .pool
            .run(async |c| store::generation(c, &name).await)
            .await
        {
            Ok(Some(g)) => g != self.row.generation,
            Ok(None) => true,
            Err(_) => false,
        }
    }

    async fn attempt(&self, id: &str, body: &[u8]) -> Attempt {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = crate::sign::signature(
            self.row.signing_secrets(SystemTime::now()),
            id,
            timestamp,
            body,
        );
        let timestamp = timestamp.to_string();
        let mut headers: Vec<(&str, &str)> = self
            .settings
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.push(("webhook-id", id));
        headers.push(("webhook-timestamp", &timestamp));
        headers.push(("webhook-signature", &signature));
        let started = Instant::now();
        let posted = tokio::time::timeout(
            self.settings.timeout,
            self.shared.webhooks.post(
                &self.settings.url,
                "application/json",
                &headers,
                body,
                "tributary-dispatch",
            ),
        )
        .await;
        let m = &self.shared.metrics;
        m.duration
            .with_label_values(&[&self.name])
            .observe(started.elapsed().as_secs_f64());
        let (code, outcome) = match posted {
            Err(_) => (
                "timeout",
                Attempt::Failed {
                    why: format!("no answer within {:?}", self.settings.timeout),
                    retry_after: None,
                },
            ),
            Ok(Err(e)) => (
                "connect_error",
                Attempt::Failed {
                    why: format!("cannot reach the endpoint: {e}"),
                    retry_after: None,
                },
            ),
            Ok(Ok(answer)) => {
                let class = match answer.status {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                };
                let outcome = match answer.status {
                    200..=299 => Attempt::Delivered,
                    410 => Attempt::Gone,
                    status => Attempt::Failed {
                        why: format!("the endpoint answered {status}"),
                        // Retry-After is honoured where the spec gives it meaning.
                        retry_after: matches!(status, 429 | 503)
                            .then_some(answer.retry_after)
                            .flatten()
                            .map(Duration::from_secs),
                    },
                };
                (class, outcome)
            }
        };
        m.deliveries.with_label_values(&[&self.name, code]).inc();
        outcome
    }

    fn delivered(&mut self) {
        self.failing_since = None;
        let report =
            self.reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) || self.state != "active";
        if self.state != "active" {
            tracing::info!(subscription = %self.name, "delivering again");
            self.state = "active";
            self.shared.metrics.set_state(&self.name, "active");
        }
        if report {
            self.reported = Some(Instant::now());
            let (pool, name) = (self.shared.pool.clone(), self.name.clone());
            tokio::spawn(async move {
                let r = pool
                    .run(async |c| {
                        store::report(c, &name, "active", Some(SystemTime::now()), "").await
                    })
                    .await;
                if let Err(e) = r {
                    tracing::debug!(subscription = %name, error = %e, "cannot record the delivery");
                }
            });
        }
    }

    async fn failed(&mut self, why: &str, will_retry: bool) {
        if will_retry {
            tracing::warn!(subscription = %self.name, error = %why, "delivery failed; will retry");
        } else {
            tracing::warn!(subscription = %self.name, error = %why, "delivery failed; the retry policy is exhausted");
        }
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let state = if since.elapsed() >= self.shared.failing_after {
            "failing"
        } else {
            self.state
        };
        self.set_state(state, why).await;
    }

    /// Records DISABLED (retried until PostgreSQL takes it, or stopped):
    /// every replica's worker then stops, and stays stopped until resumed.
    async fn disable(&mut self, token: &CancellationToken) {
        let why = "the endpoint answered 410 Gone";
        tracing::warn!(subscription = %self.name, state = "disabled", reason = why, "subscription state");
        self.state = "disabled";
        self.shared.metrics.set_state(&self.name, "disabled");
        let name = self.name.clone();
        loop {
            match self
                .shared
                .pool
                .run(async |c| store::disable(c, &name, why).await)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(subscription = %self.name, error = %tributary_store::error_chain(&e), "cannot record DISABLED; retrying");
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn set_state(&mut self, state: &'static str, why: &str) {
        if state != self.state {
            tracing::warn!(subscription = %self.name, state, reason = %why, "subscription state");
        }
        self.state = state;
        self.shared.metrics.set_state(&self.name, state);
        let (name, why) = (self.name.clone(), why.to_owned());
        let r = self
            .shared
            .pool
            .run(async |c| store::report(c, &name, state, None, &why).await)
            .await;
        if let Err(e) = r {
            tracing::debug!(subscription = %self.name, error = %e, "cannot record the state");
        }
    }
}

enum Delivery {
    Done,
    /// The retry policy is exhausted; why the last attempt failed.
    GaveUp(String),
    Stopped,
    Gone,
}

enum Attempt {
    Delivered,
    Gone,
    Failed {
        why: String,
        retry_after: Option<Duration>,
    },
}

/// The root span of one delivery (a batch, or a redrive of dead letters):
/// its own trace, as the processor's batch span is.
fn delivery_span(subscription: &str, events: usize, redrive: bool) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "dispatch.deliver",
        otel.name = if redrive { "send tributary.events (redrive)" } else { "send tributary.events" },
        otel.kind = "producer",
        messaging.system = "webhook",
        messaging.operation.type = "send",
        messaging.batch.message_count = i64::try_from(events).unwrap_or(i64::MAX),
        subscription = %subscription,
        redrive,
    )
}

/// Exponential from `min_backoff`, capped at `max_backoff`, with jitter:
/// a random point in the upper half of the step, never under the minimum.
fn backoff(s: &Settings, attempt: u32) -> Duration {
    let step = s
        .min_backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(s.max_backoff);
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    let fraction = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    step.mul_f64(0.5 + fraction / 2.0).max(s.min_backoff)
}

/// `msg_` and 16 random bytes in hex: the same for every attempt of a batch.
fn message_id() -> String {
    let mut r = [0u8; 16];
    let _ = getrandom::fill(&mut r);
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

fn timestamp(t: SystemTime) -> String {
    prost_types::Timestamp::from(t).to_string()
}

/// A `StoredEvent` in the proto3 JSON mapping, as grpcurl prints one
/// (64-bit integers as strings). `persistedAt` is absent: dispatch reads the
/// topic, not the table.
pub fn stored_event_json(e: &NewEvent, payload: Value) -> Value {
    json!({
        "event": {
            "eventId": e.event_id,
            "eventType": e.event_type,
            "source": e.source,
            "userId": e.user_id,
            "sessionId": e.session_id,
            "occurredAt": timestamp(e.occurred_at),
            "payload": payload,
        },
        "receivedAt": timestamp(e.received_at),
        "partition": e.partition,
        "offset": e.offset.to_string(),
        "traceId": e.trace_id,
        "schemaVersion": e.schema_version,
    })
}
