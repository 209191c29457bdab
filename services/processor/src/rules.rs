//! Threshold rules: evaluated on each newly stored event, per event (no
//! window), inside the batch's transaction, so an alert is recorded exactly
//! once per event and rule even when the event is redelivered.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::IntCounterVec;
use serde_json::Value;
use tributary_platform::egress::EgressPolicy;
use tributary_store::Pool;
use tributary_store::events::NewEvent;
use tributary_store::rules::{self, NewAlert, RuleRow};

#[derive(Clone, Default)]
pub struct RuleCache {
    by_type: Arc<RwLock<HashMap<String, Vec<Arc<RuleRow>>>>>,
    names: Arc<RwLock<HashMap<String, String>>>,
    loaded: Arc<AtomicBool>,
}

impl RuleCache {
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn name_of(&self, rule_id: &str) -> Option<String> {
        self.names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(rule_id)
            .cloned()
    }

    async fn load(
        &self,
        pool: &Pool,
        counter: &IntCounterVec,
    ) -> Result<(), tributary_store::StoreError> {
        let client = pool.get().await?;
        let rows = rules::all_live(&client).await?;
        let mut by_type: HashMap<String, Vec<Arc<RuleRow>>> = HashMap::new();
        let mut names = HashMap::new();
        for r in rows {
            // Known label sets exist at 0 before a rule first fires.
            let _ = counter.with_label_values(&[&r.name]);
            names.insert(r.rule_id.clone(), r.name.clone());
            by_type
                .entry(r.event_type.clone())
                .or_default()
                .push(Arc::new(r));
        }
        *self
            .by_type
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = by_type;
        *self
            .names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// The alerts the newly inserted `rows` raise.
    pub fn evaluate(&self, rows: &[NewEvent], inserted: &HashSet<String>) -> Vec<NewAlert> {
        let by_type = self
            .by_type
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if by_type.is_empty() {
            return Vec::new();
        }
        let mut alerts = Vec::new();
        for row in rows.iter().filter(|r| inserted.contains(&r.event_id)) {
            let Some(rules) = by_type.get(&row.event_type) else {
                continue;
            };
            let Ok(payload) = serde_json::from_str::<Value>(&row.payload_json) else {
                continue;
            };
            for rule in rules {
                let Some(observed) = tributary_proto::json::lookup(&payload, &rule.path) else {
                    continue;
                };
                if compare(&rule.comparator, observed, &rule.threshold) {
                    alerts.push(NewAlert {
                        rule_id: rule.rule_id.clone(),
                        event_id: row.event_id.clone(),
                        event_type: row.event_type.clone(),
                        observed: observed.clone(),
                        webhook_status: if rule.webhook_url.is_empty() {
                            "none"
                        } else {
                            "pending"
                        },
                    });
                }
            }
        }
        alerts
    }

    pub fn webhook_of(&self, rule_id: &str) -> Option<Arc<RuleRow>> {
        self.by_type
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .flatten()
            .find(|r| r.rule_id == rule_id && !r.webhook_url.is_empty())
            .cloned()
    }
}

/// Numbers compare as numbers and strings as strings; EQ/NE compare any
/// JSON values; other mixes never match.
pub fn compare(comparator: &str, observed: &Value, threshold: &Value) -> bool {
    use std::cmp::Ordering as O;
    let order = match (observed, threshold) {
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .zip(b.as_f64())
            .and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    };
    match comparator {
        "EQ" => order.map_or(observed == threshold, |o| o == O::Equal),
        "NE" => order.map_or(observed != threshold, |o| o != O::Equal),
        "GT" => order == Some(O::Greater),
        "GTE" => matches!(order, Some(O::Greater | O::Equal)),
        "LT" => order == Some(O::Less),
        "LTE" => matches!(order, Some(O::Less | O::Equal)),
        _ => false,
    }
}

/// Reloads the rules every `interval` until `stop` resolves: a new or
/// deleted rule takes effect within one interval.
pub async fn refresh(
    cache: RuleCache,
    pool: Pool,
    counter: IntCounterVec,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        if let Err(e) = cache.load(&pool, &counter).await {
            tracing::warn!(error = %tributary_store::error_chain(&e), "cannot load threshold rules; keeping the previous ones");
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// POSTs the alert as JSON to an `http://` webhook, three tries with backoff,
/// and records whether it was delivered. An address `webhooks` refuses is
/// not retried (see `tributary_platform::egress`); redirects are not followed.
pub async fn deliver(
    pool: Pool,
    webhooks: EgressPolicy,
    alert_id: i64,
    rule: Arc<RuleRow>,
    body: String,
) {
    let mut status = "failed";
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
        }
        match tokio::time::timeout(
            Duration::from_secs(5),
            post(&webhooks, &rule.webhook_url, &body),
        )
        .await
        {
            Ok(Ok(code)) if (200..300).contains(&code) => {
                status = "delivered";
                break;
            }
            Ok(Ok(code)) => tracing::warn!(alert_id, code, attempt, "webhook refused the alert"),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::warn!(alert_id, error = %e, "webhook address refused; not retried");
                break;
            }
            Ok(Err(e)) => tracing::warn!(alert_id, error = %e, attempt, "webhook unreachable"),
            Err(_) => tracing::warn!(alert_id, attempt, "webhook timed out"),
        }
    }
    if let Ok(client) = pool.get().await
        && let Err(e) = rules::set_webhook_status(&client, alert_id, status).await
    {
        tracing::warn!(alert_id, error = %e, "cannot record the webhook outcome");
    }
}

/// The alert POSTed through the egress policy; the status code of the
/// answer (a 3xx is just not a 2xx).
async fn post(webhooks: &EgressPolicy, url: &str, body: &str) -> std::io::Result<u16> {
    let answer = webhooks
        .post(
            url,
            "application/json",
            &[],
            body.as_bytes(),
            "tributary-processor",
        )
        .await?;
    Ok(answer.status)
}

#[cfg(test)]
mod tests {
    use super::compare;
    use serde_json::json;

    #[test]
    fn comparators() {
        assert!(compare("GT", &json!(150), &json!(100)));
        assert!(!compare("GT", &json!(50), &json!(100)));
        assert!(compare("GTE", &json!(100.0), &json!(100)));
        assert!(compare("LT", &json!("a"), &json!("b")));
        assert!(compare("EQ", &json!(true), &json!(true)));
        assert!(compare("NE", &json!("x"), &json!(1)));
        assert!(
            !compare("GT", &json!("150"), &json!(100)),
            "no cross-type ordering"
        );
    }
}
