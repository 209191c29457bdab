//! ResetOffsets: replay by moving a group's committed offsets.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tonic::Status;
use tributary_platform::status::{self as pstatus, violation};
use tributary_proto::v1::{
    PartitionOffset, ResetOffsetsRequest, ResetOffsetsResponse, reset_offsets_request,
};

use crate::context::{AdminContext, blocking};

const TIMEOUT: Duration = Duration::from_secs(5);

pub async fn reset_offsets(
    ctx: &AdminContext,
    request: ResetOffsetsRequest,
) -> Result<ResetOffsetsResponse, Status> {
    if request.group.is_empty() {
        return Err(violation("group", "is required"));
    }
    let Some(to) = request.to else {
        return Err(violation(
            "to",
            "set one of earliest, latest, timestamp or offsets",
        ));
    };
    let topic = if request.topic.is_empty() {
        ctx.kafka.topic.clone()
    } else {
        request.topic.clone()
    };

    let consumer = ctx.metadata.clone();
    let (group, t) = (request.group.clone(), topic.clone());
    let (members, watermarks) = blocking(
        move || {
            let groups = consumer.fetch_group_list(Some(&group), TIMEOUT)?;
            let members = groups
                .groups()
                .iter()
                .find(|g| g.name() == group)
                .map_or(0, |g| g.members().len());
            let watermarks = tributary_kafka::admin::watermarks(&consumer, &t, TIMEOUT)?;
            Ok((members, watermarks))
        },
        "cannot read the group and topic",
    )
    .await?;
    if members > 0 && !request.dry_run {
        return Err(Status::failed_precondition(format!(
            "group {} has {members} active member(s); stop its consumers first (e.g. ./deploy.sh stop processor), or pass dry_run",
            request.group
        )));
    }

    let clamp = |p: i32, o: i64| {
        let (low, high) = watermarks.get(&p).copied().unwrap_or((0, 0));
        o.clamp(low, high)
    };
    let targets: BTreeMap<i32, i64> = match to {
        reset_offsets_request::To::Earliest(true) => {
            watermarks.iter().map(|(p, (low, _))| (*p, *low)).collect()
        }
        reset_offsets_request::To::Latest(true) => watermarks
            .iter()
            .map(|(p, (_, high))| (*p, *high))
            .collect(),
        reset_offsets_request::To::Earliest(false) | reset_offsets_request::To::Latest(false) => {
            return Err(violation("to", "earliest and latest must be true when set"));
        }
        reset_offsets_request::To::Timestamp(ts) => {
            let at = SystemTime::try_from(ts)
                .map_err(|e| violation("timestamp", format!("is not a valid timestamp: {e}")))?;
            let partitions: Vec<i32> = watermarks.keys().copied().collect();
            let stored = ctx
                .pool
                .run(async |client| {
                    tributary_store::events::offsets_received_since(client, at, &partitions).await
                })
                .await
                .map_err(|e| pstatus::unavailable("cannot read stored positions", &e))?;
            let stored: BTreeMap<i32, i64> = stored.into_iter().collect();
            // A partition with nothing stored replays from its start.
            watermarks
                .iter()
                .map(|(p, (low, _))| (*p, clamp(*p, stored.get(p).copied().unwrap_or(*low))))
                .collect()
        }
        reset_offsets_request::To::Offsets(list) => {
            let mut out = BTreeMap::new();
            for (i, o) in list.offsets.iter().enumerate() {
                let Some((low, high)) = watermarks.get(&o.partition).copied() else {
                    return Err(violation(
                        &format!("offsets.offsets[{i}].partition"),
                        format!("topic {topic} has no partition {}", o.partition),
                    ));
                };
                if !(low..=high).contains(&o.offset) {
                    return Err(violation(
                        &format!("offsets.offsets[{i}].offset"),
                        format!(
                            "must be within {low}..={high} for partition {}",
                            o.partition
                        ),
                    ));
                }
                out.insert(o.partition, o.offset);
            }
            if out.is_empty() {
                return Err(violation("offsets.offsets", "is empty"));
            }
            out
        }
    };

    if !request.dry_run {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &targets {
            tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))
                .map_err(|e| pstatus::internal("cannot list the offsets", &e))?;
        }
        let args = ctx.kafka.clone();
        let group = request.group.clone();
        blocking(
            move || {
                // A client of the group that never subscribes: it commits
                // for the (empty) group without joining it.
                let committer: BaseConsumer = args
                    .client_config()?
                    .set("group.id", &group)
                    .set("enable.auto.commit", "false")
                    .create()?;
                committer.commit(&tpl, CommitMode::Sync)?;
                Ok(())
            },
            "cannot commit the offsets",
        )
        .await?;
        tracing::info!(group = %request.group, topic = %topic, offsets = ?targets, "offsets reset");
    }
    Ok(ResetOffsetsResponse {
        offsets: targets
            .into_iter()
            .map(|(partition, offset)| PartitionOffset { partition, offset })
            .collect(),
        applied: !request.dry_run,
    })
}
