//! Dispatch's series, per subscription (its name is chosen by operators,
//! never by callers of the data plane, so the label set stays small).

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};
use tributary_platform::metrics::{MetricsResult, counter_vec, gauge_vec, histogram_vec};

/// The states a subscription's gauge reports, one series each.
pub const STATES: [&str; 4] = ["active", "paused", "failing", "disabled"];

#[derive(Clone)]
pub struct DispatchMetrics {
    /// result: delivered, filtered, dead_lettered, erased.
    pub events: IntCounterVec,
    /// code: 2xx, 3xx, 4xx, 5xx, timeout, connect_error.
    pub deliveries: IntCounterVec,
    pub duration: HistogramVec,
    pub state: IntGaugeVec,
}

impl DispatchMetrics {
    pub fn register(registry: &Registry) -> MetricsResult<Self> {
        Ok(Self {
            events: counter_vec(
                registry,
                "tributary_subscription_events_total",
                "Records a subscription handled: delivered, filtered (not matching, or not a valid event), dead_lettered, or erased (an erased user's, below the erasure's end offset: skipped)",
                &["subscription", "result"],
            )?,
            deliveries: counter_vec(
                registry,
                "tributary_subscription_deliveries_total",
                "Delivery attempts by outcome: 2xx, 3xx, 4xx, 5xx, timeout, connect_error",
                &["subscription", "code"],
            )?,
            duration: histogram_vec(
                registry,
                "tributary_subscription_delivery_duration_seconds",
                "Time of one delivery attempt, connection to answer",
                &["subscription"],
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ],
            )?,
            state: gauge_vec(
                registry,
                "tributary_subscription_state",
                "1 for the state a subscription is in (active, paused, failing, disabled), 0 for the others",
                &["subscription", "state"],
            )?,
        })
    }

    /// Marks `state` as the subscription's (its other states 0).
    pub fn set_state(&self, subscription: &str, state: &str) {
        for s in STATES {
            self.state
                .with_label_values(&[subscription, s])
                .set(i64::from(s == state));
        }
    }

    /// Drops a deleted subscription's series.
    pub fn forget(&self, subscription: &str) {
        for s in STATES {
            let _ = self.state.remove_label_values(&[subscription, s]);
        }
    }
}
