//! The payload schemas of registered event types, cached in memory so ingest
//! stays ready and fast while PostgreSQL blips. Loaded at start (ingest is
//! not ready before the first load), refreshed per type on the registry's
//! NOTIFY, and in full every `full_refresh` in case a notification was missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::Pool;
use crate::event_types::{self, Validator};
use crate::notify::Listener;

#[derive(Clone)]
pub struct Schema {
    pub version: i32,
    pub validator: Arc<Validator>,
}

#[derive(Clone, Default)]
pub struct SchemaCache {
    schemas: Arc<RwLock<HashMap<String, Schema>>>,
    loaded: Arc<AtomicBool>,
}

impl SchemaCache {
    pub fn get(&self, event_type: &str) -> Option<Schema> {
        self.schemas
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(event_type)
            .cloned()
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn put(&self, name: String, version: i32, schema: &serde_json::Value) {
        match event_types::compile(schema) {
            Ok(v) => {
                self.schemas
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(
                        name,
                        Schema {
                            version,
                            validator: Arc::new(v),
                        },
                    );
            }
            // The admin service refuses such schemas; keep the previous one.
            Err(why) => {
                tracing::error!(event_type = %name, version, why, "stored schema does not compile; kept the previous one")
            }
        }
    }

    async fn load_all(&self, pool: &Pool) -> Result<usize, crate::StoreError> {
        let client = pool.get().await?;
        let rows = event_types::list_latest(&client, None, i64::MAX).await?;
        let n = rows.len();
        for r in rows {
            self.put(r.name, r.version, &r.schema);
        }
        self.loaded.store(true, Ordering::Release);
        Ok(n)
    }

    async fn load_one(&self, pool: &Pool, name: &str) -> Result<(), crate::StoreError> {
        let client = pool.get().await?;
        if let Some(r) = event_types::get(&client, name, 0).await? {
            self.put(r.name, r.version, &r.schema);
        }
        Ok(())
    }
}

/// Keeps `cache` current until `stop` resolves.
pub async fn refresh(
    cache: SchemaCache,
    pool: Pool,
    full_refresh: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    tokio::select! {
        () = &mut stop => {}
        () = refresh_forever(&cache, &pool, full_refresh) => {}
    }
}

async fn refresh_forever(cache: &SchemaCache, pool: &Pool, full_refresh: Duration) {
    crate::notify::follow_forever(
        "schema registry unreachable; serving the cached schemas",
        Duration::from_millis(250),
        || follow(cache, pool, full_refresh),
    )
    .await;
}

/// Follows the registry until the connection fails; returns why.
async fn follow(cache: &SchemaCache, pool: &Pool, full_refresh: Duration) -> String {
    let mut listener =
        match Listener::start(pool.connector(), &[event_types::CHANGED_CHANNEL]).await {
            Ok(l) => l,
            Err(e) => return e,
        };
    // Listening first, then loading: no change can fall between the two.
    let n = match cache.load_all(pool).await {
        Ok(n) => n,
        Err(e) => return e.to_string(),
    };
    tracing::info!(event_types = n, "event-type schemas loaded");
    let mut tick = tokio::time::interval(full_refresh);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = cache.load_all(pool).await {
                    return e.to_string();
                }
            }
            name = listener.recv() => match name {
                Ok(name) => {
                    if let Err(e) = cache.load_one(pool, &name).await {
                        return e.to_string();
                    }
                    tracing::info!(event_type = %name, "event-type schema refreshed");
                }
                Err(e) => return format!("registry connection ended: {e}"),
            },
        }
    }
}
