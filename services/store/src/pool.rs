//! The connection pool and its Prometheus gauges.

use std::str::FromStr as _;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime, Timeouts};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use tokio_postgres::NoTls;

use crate::StoreError;

pub use deadpool_postgres::{Object as Client, Pool};

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
    let mut pg = tokio_postgres::Config::from_str(&config.url).map_err(StoreError::Config)?;
    if pg.get_application_name().is_none() {
        pg.application_name("tributary");
    }
    pg.connect_timeout(config.timeout);
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(config.max_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(config.timeout),
            create: Some(config.timeout),
            recycle: Some(config.timeout),
        })
        .build()?)
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
