//! GetPipelineStatus: each component's health and the lag summary.

use std::time::Duration;

use tonic::Status;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tributary_proto::v1::{ComponentHealth, ComponentStatus, ConsumerLag, PipelineStatus};

use crate::context::AdminContext;

const TIMEOUT: Duration = Duration::from_secs(2);

async fn grpc_health(
    name: &str,
    addr: &str,
    tls: &tributary_platform::tls::ClientTlsArgs,
) -> ComponentStatus {
    let status = |health: ComponentHealth, detail: String| ComponentStatus {
        name: name.to_owned(),
        address: addr.to_owned(),
        health: health as i32,
        detail,
    };
    let endpoint = match tls.endpoint(addr) {
        Ok(e) => e.connect_timeout(TIMEOUT).timeout(TIMEOUT),
        Err(e) => return status(ComponentHealth::Unreachable, e.to_string()),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return status(ComponentHealth::Unreachable, e.to_string()),
    };
    match HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
            status(ComponentHealth::Serving, String::new())
        }
        Ok(r) => status(
            ComponentHealth::NotServing,
            format!("health status {}", r.get_ref().status),
        ),
        Err(e) => status(ComponentHealth::Unreachable, e.message().to_owned()),
    }
}

pub async fn pipeline_status(ctx: &AdminContext) -> Result<PipelineStatus, Status> {
    let (ingest, processor, query) = tokio::join!(
        grpc_health("ingest", &ctx.addrs.ingest, &ctx.client_tls),
        grpc_health("processor", &ctx.addrs.processor, &ctx.client_tls),
        grpc_health("query", &ctx.addrs.query, &ctx.client_tls),
    );
    let admin = ComponentStatus {
        name: "admin".into(),
        address: String::new(),
        health: ComponentHealth::Serving as i32,
        detail: String::new(),
    };
    let postgres = match tributary_store::pool::ping(&ctx.pool).await {
        Ok(()) => (ComponentHealth::Serving, String::new()),
        Err(e) => (
            ComponentHealth::Unreachable,
            tributary_store::error_chain(&e),
        ),
    };
    let consumer = ctx.metadata.clone();
    let topic = ctx.kafka.topic.clone();
    let kafka = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer as _;
        tributary_kafka::admin::partition_count(consumer.client(), &topic, TIMEOUT)
    })
    .await;
    let kafka = match kafka {
        Ok(Ok(n)) => (ComponentHealth::Serving, format!("{n} partitions")),
        Ok(Err(e)) => (ComponentHealth::Unreachable, e.to_string()),
        Err(e) => (ComponentHealth::Unreachable, e.to_string()),
    };
    let mut components = vec![ingest, processor, query, admin];
    for (name, (health, detail)) in [("kafka", kafka), ("postgres", postgres)] {
        components.push(ComponentStatus {
            name: name.into(),
            address: String::new(),
            health: health as i32,
            detail,
        });
    }
    let mut lag = Vec::new();
    for group in &ctx.lag_groups {
        let (m, g, t) = (ctx.lag.clone(), group.clone(), ctx.kafka.topic.clone());
        if let Ok(Ok(partitions)) = tokio::task::spawn_blocking(move || m.measure(&g, &t)).await {
            lag.push(ConsumerLag {
                group: group.clone(),
                topic: ctx.kafka.topic.clone(),
                total_lag: partitions.iter().map(|p| p.lag).sum(),
                max_time_lag: partitions
                    .iter()
                    .map(|p| p.time_lag)
                    .max()
                    .and_then(|d| prost_types::Duration::try_from(d).ok()),
                partitions: Vec::new(),
            });
        }
    }
    Ok(PipelineStatus {
        healthy: components
            .iter()
            .all(|c| c.health == ComponentHealth::Serving as i32),
        components,
        lag,
    })
}
