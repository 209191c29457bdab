use prometheus::{IntCounterVec, Registry};
use tributary_platform::metrics::{MetricsResult, counter_vec};

/// Why an event was not accepted (the `reason` label).
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    Invalid,
    Overloaded,
    Unavailable,
    BrokerRejected,
}

impl Rejection {
    const ALL: [Self; 4] = [
        Self::Invalid,
        Self::Overloaded,
        Self::Unavailable,
        Self::BrokerRejected,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::BrokerRejected => "broker_rejected",
        }
    }
}

#[derive(Clone)]
pub struct IngestMetrics {
    events: IntCounterVec,
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> MetricsResult<Self> {
        let events = counter_vec(
            registry,
            "tributary_ingest_events_total",
            "Events received by ingest: accepted (acknowledged by the broker) or rejected, with why",
            &["result", "reason"],
        )?;
        let _ = events.with_label_values(&["accepted", ""]);
        for r in Rejection::ALL {
            let _ = events.with_label_values(&["rejected", r.label()]);
        }
        Ok(Self { events })
    }

    pub fn accepted(&self, n: u64) {
        self.events.with_label_values(&["accepted", ""]).inc_by(n);
    }

    pub fn rejected(&self, reason: Rejection, n: u64) {
        self.events
            .with_label_values(&["rejected", reason.label()])
            .inc_by(n);
    }
}
