//! `tributary.v1.AdminService`: topics, consumer groups and lag here; replay,
//! dead letters, the registry, rules, erasure and pipeline status in their
//! modules.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tonic::{Request, Response, Status};
use tributary_kafka::KafkaError;
use tributary_platform::status as pstatus;
use tributary_proto::v1::admin_service_server::AdminService;
use tributary_proto::v1::*;

use crate::context::{AdminContext, blocking};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC face of the admin service: topics, groups and lag here, the
/// rest handed to the handler modules, over the shared [`AdminContext`].
#[derive(Clone)]
pub struct AdminApi {
    pub ctx: AdminContext,
}

fn describe(consumer: &BaseConsumer, name: &str) -> Result<Topic, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(name), TIMEOUT)?;
    let Some(t) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
    else {
        return Err(KafkaError::MissingTopic { topic: name.into() });
    };
    let mut partitions = Vec::with_capacity(t.partitions().len());
    for p in t.partitions() {
        let (earliest, end) = consumer.fetch_watermarks(name, p.id(), TIMEOUT)?;
        partitions.push(TopicPartition {
            partition: p.id(),
            leader: p.leader(),
            earliest_offset: earliest,
            end_offset: end,
        });
    }
    partitions.sort_by_key(|p| p.partition);
    Ok(Topic {
        name: name.to_owned(),
        partition_count: i32::try_from(partitions.len()).unwrap_or(i32::MAX),
        partitions,
    })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let include_internal = request.into_inner().include_internal;
        let consumer = self.ctx.metadata.clone();
        let topics = blocking(
            move || {
                let metadata = consumer.fetch_metadata(None, TIMEOUT)?;
                let mut names: Vec<String> = metadata
                    .topics()
                    .iter()
                    .map(|t| t.name().to_owned())
                    .filter(|n| include_internal || !n.starts_with("__"))
                    .collect();
                names.sort();
                names.iter().map(|n| describe(&consumer, n)).collect()
            },
            "cannot list topics",
        )
        .await?;
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<Topic>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(pstatus::violation("name", "is required"));
        }
        let consumer = self.ctx.metadata.clone();
        let topic = blocking(
            move || describe(&consumer, &name),
            "cannot describe the topic",
        )
        .await?;
        Ok(Response::new(topic))
    }

    async fn list_consumer_groups(
        &self,
        _request: Request<ListConsumerGroupsRequest>,
    ) -> Result<Response<ListConsumerGroupsResponse>, Status> {
        let consumer = self.ctx.metadata.clone();
        let groups = blocking(
            move || {
                let list = consumer.fetch_group_list(None, TIMEOUT)?;
                let mut groups: Vec<ConsumerGroup> = list
                    .groups()
                    .iter()
                    .map(|g| ConsumerGroup {
                        group: g.name().to_owned(),
                        state: g.state().to_owned(),
                        member_count: i32::try_from(g.members().len()).unwrap_or(i32::MAX),
                        member_ids: g.members().iter().map(|m| m.id().to_owned()).collect(),
                    })
                    .collect();
                groups.sort_by(|a, b| a.group.cmp(&b.group));
                Ok(groups)
            },
            "cannot list consumer groups",
        )
        .await?;
        Ok(Response::new(ListConsumerGroupsResponse { groups }))
    }

    async fn get_consumer_lag(
        &self,
        request: Request<GetConsumerLagRequest>,
    ) -> Result<Response<ConsumerLag>, Status> {
        let request = request.into_inner();
        if request.group.is_empty() {
            return Err(pstatus::violation("group", "is required"));
        }
        let topic = if request.topic.is_empty() {
            self.ctx.kafka.topic.clone()
        } else {
            request.topic
        };
        let lag = self.ctx.lag.clone();
        let (group, t) = (request.group.clone(), topic.clone());
        let partitions = blocking(move || lag.measure(&group, &t), "cannot measure lag").await?;
        let total_lag = partitions.iter().map(|p| p.lag).sum();
        let max_time_lag = partitions
            .iter()
            .map(|p| p.time_lag)
            .max()
            .unwrap_or_default();
        Ok(Response::new(ConsumerLag {
            group: request.group,
            topic: topic.clone(),
            total_lag,
            max_time_lag: prost_types::Duration::try_from(max_time_lag).ok(),
            partitions: partitions
                .into_iter()
                .map(|p| tributary_proto::v1::PartitionLag {
                    topic: topic.clone(),
                    partition: p.partition,
                    has_committed_offset: p.committed.is_some(),
                    committed_offset: p.committed.unwrap_or(0),
                    end_offset: p.end,
                    lag: p.lag,
                    time_lag: prost_types::Duration::try_from(p.time_lag).ok(),
                })
                .collect(),
        }))
    }

    async fn reset_offsets(
        &self,
        request: Request<ResetOffsetsRequest>,
    ) -> Result<Response<ResetOffsetsResponse>, Status> {
        crate::replay::reset_offsets(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        crate::dead_letters::list(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<RedriveDeadLettersRequest>,
    ) -> Result<Response<RedriveDeadLettersResponse>, Status> {
        crate::dead_letters::redrive(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn register_event_type(
        &self,
        request: Request<RegisterEventTypeRequest>,
    ) -> Result<Response<EventType>, Status> {
        crate::registry::register(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_event_type(
        &self,
        request: Request<GetEventTypeRequest>,
    ) -> Result<Response<EventType>, Status> {
        crate::registry::get(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_event_types(
        &self,
        request: Request<ListEventTypesRequest>,
    ) -> Result<Response<ListEventTypesResponse>, Status> {
        crate::registry::list(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_rule(
        &self,
        request: Request<CreateRuleRequest>,
    ) -> Result<Response<Rule>, Status> {
        crate::rules::create(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_rules(
        &self,
        request: Request<ListRulesRequest>,
    ) -> Result<Response<ListRulesResponse>, Status> {
        crate::rules::list(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_rule(
        &self,
        request: Request<DeleteRuleRequest>,
    ) -> Result<Response<DeleteRuleResponse>, Status> {
        crate::rules::delete(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_alerts(
        &self,
        request: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        crate::rules::alerts(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        crate::api_keys::create(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        crate::api_keys::list(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<ApiKey>, Status> {
        crate::api_keys::revoke(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> Result<Response<CreateSubscriptionResponse>, Status> {
        crate::subscriptions::create(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        crate::subscriptions::get(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        crate::subscriptions::list(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_subscription(
        &self,
        request: Request<UpdateSubscriptionRequest>,
    ) -> Result<Response<UpdateSubscriptionResponse>, Status> {
        crate::subscriptions::update(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> Result<Response<DeleteSubscriptionResponse>, Status> {
        crate::subscriptions::delete(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn seek_subscription(
        &self,
        request: Request<SeekSubscriptionRequest>,
    ) -> Result<Response<SeekSubscriptionResponse>, Status> {
        crate::subscriptions::seek(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn erase_user(
        &self,
        request: Request<EraseUserRequest>,
    ) -> Result<Response<EraseUserResponse>, Status> {
        crate::erasure::erase_user(&self.ctx, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_pipeline_status(
        &self,
        _request: Request<GetPipelineStatusRequest>,
    ) -> Result<Response<PipelineStatus>, Status> {
        crate::status::pipeline_status(&self.ctx)
            .await
            .map(Response::new)
    }
}
