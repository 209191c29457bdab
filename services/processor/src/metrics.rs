use prometheus::{Histogram, HistogramOpts, IntCounterVec, Registry};
use tributary_platform::metrics::{LATENCY_BUCKETS, MetricsResult, counter_vec};

#[derive(Clone)]
pub struct ProcessorMetrics {
    events: IntCounterVec,
    pub rule_alerts: IntCounterVec,
    pub batch_size: Histogram,
    pub batch_duration: Histogram,
    pub ingest_to_persist: Histogram,
}

impl ProcessorMetrics {
    pub fn register(registry: &Registry) -> MetricsResult<Self> {
        let events = counter_vec(
            registry,
            "tributary_processor_events_total",
            "Records handled: persisted (a new row), duplicate (already stored), dead_lettered, or erased (an erased user's, below the erasure's end offset: skipped)",
            &["result"],
        )?;
        for r in ["persisted", "duplicate", "dead_lettered", "erased"] {
            let _ = events.with_label_values(&[r]);
        }
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| -> MetricsResult<Histogram> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let rule_alerts = counter_vec(
            registry,
            "tributary_rule_alerts_total",
            "Alerts recorded by threshold rules, by rule name",
            &["rule"],
        )?;
        Ok(Self {
            events,
            rule_alerts,
            batch_size: histogram(
                "tributary_processor_batch_size",
                "Records per batch",
                vec![
                    1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                ],
            )?,
            batch_duration: histogram(
                "tributary_processor_batch_duration_seconds",
                "Time to store a batch (DLQ produce, transaction, offset store), retries included",
                LATENCY_BUCKETS.to_vec(),
            )?,
            ingest_to_persist: histogram(
                "tributary_pipeline_ingest_to_persist_seconds",
                "From ingest receiving an event to its row being committed",
                LATENCY_BUCKETS.to_vec(),
            )?,
        })
    }

    pub fn persisted(&self, n: usize) {
        self.events
            .with_label_values(&["persisted"])
            .inc_by(n as u64);
    }

    pub fn duplicates(&self, n: usize) {
        self.events
            .with_label_values(&["duplicate"])
            .inc_by(n as u64);
    }

    pub fn erased(&self, n: usize) {
        self.events.with_label_values(&["erased"]).inc_by(n as u64);
    }

    pub fn dead_lettered(&self, n: usize) {
        self.events
            .with_label_values(&["dead_lettered"])
            .inc_by(n as u64);
    }
}
