//! Subscriptions: their settings (an opaque `spec`, the protobuf encoding of
//! `tributary.v1.Subscription` as admin validated it), their operator state
//! (paused) and what dispatch reports back (state, last delivery, last
//! error).

use std::time::SystemTime;

use deadpool_postgres::GenericClient;

use crate::StoreError;

/// A subscription's consumer group: `tributary.sub.<name>` (admin commits
/// its offsets, dispatch reads in it, the lag exporter watches it).
pub fn consumer_group(name: &str) -> String {
    format!("tributary.sub.{name}")
}

#[derive(Debug, Clone)]
pub struct SubscriptionRow {
    pub name: String,
    pub spec: Vec<u8>,
    pub paused: bool,
    /// `active`, `failing` or `disabled`.
    pub state: String,
    /// Newest first.
    pub secrets: Vec<String>,
    pub old_secrets_until: Option<SystemTime>,
    pub generation: i64,
    pub last_delivered_at: Option<SystemTime>,
    pub last_error: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl SubscriptionRow {
    /// The secrets that sign at `now`: the newest, and the older ones while
    /// their grace lasts.
    pub fn signing_secrets(&self, now: SystemTime) -> &[String] {
        let grace = self.old_secrets_until.is_some_and(|until| now < until);
        if grace {
            &self.secrets
        } else {
            &self.secrets[..self.secrets.len().min(1)]
        }
    }
}

const COLUMNS: &str = "name, spec, paused, state, secrets, old_secrets_until, generation, \
                       last_delivered_at, last_error, created_at, updated_at";

fn row(r: &tokio_postgres::Row) -> SubscriptionRow {
    SubscriptionRow {
        name: r.get(0),
        spec: r.get(1),
        paused: r.get(2),
        state: r.get(3),
        secrets: r.get(4),
        old_secrets_until: r.get(5),
        generation: r.get(6),
        last_delivered_at: r.get(7),
        last_error: r.get(8),
        created_at: r.get(9),
        updated_at: r.get(10),
    }
}

/// Inserts a subscription; `None` when the name is taken.
pub async fn create(
    client: &impl GenericClient,
    name: &str,
    spec: &[u8],
    paused: bool,
    secrets: &[String],
) -> Result<Option<SubscriptionRow>, StoreError> {
    let sql = format!(
        "INSERT INTO subscriptions (name, spec, paused, secrets) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}"
    );
    let r = client
        .query_opt(&sql, &[&name, &spec, &paused, &secrets])
        .await?;
    Ok(r.as_ref().map(row))
}

pub async fn get(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<SubscriptionRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM subscriptions WHERE name = $1");
    Ok(client.query_opt(&sql, &[&name]).await?.as_ref().map(row))
}

/// In name order, after `after`.
pub async fn list(
    client: &impl GenericClient,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<SubscriptionRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE ($1::text IS NULL OR name > $1)
         ORDER BY name LIMIT $2"
    );
    let rows = client.query(&sql, &[&after, &limit]).await?;
    Ok(rows.iter().map(row).collect())
}

/// One subscription's generation; `None` once it is deleted. What a
/// dispatch worker asks before each delivery attempt, so a pause or a
/// delete holds from the moment the operator's call returns.
pub async fn generation(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT generation FROM subscriptions WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Every subscription's name and generation (dispatch's cheap poll).
pub async fn generations(client: &impl GenericClient) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = client
        .query("SELECT name, generation FROM subscriptions", &[])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// An operator's change: new settings and paused flag, and optionally new
/// secrets (with the grace of the older ones). Raises the generation, and
/// leaves `disabled` for `active` when the subscription is resumed.
pub async fn update(
    client: &impl GenericClient,
    name: &str,
    spec: &[u8],
    paused: bool,
    secrets: Option<(&[String], Option<SystemTime>)>,
) -> Result<Option<SubscriptionRow>, StoreError> {
    let (new_secrets, until) = match secrets {
        Some((s, until)) => (Some(s), until),
        None => (None, None),
    };
    let sql = format!(
        "UPDATE subscriptions SET spec = $2, paused = $3,
             secrets = coalesce($4, secrets),
             old_secrets_until = CASE WHEN $4::text[] IS NULL THEN old_secrets_until ELSE $5 END,
             state = CASE WHEN state = 'disabled' AND NOT $3 THEN 'active' ELSE state END,
             generation = generation + 1, updated_at = now()
         WHERE name = $1 RETURNING {COLUMNS}"
    );
    let r = client
        .query_opt(&sql, &[&name, &spec, &paused, &new_secrets, &until])
        .await?;
    Ok(r.as_ref().map(row))
}

pub async fn delete(client: &impl GenericClient, name: &str) -> Result<bool, StoreError> {
    Ok(client
        .execute("DELETE FROM subscriptions WHERE name = $1", &[&name])
        .await?
        == 1)
}

/// What dispatch reports after an attempt: the state it sees, and either a
/// delivery (`error` empty) or the error of a failed attempt. Does not raise
/// the generation (dispatch's own report is not a change to reload).
pub async fn report(
    client: &impl GenericClient,
    name: &str,
    state: &str,
    delivered_at: Option<SystemTime>,
    error: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            // Only an operator's resume leaves `disabled` (see `update`): a
            // replica still delivering never overwrites it.
            "UPDATE subscriptions SET state = CASE WHEN state = 'disabled' THEN state ELSE $2 END,
                 last_delivered_at = coalesce($3, last_delivered_at),
                 last_error = CASE WHEN $3::timestamptz IS NULL THEN $4 ELSE last_error END
             WHERE name = $1",
            &[&name, &state, &delivered_at, &error],
        )
        .await?;
    Ok(())
}

/// The endpoint answered 410 Gone: disabled until an operator resumes it.
/// The generation moves, so every replica's worker stops (not only the one
/// that got the answer).
pub async fn disable(client: &impl GenericClient, name: &str, why: &str) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE subscriptions SET state = 'disabled', last_error = $2,
                 generation = generation + 1
             WHERE name = $1",
            &[&name, &why],
        )
        .await?;
    Ok(())
}
