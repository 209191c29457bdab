//! Dispatch: runs every active push subscription (a consumer group of its
//! own each, `tributary.sub.<name>`), delivering its matching events to its
//! webhook in signed batches, at least once and in order per partition key.
//! Replicas share the work through the consumer groups. It follows the
//! subscriptions table (a small poll of names and generations) and restarts
//! a subscription's worker when an operator changes it.

mod config;
mod context;
mod grpc;
mod metrics;
mod pull;
mod push;
pub mod sign;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary_platform::{http, service, shutdown};
use tributary_store::{Pool, PoolConfig};

pub use config::Config;
pub use push::stored_event_json;

pub struct Dispatch {
    config: Config,
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    registry: Registry,
    pool: Pool,
    metrics: metrics::DispatchMetrics,
}

impl Dispatch {
    /// Binds both ports and builds the pool; neither PostgreSQL nor the
    /// broker needs to be up yet.
    pub async fn build(config: Config, registry: Registry) -> anyhow::Result<Self> {
        let (grpc, http) = service::bind(config.grpc_addr, config.http_addr).await?;
        tributary_platform::metrics::register_build_info(&registry, "dispatch")?;
        let mut pool_config = PoolConfig::new(&config.database_url);
        pool_config.max_size = 4;
        let pool = tributary_store::pool::build(&pool_config)?;
        tributary_store::pool::register_metrics(&registry, &pool)?;
        let metrics = metrics::DispatchMetrics::register(&registry)?;
        Ok(Self {
            config,
            grpc,
            http,
            registry,
            pool,
            metrics,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_addr)
    }

    /// Delivers until `shutdown` resolves; then each worker stops between
    /// attempts (what it had not delivered is delivered again later).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let token = shutdown::token_from(shutdown);
        let ready_pool = self.pool.clone();
        let readiness: http::ReadinessCheck = Arc::new(move || {
            let pool = ready_pool.clone();
            Box::pin(async move {
                tributary_store::pool::ping(&pool)
                    .await
                    .map_err(|e| format!("postgresql: {}", tributary_platform::status::chain(&e)))
            })
        });
        let schemas = tributary_store::schema_cache::SchemaCache::default();
        let refresher = tokio::spawn(tributary_store::schema_cache::refresh(
            schemas.clone(),
            self.pool.clone(),
            std::time::Duration::from_secs(30),
            token.clone().cancelled_owned(),
        ));
        let tombstones = tributary_store::erasure::Tombstones::default();
        let tombstones_refresher = tokio::spawn(tributary_store::erasure::follow(
            tombstones.clone(),
            self.pool.clone(),
            context::ERASURES_REFRESH,
            token.clone().cancelled_owned(),
        ));
        let shared = Arc::new(context::Shared {
            kafka: self.config.kafka.clone(),
            pool: self.pool.clone(),
            schemas,
            webhooks: tributary_platform::egress::EgressPolicy::new(&self.config.webhooks),
            metrics: self.metrics.clone(),
            failing_after: self.config.failing_after,
            tombstones,
        });
        let security = service::Security::build(
            &self.config.edge,
            self.pool.clone(),
            &self.registry,
            grpc::HEALTH_NAMES,
            None,
        )?;
        let ports = service::Ports {
            name: "dispatch",
            grpc: self.grpc,
            http: self.http,
            registry: self.registry,
            health_names: grpc::HEALTH_NAMES,
            ready: readiness,
            grace: self.config.shutdown.shutdown_grace,
            security,
        };
        let api = pull::PullApi::new(shared.clone(), token.clone());
        let server = tokio::spawn(service::run(ports, token.clone(), |routes| {
            routes.add_service(
                tributary_proto::v1::subscriber_service_server::SubscriberServiceServer::new(api),
            );
        }));
        supervise(shared, self.config.poll_interval, token.clone()).await;
        refresher.abort();
        tombstones_refresher.abort();
        token.cancel();
        server.await.context("gRPC server task")?
    }
}

/// A running subscription: the generation it runs, and how to stop it.
struct Running {
    generation: i64,
    stop: CancellationToken,
    task: JoinHandle<push::Ended>,
}

/// Follows the subscriptions table until `token` is cancelled: starts a
/// worker for each push subscription that is neither paused nor disabled,
/// restarts it when its generation changes, stops it when it goes.
async fn supervise(
    shared: Arc<context::Shared>,
    every: std::time::Duration,
    token: CancellationToken,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        let generations = match shared
            .pool
            .run(async |c| tributary_store::subscriptions::generations(c).await)
            .await
        {
            Ok(g) => g.into_iter().collect::<HashMap<String, i64>>(),
            Err(e) => {
                tracing::warn!(error = %tributary_store::error_chain(&e), "cannot read subscriptions; keeping the running ones");
                continue;
            }
        };
        let gone: Vec<String> = running
            .keys()
            .filter(|n| !generations.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = running.remove(&name) {
                stop(r).await;
            }
            shared.metrics.forget(&name);
            tracing::info!(subscription = %name, "subscription deleted; stopped");
        }
        for (name, generation) in generations {
            if running
                .get(&name)
                .is_some_and(|r| r.generation == generation)
            {
                continue;
            }
            let n = name.clone();
            let row = match shared
                .pool
                .run(async |c| tributary_store::subscriptions::get(c, &n).await)
                .await
            {
                Ok(Some(row)) => row,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(subscription = %name, error = %tributary_store::error_chain(&e), "cannot read the subscription");
                    continue;
                }
            };
            if let Some(r) = running.remove(&name) {
                stop(r).await;
            }
            let stop_token = token.child_token();
            let state = if row.paused {
                "paused"
            } else if row.state == "disabled" {
                "disabled"
            } else {
                "active"
            };
            let task = if state == "active" && is_push(&row) {
                tokio::spawn(push::run(shared.clone(), row, stop_token.clone()))
            } else {
                shared.metrics.set_state(&name, state);
                tokio::spawn(async { push::Ended::Stopped })
            };
            running.insert(
                name,
                Running {
                    generation,
                    stop: stop_token,
                    task,
                },
            );
        }
    }
    for (_, r) in running.drain() {
        stop(r).await;
    }
}

fn is_push(row: &tributary_store::subscriptions::SubscriptionRow) -> bool {
    use prost::Message as _;
    matches!(
        tributary_proto::v1::Subscription::decode(row.spec.as_slice())
            .ok()
            .and_then(|s| s.delivery),
        Some(tributary_proto::v1::subscription::Delivery::Push(_))
    )
}

async fn stop(r: Running) {
    r.stop.cancel();
    let _ = r.task.await;
}
