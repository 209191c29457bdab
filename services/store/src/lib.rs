//! PostgreSQL: the connection pool (with its gauges), embedded versioned
//! migrations, and the typed queries the services run.

pub mod aggregate;
pub mod api_keys;
pub mod dead_letters;
pub mod erasure;
pub mod error;
pub mod event_types;
pub mod events;
pub mod hmac;
pub mod migrate;
pub mod notify;
pub mod partitions;
pub mod pool;
pub mod retention;
pub mod rules;
pub mod schema_cache;
pub mod subscriptions;
pub mod tail;
pub mod tls;

pub use error::{StoreError, chain as error_chain};
pub use pool::{Pool, PoolConfig};
