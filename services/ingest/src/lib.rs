//! The ingest service: validates events, assigns ids, produces them to Kafka
//! and answers only after the broker acknowledged them.

mod backlog;
mod broker;
mod config;
mod grpc;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use tokio::sync::Semaphore;
use tributary_kafka::producer::{Producer, ProducerSettings};
use tributary_platform::{http, service, shutdown};
use tributary_proto::service_names;
use tributary_proto::wire::ingest_service_server::IngestServiceServer;

pub use config::Config;

/// tonic's decode limit sits above our batch limit, so an oversized batch
/// gets our INVALID_ARGUMENT (with the limit named) rather than tonic's error.
const MAX_DECODING_BYTES: usize = 4 * tributary_proto::validate::MAX_BATCH_BYTES;

/// A built, bound, not yet running ingest service.
pub struct Ingest {
    config: Config,
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    registry: Registry,
    producer: Producer,
    api: grpc::IngestApi,
    pool: tributary_store::Pool,
    schemas: tributary_store::schema_cache::SchemaCache,
    broker: broker::BrokerHealth,
    /// Stops the broker probe when the service is dropped.
    _probe: tokio_util::sync::DropGuard,
}

impl Ingest {
    /// Binds both ports and creates the producer. The broker need not be up:
    /// the service starts NOT_SERVING and turns SERVING once it answers.
    pub async fn build(config: Config, registry: Registry) -> anyhow::Result<Self> {
        let (grpc, http) = service::bind(config.grpc_addr, config.http_addr).await?;
        tributary_platform::metrics::register_build_info(&registry, "ingest")?;
        let producer = Producer::new(
            &config.kafka,
            &ProducerSettings {
                message_timeout: config.produce_timeout,
                linger: config.linger,
                // librdkafka's own copy of the records is bounded like ours
                // (a quarter more for its per-record overhead), including
                // records a call stopped waiting for.
                queue_max_bytes: Some(
                    config
                        .max_in_flight_bytes
                        .saturating_add(config.max_in_flight_bytes / 4),
                ),
            },
            &registry,
        )?;
        let mut pool_config = tributary_store::PoolConfig::new(&config.database_url);
        pool_config.max_size = 4;
        let pool = tributary_store::pool::build(&pool_config)?;
        tributary_store::pool::register_metrics(&registry, &pool)?;
        let schemas = tributary_store::schema_cache::SchemaCache::default();
        let probe = tokio_util::sync::CancellationToken::new();
        let broker = broker::BrokerHealth::probe(
            producer.clone(),
            config.kafka.topic.clone(),
            probe.clone(),
        );
        let api = grpc::IngestApi {
            broker: broker.clone(),
            schemas: schemas.clone(),
            require_registered_types: config.require_registered_types,
            producer: producer.clone(),
            topic: Arc::from(config.kafka.topic.as_str()),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight_events)),
            in_flight_kib: Arc::new(Semaphore::new(
                usize::try_from(config.max_in_flight_bytes / 1024)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            )),
            stream_window: config.stream_window,
            backlog: backlog::Backlog::new(config.max_queue_delay),
            metrics: metrics::IngestMetrics::register(&registry)?,
            instance: Arc::from(instance_name().as_str()),
        };
        Ok(Self {
            config,
            grpc,
            http,
            registry,
            producer,
            api,
            pool,
            schemas,
            broker,
            _probe: probe.drop_guard(),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_addr)
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests (up to
    /// the grace period) and flushes the producer.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let token = shutdown::token_from(shutdown);
        let refresher = tokio::spawn(tributary_store::schema_cache::refresh(
            self.schemas.clone(),
            self.pool.clone(),
            self.config.schema_refresh,
            token.clone().cancelled_owned(),
        ));
        let ready_broker = self.broker.clone();
        let ready_schemas = self.schemas.clone();
        let readiness: http::ReadinessCheck = Arc::new(move || {
            let broker = ready_broker.clone();
            let schemas = ready_schemas.clone();
            Box::pin(async move {
                // Until the registry was read once, registered types could
                // slip through unchecked; afterwards the cache serves.
                if !schemas.loaded() {
                    return Err(
                        "event-type schemas not loaded yet (PostgreSQL unreachable?)".into(),
                    );
                }
                // The probe's last answer: what publishes are refused by.
                match broker.down() {
                    None => Ok(()),
                    Some(why) => Err(format!("the broker does not answer: {why}")),
                }
            })
        });
        let grace = self.config.shutdown.shutdown_grace;
        let security = service::Security::build(
            &self.config.edge,
            self.pool.clone(),
            &self.registry,
            &[service_names::INGEST],
            None,
        )?
        .with_cors(&self.config.cors);
        let ports = service::Ports {
            name: "ingest",
            grpc: self.grpc,
            http: self.http,
            registry: self.registry,
            health_names: &[service_names::INGEST],
            ready: readiness,
            grace,
            security,
        };
        let api = self.api;
        let served = service::run(ports, token, |routes| {
            routes.add_service(
                IngestServiceServer::new(api).max_decoding_message_size(MAX_DECODING_BYTES),
            );
        })
        .await;
        // Everything acknowledged was already flushed; this empties what a
        // cancelled call left queued.
        let producer = self.producer.clone();
        match tokio::task::spawn_blocking(move || producer.flush(grace)).await {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete"),
            Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
        }
        refresher.abort();
        served
    }
}

fn instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "ingest".to_owned())
}
