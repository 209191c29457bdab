//! The query service: reads stored events back.

mod aggregate;
mod config;
mod context;
mod convert;
mod grpc;
mod page_token;
mod tail;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use tributary_platform::{http, service, shutdown};
use tributary_proto::service_names;
use tributary_proto::v1::query_service_server::QueryServiceServer;
use tributary_store::{Pool, PoolConfig};

pub use config::Config;
pub use tributary_platform::filter::store_filter;
pub use tributary_proto::json::pointer_tokens;

pub struct Query {
    config: Config,
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    registry: Registry,
    pool: Pool,
}

impl Query {
    pub async fn build(config: Config, registry: Registry) -> anyhow::Result<Self> {
        let (grpc, http) = service::bind(config.grpc_addr, config.http_addr).await?;
        tributary_platform::metrics::register_build_info(&registry, "query")?;
        let mut pool_config = PoolConfig::new(&config.database_url);
        pool_config.max_size = config.db_pool_size.max(1);
        let pool = tributary_store::pool::build(&pool_config)?;
        tributary_store::pool::register_metrics(&registry, &pool)?;
        Ok(Self {
            config,
            grpc,
            http,
            registry,
            pool,
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
        let pool = self.pool.clone();
        let readiness: http::ReadinessCheck = Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                tributary_store::pool::ping(&pool)
                    .await
                    .map_err(|e| format!("postgresql: {}", tributary_platform::status::chain(&e)))
            })
        });
        let hub = tail::TailHub::new(token.clone());
        let listener = tokio::spawn(tail::listen(self.pool.clone(), hub.clone(), token.clone()));
        let security = service::Security::build(
            &self.config.edge,
            self.pool.clone(),
            &self.registry,
            &[service_names::QUERY],
            Some(self.config.max_call_duration),
        )?
        .with_cors(&self.config.cors);
        let ports = service::Ports {
            name: "query",
            grpc: self.grpc,
            http: self.http,
            registry: self.registry,
            health_names: &[service_names::QUERY],
            ready: readiness,
            grace: self.config.shutdown.shutdown_grace,
            security,
        };
        let api = grpc::QueryApi {
            ctx: context::QueryContext {
                pool: self.pool.clone(),
                tail: hub,
                known_zones: Default::default(),
            },
        };
        let served = service::run(ports, token, |routes| {
            routes.add_service(QueryServiceServer::new(api));
        })
        .await;
        listener.abort();
        served
    }
}
