//! The processor: consumes `tributary.events` in batches and stores each
//! event exactly once in PostgreSQL; poison records go to the dead-letter
//! topic and table. Serves health and reflection on its own gRPC port.

mod config;
mod metrics;
mod pipeline;
mod rules;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus::Registry;
use rdkafka::consumer::Consumer as _;
use tributary_kafka::consumer::{self, ConsumerSettings};
use tributary_kafka::producer::{Producer, ProducerSettings};
use tributary_platform::{http, service, shutdown};
use tributary_store::{Pool, PoolConfig};

pub use config::Config;

/// Health names the processor as this (it has no gRPC API of its own).
pub const HEALTH_NAME: &str = "tributary.v1.Processor";

pub struct Processor {
    config: Config,
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    registry: Registry,
    pool: Pool,
    consumer: Arc<consumer::Consumer>,
    dlq: Producer,
    metrics: metrics::ProcessorMetrics,
}

impl Processor {
    /// Binds both ports, builds the pool, the consumer and the DLQ producer.
    /// Neither PostgreSQL nor the broker needs to be up yet.
    pub async fn build(config: Config, registry: Registry) -> anyhow::Result<Self> {
        let (grpc, http) = service::bind(config.grpc_addr, config.http_addr).await?;
        tributary_platform::metrics::register_build_info(&registry, "processor")?;
        let pool = tributary_store::pool::build(&PoolConfig::new(&config.database_url))?;
        tributary_store::pool::register_metrics(&registry, &pool)?;
        let consumer = consumer::build(
            &config.kafka,
            &ConsumerSettings {
                group: config.group.clone(),
                session_timeout: Duration::from_secs(10),
                auto_commit_interval: Duration::from_secs(1),
            },
        )?;
        let dlq = Producer::new(&config.kafka, &ProducerSettings::default(), &registry)?;
        let metrics = metrics::ProcessorMetrics::register(&registry)?;
        Ok(Self {
            config,
            grpc,
            http,
            registry,
            pool,
            consumer: Arc::new(consumer),
            dlq,
            metrics,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_addr)
    }

    /// Consumes until `shutdown` resolves, then finishes (or abandons, if
    /// PostgreSQL is down) the batch in hand and commits stored offsets.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let token = shutdown::token_from(shutdown);
        let readiness = readiness(
            self.pool.clone(),
            Arc::downgrade(&self.consumer),
            vec![
                self.config.kafka.topic.clone(),
                self.config.kafka.dlq_topic.clone(),
            ],
        );
        let security = service::Security::build(
            &self.config.edge,
            self.pool.clone(),
            &self.registry,
            &[HEALTH_NAME],
            None,
        )?;
        let ports = service::Ports {
            name: "processor",
            grpc: self.grpc,
            http: self.http,
            registry: self.registry,
            health_names: &[HEALTH_NAME],
            ready: readiness,
            grace: self.config.shutdown.shutdown_grace,
            security,
        };
        // The processor's gRPC port serves only health and reflection.
        let server = tokio::spawn(service::run(ports, token.clone(), |_| {}));

        self.consumer
            .subscribe(&[self.config.kafka.topic.as_str()])
            .with_context(|| format!("cannot subscribe to {}", self.config.kafka.topic))?;
        tracing::info!(group = %self.config.group, topic = %self.config.kafka.topic, "processor consuming");
        let schemas = tributary_store::schema_cache::SchemaCache::default();
        let refresher = tokio::spawn(tributary_store::schema_cache::refresh(
            schemas.clone(),
            self.pool.clone(),
            std::time::Duration::from_secs(30),
            token.clone().cancelled_owned(),
        ));
        let rules = rules::RuleCache::default();
        let rules_refresher = tokio::spawn(rules::refresh(
            rules.clone(),
            self.pool.clone(),
            self.metrics.rule_alerts.clone(),
            std::time::Duration::from_secs(5),
            token.clone().cancelled_owned(),
        ));
        let pipeline = pipeline::Pipeline {
            rules,
            schemas,
            consumer: self.consumer.clone(),
            topic: self.config.kafka.topic.clone(),
            erasure_key: tokio::sync::OnceCell::new(),
            pool: self.pool.clone(),
            dlq: self.dlq.clone(),
            dlq_topic: self.config.kafka.dlq_topic.clone(),
            batch_size: self.config.batch_size as usize,
            batch_timeout: self.config.batch_timeout,
            store_concurrency: self.config.store_concurrency as usize,
            max_backoff: self.config.max_backoff,
            metrics: self.metrics.clone(),
            webhooks: tributary_platform::egress::EgressPolicy::new(&self.config.webhooks),
        };
        pipeline.run(token.clone()).await;
        refresher.abort();
        rules_refresher.abort();

        token.cancel();
        let served = server.await.context("gRPC server task")?;
        let dlq = self.dlq.clone();
        let _ = tokio::task::spawn_blocking(move || dlq.flush(Duration::from_secs(5))).await;
        served
    }
}

/// Ready when PostgreSQL answers and both topics exist.
///
/// The check holds the consumer weakly: the servers (and this closure in
/// them) can outlive the pipeline, and the last owner of a consumer closes
/// it on drop, which waits for the broker. Held strongly here, the close
/// happened whenever the servers' tasks were dropped, possibly after the
/// broker was gone, and then blocked forever (a hung integration test).
fn readiness(
    pool: Pool,
    consumer: std::sync::Weak<consumer::Consumer>,
    topics: Vec<String>,
) -> http::ReadinessCheck {
    Arc::new(move || {
        let pool = pool.clone();
        let consumer = consumer.clone();
        let topics = topics.clone();
        Box::pin(async move {
            tributary_store::pool::ping(&pool)
                .await
                .map_err(|e| format!("postgresql: {}", tributary_platform::status::chain(&e)))?;
            let consumer = consumer
                .upgrade()
                .ok_or_else(|| "kafka: the consumer is closed (shutting down)".to_owned())?;
            tokio::task::spawn_blocking(move || {
                for topic in &topics {
                    tributary_kafka::admin::partition_count(
                        consumer.client(),
                        topic,
                        Duration::from_secs(2),
                    )
                    .map_err(|e| format!("kafka: {e}"))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| format!("readiness task: {e}"))?
        })
    })
}
