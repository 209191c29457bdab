//! The admin service: topics, consumer groups and lag over gRPC, and the lag
//! exporter (`tributary_consumer_group_*` gauges the alert rules use).

mod api_keys;
mod compat;
mod config;
mod context;
mod dead_letters;
mod erasure;
mod grpc;
pub mod lag;
mod maintenance;
mod paging;
mod registry;
mod replay;
mod rules;
mod status;
mod subscriptions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tributary_platform::{http, service, shutdown};
use tributary_proto::service_names;
use tributary_proto::v1::admin_service_server::AdminServiceServer;

pub use config::Config;

pub struct Admin {
    config: Config,
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    registry: Registry,
    api: grpc::AdminApi,
}

impl Admin {
    pub async fn build(config: Config, registry: Registry) -> anyhow::Result<Self> {
        let (grpc, http) = service::bind(config.grpc_addr, config.http_addr).await?;
        tributary_platform::metrics::register_build_info(&registry, "admin")?;
        let metadata: BaseConsumer = config
            .kafka
            .client_config()?
            .set("group.id", "tributary-admin")
            .create()?;
        let lag = lag::LagMonitor::new(&config.kafka, &registry)?;
        let pool =
            tributary_store::pool::build(&tributary_store::PoolConfig::new(&config.database_url))?;
        tributary_store::pool::register_metrics(&registry, &pool)?;
        let producer = tributary_kafka::producer::Producer::new(
            &config.kafka,
            &tributary_kafka::producer::ProducerSettings::default(),
            &registry,
        )?;
        let ctx = context::AdminContext {
            kafka: config.kafka.clone(),
            metadata: Arc::new(metadata),
            lag: Arc::new(lag),
            pool,
            producer,
            addrs: context::ServiceAddrs {
                ingest: config.ingest_addr.clone(),
                processor: config.processor_addr.clone(),
                query: config.query_addr.clone(),
            },
            client_tls: config.client_tls.clone(),
            lag_groups: config.lag_groups.clone(),
            webhooks: tributary_platform::egress::EgressPolicy::new(&config.webhooks),
        };
        let api = grpc::AdminApi { ctx };
        Ok(Self {
            config,
            grpc,
            http,
            registry,
            api,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_addr)
    }

    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let token = shutdown::token_from(shutdown);
        let metadata = self.api.ctx.metadata.clone();
        let topic = self.config.kafka.topic.clone();
        let pool = self.api.ctx.pool.clone();
        let readiness: http::ReadinessCheck = Arc::new(move || {
            let metadata = metadata.clone();
            let topic = topic.clone();
            let pool = pool.clone();
            Box::pin(async move {
                tributary_store::pool::ping(&pool).await.map_err(|e| {
                    format!("postgresql: {}", tributary_platform::status::chain(&e))
                })?;
                tokio::task::spawn_blocking(move || {
                    tributary_kafka::admin::partition_count(
                        metadata.client(),
                        &topic,
                        Duration::from_secs(2),
                    )
                    .map(|_| ())
                    .map_err(|e| format!("kafka: {e}"))
                })
                .await
                .map_err(|e| format!("readiness task: {e}"))?
            })
        });
        let exporter = tokio::spawn(export_lag(
            self.api.ctx.lag.clone(),
            self.api.ctx.pool.clone(),
            self.config.lag_groups.clone(),
            self.config.kafka.topic.clone(),
            self.config.lag_poll_interval,
            token.clone(),
        ));
        let maintenance = tokio::spawn(maintenance::run(
            self.api.ctx.pool.clone(),
            maintenance::Settings {
                interval: self.config.maintenance_interval,
                retention: Some(self.config.retention).filter(|r| !r.is_zero()),
            },
            maintenance::Metrics::register(&self.registry)?,
            token.clone(),
        ));
        let security = service::Security::build(
            &self.config.edge,
            self.api.ctx.pool.clone(),
            &self.registry,
            &[service_names::ADMIN],
            Some(self.config.max_call_duration),
        )?;
        let ports = service::Ports {
            name: "admin",
            grpc: self.grpc,
            http: self.http,
            registry: self.registry,
            health_names: &[service_names::ADMIN],
            ready: readiness,
            grace: self.config.shutdown.shutdown_grace,
            security,
        };
        let api = self.api;
        let served = service::run(ports, token, |routes| {
            routes.add_service(AdminServiceServer::new(api));
        })
        .await;
        exporter.abort();
        maintenance.abort();
        served
    }
}

/// Refreshes the lag gauges every `interval`, one poll at a time (a slow
/// broker delays the next poll instead of piling them up).
async fn export_lag(
    monitor: Arc<lag::LagMonitor>,
    pool: tributary_store::Pool,
    groups: Vec<String>,
    topic: String,
    interval: Duration,
    token: shutdown::CancellationToken,
) {
    // Subscriptions' groups exported at the last refresh, to withdraw the
    // series of one deleted since.
    let mut discovered: Vec<String> = Vec::new();
    loop {
        let mut all = groups.clone();
        match pool
            .run(async |c| tributary_store::subscriptions::generations(c).await)
            .await
        {
            Ok(subs) => {
                let now: Vec<String> = subs
                    .into_iter()
                    .map(|(name, _)| tributary_store::subscriptions::consumer_group(&name))
                    .collect();
                let gone: Vec<String> = discovered
                    .iter()
                    .filter(|g| !now.contains(g))
                    .cloned()
                    .collect();
                if !gone.is_empty() {
                    monitor.forget(&gone, &topic);
                }
                discovered = now;
            }
            // Keep exporting the ones known: PostgreSQL may be back soon.
            Err(e) => {
                tracing::debug!(error = %tributary_store::error_chain(&e), "cannot list subscriptions for the lag gauges")
            }
        }
        all.extend(discovered.iter().cloned());
        let (m, t) = (monitor.clone(), topic.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || m.export(&all, &t)).await {
            tracing::warn!(error = %e, "lag poll failed");
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
