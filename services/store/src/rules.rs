//! Threshold rules and the alerts they record.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;

use crate::StoreError;

#[derive(Debug, Clone)]
pub struct RuleRow {
    pub rule_id: String,
    pub name: String,
    pub event_type: String,
    /// The JSON Pointer's reference tokens.
    pub path: Vec<String>,
    pub pointer: String,
    /// GT, GTE, LT, LTE, EQ or NE.
    pub comparator: String,
    pub threshold: serde_json::Value,
    pub webhook_url: String,
    pub description: String,
    pub created_at: SystemTime,
}

const COLUMNS: &str = "rule_id, name, event_type, path, pointer, comparator, threshold, webhook_url, description, created_at";

fn row(r: &tokio_postgres::Row) -> RuleRow {
    RuleRow {
        rule_id: r.get(0),
        name: r.get(1),
        event_type: r.get(2),
        path: r.get(3),
        pointer: r.get(4),
        comparator: r.get(5),
        threshold: r.get(6),
        webhook_url: r.get(7),
        description: r.get(8),
        created_at: r.get(9),
    }
}

pub async fn create(client: &impl GenericClient, rule: &RuleRow) -> Result<RuleRow, StoreError> {
    let sql = format!(
        "INSERT INTO alert_rules (rule_id, name, event_type, path, pointer, comparator, threshold, webhook_url, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    );
    let r = client
        .query_one(
            &sql,
            &[
                &rule.rule_id,
                &rule.name,
                &rule.event_type,
                &rule.path,
                &rule.pointer,
                &rule.comparator,
                &rule.threshold,
                &rule.webhook_url,
                &rule.description,
            ],
        )
        .await?;
    Ok(row(&r))
}

/// Live rules, ordered by id (ids are UUIDv7: creation order), after `after`.
pub async fn list(
    client: &impl GenericClient,
    event_type: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<RuleRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alert_rules
         WHERE deleted_at IS NULL AND ($1::text IS NULL OR event_type = $1) AND ($2::text IS NULL OR rule_id > $2)
         ORDER BY rule_id LIMIT $3"
    );
    let rows = client.query(&sql, &[&event_type, &after, &limit]).await?;
    Ok(rows.iter().map(row).collect())
}

/// Every live rule (the processor's cache).
pub async fn all_live(client: &impl GenericClient) -> Result<Vec<RuleRow>, StoreError> {
    list(client, None, None, i64::MAX).await
}

/// Marks a rule deleted (its alerts stay). False when no live rule has the id.
pub async fn delete(client: &impl GenericClient, rule_id: &str) -> Result<bool, StoreError> {
    Ok(client
        .execute(
            "UPDATE alert_rules SET deleted_at = now() WHERE rule_id = $1 AND deleted_at IS NULL",
            &[&rule_id],
        )
        .await?
        == 1)
}

#[derive(Debug, Clone)]
pub struct NewAlert {
    pub rule_id: String,
    pub event_id: String,
    pub event_type: String,
    pub observed: serde_json::Value,
    /// `pending` when the rule has a webhook, else `none`.
    pub webhook_status: &'static str,
}

/// Records alerts; one per rule and event, so a redelivered event adds none.
/// Returns the (alert_id, rule_id, event_id) of those recorded now.
pub async fn insert_alerts(
    client: &impl GenericClient,
    alerts: &[NewAlert],
) -> Result<Vec<(i64, String, String)>, StoreError> {
    if alerts.is_empty() {
        return Ok(Vec::new());
    }
    let rule_ids: Vec<&str> = alerts.iter().map(|a| a.rule_id.as_str()).collect();
    let event_ids: Vec<&str> = alerts.iter().map(|a| a.event_id.as_str()).collect();
    let types: Vec<&str> = alerts.iter().map(|a| a.event_type.as_str()).collect();
    let observed: Vec<&serde_json::Value> = alerts.iter().map(|a| &a.observed).collect();
    let status: Vec<&str> = alerts.iter().map(|a| a.webhook_status).collect();
    let rows = client
        .query(
            "INSERT INTO alerts (rule_id, event_id, event_type, observed, webhook_status)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[])
             ON CONFLICT (rule_id, event_id) DO NOTHING
             RETURNING alert_id, rule_id, event_id",
            &[&rule_ids, &event_ids, &types, &observed, &status],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

pub async fn set_webhook_status(
    client: &impl GenericClient,
    alert_id: i64,
    status: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE alerts SET webhook_status = $2 WHERE alert_id = $1",
            &[&alert_id, &status],
        )
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct AlertRow {
    pub alert_id: i64,
    pub rule_id: String,
    pub rule_name: String,
    pub event_id: String,
    pub event_type: String,
    pub observed: serde_json::Value,
    pub triggered_at: SystemTime,
    pub webhook_status: String,
}

/// Newest first, after alert `after`.
pub async fn list_alerts(
    client: &impl GenericClient,
    rule_id: Option<&str>,
    triggered_after: Option<SystemTime>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<AlertRow>, StoreError> {
    let rows = client
        .query(
            "SELECT a.alert_id, a.rule_id, r.name, a.event_id, a.event_type, a.observed, a.triggered_at, a.webhook_status
             FROM alerts a JOIN alert_rules r USING (rule_id)
             WHERE ($1::text IS NULL OR a.rule_id = $1)
               AND ($2::timestamptz IS NULL OR a.triggered_at >= $2)
               AND ($3::int8 IS NULL OR a.alert_id < $3)
             ORDER BY a.alert_id DESC LIMIT $4",
            &[&rule_id, &triggered_after, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AlertRow {
            alert_id: r.get(0),
            rule_id: r.get(1),
            rule_name: r.get(2),
            event_id: r.get(3),
            event_type: r.get(4),
            observed: r.get(5),
            triggered_at: r.get(6),
            webhook_status: r.get(7),
        })
        .collect())
}
