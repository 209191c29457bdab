//! Typed queries on `api_keys`. Only the SHA-256 of a key's secret is ever
//! stored or read; the secret itself never reaches this module.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;

use crate::StoreError;

/// Notified with the key id whenever a key is created or changed.
pub const CHANGED_CHANNEL: &str = "tributary_api_keys";

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub key_id: String,
    pub name: String,
    pub publishable: bool,
    pub secret_sha256: Vec<u8>,
    pub scopes: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub rate_per_second: i32,
    pub rate_burst: i32,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
    pub revoked_at: Option<SystemTime>,
    pub last_used_at: Option<SystemTime>,
}

const COLUMNS: &str = "key_id, name, publishable, secret_sha256, scopes, allowed_origins, \
     rate_per_second, rate_burst, created_at, expires_at, revoked_at, last_used_at";

fn row(r: &tokio_postgres::Row) -> ApiKeyRow {
    ApiKeyRow {
        key_id: r.get(0),
        name: r.get(1),
        publishable: r.get(2),
        secret_sha256: r.get(3),
        scopes: r.get(4),
        allowed_origins: r.get(5),
        rate_per_second: r.get(6),
        rate_burst: r.get(7),
        created_at: r.get(8),
        expires_at: r.get(9),
        revoked_at: r.get(10),
        last_used_at: r.get(11),
    }
}

/// A key to create; `created_at` and `last_used_at` are the database's.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub key_id: String,
    pub name: String,
    pub publishable: bool,
    pub secret_sha256: Vec<u8>,
    pub scopes: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub rate_per_second: i32,
    pub rate_burst: i32,
    pub expires_at: Option<SystemTime>,
}

/// Creates a key. A key id already taken is a unique violation (23505).
pub async fn create(client: &impl GenericClient, key: &NewApiKey) -> Result<ApiKeyRow, StoreError> {
    let sql = format!(
        "INSERT INTO api_keys (key_id, name, publishable, secret_sha256, scopes, allowed_origins,
                               rate_per_second, rate_burst, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING {COLUMNS}"
    );
    let r = client
        .query_one(
            &sql,
            &[
                &key.key_id,
                &key.name,
                &key.publishable,
                &key.secret_sha256,
                &key.scopes,
                &key.allowed_origins,
                &key.rate_per_second,
                &key.rate_burst,
                &key.expires_at,
            ],
        )
        .await?;
    Ok(row(&r))
}

/// One key by id, revoked or not.
pub async fn get(
    client: &impl GenericClient,
    key_id: &str,
) -> Result<Option<ApiKeyRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = $1");
    Ok(client.query_opt(&sql, &[&key_id]).await?.as_ref().map(row))
}

/// The keys among `key_ids` (a cache's full refresh).
pub async fn get_many(
    client: &impl GenericClient,
    key_ids: &[String],
) -> Result<Vec<ApiKeyRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = ANY($1)");
    Ok(client
        .query(&sql, &[&key_ids])
        .await?
        .iter()
        .map(row)
        .collect())
}

/// Keys in creation order after the `(created_at, key_id)` cursor.
pub async fn list(
    client: &impl GenericClient,
    after: Option<(SystemTime, &str)>,
    include_revoked: bool,
    limit: i64,
) -> Result<Vec<ApiKeyRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM api_keys
         WHERE ($1::timestamptz IS NULL OR (created_at, key_id) > ($1, $2))
           AND ($3 OR revoked_at IS NULL)
         ORDER BY created_at, key_id LIMIT $4"
    );
    let (at, id) = match after {
        Some((at, id)) => (Some(at), id),
        None => (None, ""),
    };
    let rows = client
        .query(&sql, &[&at, &id, &include_revoked, &limit])
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// Revokes a key (once: a second revocation keeps the first time). `None`
/// when no key has the id.
pub async fn revoke(
    client: &impl GenericClient,
    key_id: &str,
) -> Result<Option<ApiKeyRow>, StoreError> {
    let sql = format!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1
         RETURNING {COLUMNS}"
    );
    Ok(client.query_opt(&sql, &[&key_id]).await?.as_ref().map(row))
}

/// Records when keys were last used (each replica, now and then).
pub async fn touch(
    client: &impl GenericClient,
    used: &[(String, SystemTime)],
) -> Result<u64, StoreError> {
    if used.is_empty() {
        return Ok(0);
    }
    let (ids, times): (Vec<&str>, Vec<SystemTime>) =
        used.iter().map(|(id, at)| (id.as_str(), *at)).unzip();
    Ok(client
        .execute(
            "UPDATE api_keys k SET last_used_at = greatest(k.last_used_at, u.at)
             FROM unnest($1::text[], $2::timestamptz[]) AS u(key_id, at)
             WHERE k.key_id = u.key_id",
            &[&ids, &times],
        )
        .await?)
}
