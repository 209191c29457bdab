//! EraseUser: removes a user's rows and leaves a tombstone, so the user's
//! records still in Kafka are skipped by the processor and dispatch (the
//! store's `erasure` module says how, and why it is race-free).
//!
//! The user_id is personal data: it is never logged, traced, put in a
//! metric label or an error message. The log line names the erasure_id.

use std::time::Duration;

use tonic::Status;
use tributary_kafka::KafkaError;
use tributary_platform::record::user_id_of;
use tributary_platform::status::{self as pstatus, violation};
use tributary_proto::v1::{EraseUserRequest, EraseUserResponse, PartitionOffset, TopicOffsets};
use tributary_proto::validate::MAX_TEXT_FIELD_CHARS;
use tributary_store::erasure::{self, EndOffset};

use crate::context::{AdminContext, blocking, db_status};

const TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an erasure waits for the erasure lock (see
/// `lock_exclusive_within`: the processor waits behind a waiting erasure).
const LOCK_WAIT: Duration = Duration::from_secs(5);
const CONTEXT: &str = "cannot erase the user";

pub async fn erase_user(
    ctx: &AdminContext,
    request: EraseUserRequest,
) -> Result<EraseUserResponse, Status> {
    let user_id = request.user_id;
    // The rules ingest applies to Event.user_id: no stored user is outside
    // them (and PostgreSQL's text cannot hold NUL).
    if user_id.is_empty() {
        return Err(violation("user_id", "is required"));
    }
    if user_id.chars().count() > MAX_TEXT_FIELD_CHARS {
        return Err(violation(
            "user_id",
            format!("must be at most {MAX_TEXT_FIELD_CHARS} characters"),
        ));
    }
    if user_id.contains('\0') {
        return Err(violation("user_id", "must not contain a NUL character"));
    }
    let db = |e: tributary_store::StoreError| db_status(CONTEXT, &e);
    // Outside the erasure's transaction: the key must be stored whatever
    // becomes of it, and old dead letters are given their user before the
    // lock is taken, so the lock is held for the deletes only.
    let key = ctx
        .pool
        .run(async |c| erasure::key(c).await)
        .await
        .map_err(db)?;
    ctx.pool
        .run(async |c| {
            while erasure::backfill_dead_letter_users(c, &user_id_of).await? {}
            Ok(())
        })
        .await
        .map_err(db)?;

    // One transaction on a connection of `run`'s: if the call's deadline
    // passes, the statement in progress (a lock wait too) is cancelled on
    // the server and everything rolls back.
    let outcome = ctx
        .pool
        .run(async |c| {
            let tx = c.transaction().await?;
            // The end offsets are read under the lock: a redrive (or a
            // processor batch) holds it shared while it publishes or
            // stores, so nothing of the user it wrote before the erasure
            // lies above them.
            erasure::lock_exclusive_within(&tx, LOCK_WAIT).await?;
            let end_offsets = match end_offsets(ctx).await {
                Ok(o) => o,
                Err(status) => return Ok(Err(status)),
            };
            let erased =
                erasure::erase_user(&tx, &user_id, &key, &end_offsets, &user_id_of).await?;
            tx.commit().await?;
            Ok(Ok((erased, end_offsets)))
        })
        .await;
    let (erased, end_offsets) = match outcome {
        Ok(Ok(done)) => done,
        Ok(Err(status)) => return Err(status),
        Err(e) if e.is_lock_timeout() => {
            return Err(pstatus::unavailable_retry(
                format!(
                    "{CONTEXT}: a redrive or another erasure held the erasure lock for {LOCK_WAIT:?}; retry"
                ),
                Duration::from_secs(1),
            ));
        }
        Err(e) => return Err(db(e)),
    };
    tracing::info!(
        erasure_id = erased.erasure_id,
        events = erased.events,
        alerts = erased.alerts,
        dead_letters = erased.dead_letters,
        subscription_dead_letters = erased.subscription_dead_letters,
        "user erased"
    );

    let mut by_topic: Vec<TopicOffsets> = Vec::new();
    for o in end_offsets {
        let offset = PartitionOffset {
            partition: o.partition,
            offset: o.end_offset,
        };
        match by_topic.iter_mut().find(|t| t.topic == o.topic) {
            Some(t) => t.offsets.push(offset),
            None => by_topic.push(TopicOffsets {
                topic: o.topic,
                offsets: vec![offset],
            }),
        }
    }
    Ok(EraseUserResponse {
        erasure_id: erased.erasure_id,
        erased_at: Some(erased.erased_at.into()),
        events: erased.events,
        alerts: erased.alerts,
        dead_letters: erased.dead_letters,
        subscription_dead_letters: erased.subscription_dead_letters,
        end_offsets: by_topic,
    })
}

/// Every partition's end offset of the events topic and of the dead-letter
/// topic (when it exists: nothing reads it back, so without it there is
/// nothing of it to record). A broker that does not answer: UNAVAILABLE.
async fn end_offsets(ctx: &AdminContext) -> Result<Vec<EndOffset>, Status> {
    let consumer = ctx.metadata.clone();
    let events_topic = ctx.kafka.topic.clone();
    let topics = [ctx.kafka.topic.clone(), ctx.kafka.dlq_topic.clone()];
    blocking(
        move || {
            let mut out = Vec::new();
            for topic in &topics {
                let watermarks = match tributary_kafka::admin::watermarks(&consumer, topic, TIMEOUT)
                {
                    Ok(w) => w,
                    Err(KafkaError::MissingTopic { .. }) if *topic != events_topic => continue,
                    Err(e) => return Err(e),
                };
                out.extend(
                    watermarks
                        .into_iter()
                        .map(|(partition, (_, end))| EndOffset {
                            topic: topic.clone(),
                            partition,
                            end_offset: end,
                        }),
                );
            }
            Ok(out)
        },
        "cannot read the topics' end offsets",
    )
    .await
    .map_err(|s| match s.code() {
        // The events topic is missing: the deployment is not migrated.
        tonic::Code::NotFound => Status::failed_precondition(format!(
            "{CONTEXT}: {} (run `tributary-ctl migrate`)",
            s.message()
        )),
        _ => s,
    })
}
