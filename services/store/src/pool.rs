//! The connection pool and its Prometheus gauges.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime, Timeouts};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

use crate::StoreError;
use crate::tls::Connect;

pub use deadpool_postgres::Object as Client;

/// The connection pool, and how its connections are made (so a statement
/// can be cancelled on a connection of its own). Derefs to deadpool's pool.
#[derive(Clone)]
pub struct Pool {
    inner: deadpool_postgres::Pool,
    connect: Arc<Connect>,
}

impl std::ops::Deref for Pool {
    type Target = deadpool_postgres::Pool;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Pool {
    /// How this pool connects (settings and TLS), for connections of its own.
    pub fn connector(&self) -> &Connect {
        &self.connect
    }

    /// Runs `work` on a pooled connection. If the caller stops waiting (a
    /// call's deadline passed, its client went away) while `work` runs, the
    /// statement in progress is cancelled on the server, and the connection
    /// is closed instead of going back to the pool (a late cancel must never
    /// reach the next caller's statement).
    pub async fn run<R>(
        &self,
        work: impl AsyncFnOnce(&mut Client) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let client = self.inner.get().await?;
        let mut guard = CancelOnDrop {
            client: Some(client),
            tls: self.connect.tls.clone(),
        };
        let result = match guard.client.as_mut() {
            Some(client) => work(client).await,
            None => Err(StoreError::Invariant("pooled connection missing")),
        };
        // Finished: the connection goes back to the pool as usual.
        drop(guard.client.take());
        result
    }
}

struct CancelOnDrop {
    client: Option<Client>,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let token = client.cancel_token();
        let detached = Client::take(client);
        let tls = self.tls.clone();
        // Drop runs inside the runtime (the abandoned future is dropped by a
        // task of it); without one there is nothing to cancel from.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = token.cancel_query(tls).await {
                    tracing::debug!(error = %e, "cannot cancel an abandoned statement");
                }
                drop(detached);
            });
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub url: String,
    pub max_size: usize,
    /// How long a caller waits for a connection (and for one to be made).
    pub timeout: Duration,
}

impl PoolConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_size: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Builds the pool. No connection is made until one is needed, so a service
/// starts (and reports not-ready) while PostgreSQL is down.
pub fn build(config: &PoolConfig) -> Result<Pool, StoreError> {
    let mut connect = Connect::from_url(&config.url)?;
    if connect.config.get_application_name().is_none() {
        connect.config.application_name("tributary");
    }
    connect.config.connect_timeout(config.timeout);
    let manager = Manager::from_config(
        connect.config.clone(),
        connect.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let inner = deadpool_postgres::Pool::builder(manager)
        .max_size(config.max_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(config.timeout),
            create: Some(config.timeout),
            recycle: Some(config.timeout),
        })
        .build()?;
    Ok(Pool {
        inner,
        connect: Arc::new(connect),
    })
}

/// Checks that PostgreSQL answers.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// Registers `tributary_db_pool_connections{state}` and
/// `tributary_db_pool_waiting`, read from the pool at scrape time.
pub fn register_metrics(registry: &Registry, pool: &Pool) -> Result<(), prometheus::Error> {
    let connections = IntGaugeVec::new(
        Opts::new(
            "tributary_db_pool_connections",
            "PostgreSQL pool connections by state",
        ),
        &["state"],
    )?;
    let waiting = IntGauge::new(
        "tributary_db_pool_waiting",
        "Callers waiting for a PostgreSQL connection",
    )?;
    registry.register(Box::new(PoolCollector {
        pool: pool.clone(),
        connections,
        waiting,
    }))
}

struct PoolCollector {
    pool: Pool,
    connections: IntGaugeVec,
    waiting: IntGauge,
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.connections.desc();
        d.extend(self.waiting.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let status = self.pool.status();
        let idle = i64::try_from(status.available).unwrap_or(0);
        let size = i64::try_from(status.size).unwrap_or(0);
        self.connections.with_label_values(&["idle"]).set(idle);
        self.connections
            .with_label_values(&["in_use"])
            .set((size - idle).max(0));
        self.waiting
            .set(i64::try_from(status.waiting).unwrap_or(i64::MAX));
        let mut out = self.connections.collect();
        out.extend(self.waiting.collect());
        out
    }
}
