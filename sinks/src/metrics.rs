//! Prometheus metrics of every sink, registered in an explicit [`Registry`] so that a test (or a
//! binary serving `/metrics`) reads exactly the metrics it created.
//!
//! Names and labels follow the one scheme of every process (`tributary_runtime::metrics`): the
//! sink's own families are `tributary_sink_<name>_<unit>[_total]`, what every component counts
//! (records received, dead letters, retries) has its shared `tributary_component_*` name, and
//! every series carries `component_kind="sink"` and `component_id` (the store's name); the only
//! other labels are bounded (view, state, kind). Values are updated once per batch, never per
//! record.

use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Registry};

use tributary_runtime::metrics::Kind::Sink;
use tributary_runtime::metrics::{labels, DLQ_RECORDS, RECEIVED_RECORDS, RETRIES};

use crate::change::{Change, WriteOutcome};

/// The metric families of all sinks of one registry. Create once per registry, then take a
/// [`SinkMetrics`] per sink with [`Metrics::sink`].
#[derive(Clone)]
pub struct Metrics {
    received: IntCounterVec,
    written: IntCounterVec,
    stale: IntCounterVec,
    dlq: IntCounterVec,
    retries: IntCounterVec,
    batch_size: HistogramVec,
    write_duration: HistogramVec,
    freshness: prometheus::GaugeVec,
    visible: HistogramVec,
    pool: IntGaugeVec,
    slow: IntCounterVec,
    unavailable: IntGaugeVec,
    dlq_paused: IntGaugeVec,
    rebalances: IntCounterVec,
}

/// A batch write slower than this counts as a slow query (ADR-007's slow-query count).
pub const SLOW_WRITE: Duration = Duration::from_secs(1);

impl Metrics {
    /// Registers the sink metric families in `registry`.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let counter =
            |name: &str, help: &str| IntCounterVec::new(Sink.opts(name, help), &labels(&[]));
        let received = counter(
            RECEIVED_RECORDS,
            "Records of the batches the sink applied to the store.",
        )?;
        // A record projects to zero or more changes; these two count changes, not records.
        let written = counter(
            "tributary_sink_changes_written_total",
            "Changes applied to the store.",
        )?;
        let stale = counter(
            "tributary_sink_changes_stale_total",
            "Changes skipped because the store held an equal or newer version.",
        )?;
        let dlq = counter(DLQ_RECORDS, "Records sent to the dead-letter topic.")?;
        let retries = counter(
            RETRIES,
            "Batch writes retried after a transient store error.",
        )?;
        let batch_size = HistogramVec::new(
            Sink.histogram_opts(
                "tributary_sink_batch_size_records",
                "Records per batch.",
                vec![
                    1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                ],
            ),
            &labels(&[]),
        )?;
        let write_duration = HistogramVec::new(
            Sink.histogram_opts(
                "tributary_sink_write_duration_seconds",
                "Time to apply one batch to the store, retries excluded.",
                prometheus::exponential_buckets(0.0005, 2.0, 16)?,
            ),
            &labels(&[]),
        )?;
        let freshness = prometheus::GaugeVec::new(
            Sink.opts(
                "tributary_sink_freshness_seconds",
                "Now minus the event time of the last change applied to the view.",
            ),
            &labels(&["view"]),
        )?;
        // The gauge above says how old the newest change is; this says how long every change
        // took from its event (the record's timestamp) to the store, so a p99 can be read.
        let visible = HistogramVec::new(
            Sink.histogram_opts(
                "tributary_sink_event_to_visible_seconds",
                "Time from an event (its record's timestamp) to its change being durable in the store.",
                vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
            )
,
            &labels(&[]),
        )?;
        let pool = IntGaugeVec::new(
            Sink.opts(
                "tributary_sink_pool_connections",
                "Store connections of the sink's pool, by state (idle, in_use).",
            ),
            &labels(&["state"]),
        )?;
        registry.register(Box::new(received.clone()))?;
        registry.register(Box::new(written.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(dlq.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(write_duration.clone()))?;
        registry.register(Box::new(freshness.clone()))?;
        registry.register(Box::new(visible.clone()))?;
        let slow = counter(
            "tributary_sink_slow_writes_total",
            "Batch writes that took longer than one second (slow queries).",
        )?;
        registry.register(Box::new(pool.clone()))?;
        registry.register(Box::new(slow.clone()))?;
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Sink.opts(name, help), &labels(&[]));
        let unavailable = gauge(
            "tributary_sink_store_unavailable",
            "1 while the sink retries a batch the store cannot take (partitions paused), else 0.",
        )?;
        let dlq_paused = gauge(
            "tributary_sink_dlq_paused",
            "1 while the sink holds a batch back because its dead-letter rate is over the limit.",
        )?;
        let rebalances = IntCounterVec::new(
            Sink.opts(
                "tributary_sink_rebalances_total",
                "Consumer-group rebalances the sink's member went through, by kind (assign, revoke).",
            ),
            &labels(&["kind"]),
        )?;
        registry.register(Box::new(unavailable.clone()))?;
        registry.register(Box::new(dlq_paused.clone()))?;
        registry.register(Box::new(rebalances.clone()))?;
        Ok(Metrics {
            unavailable,
            dlq_paused,
            rebalances,
            slow,
            received,
            written,
            stale,
            dlq,
            retries,
            batch_size,
            write_duration,
            freshness,
            visible,
            pool,
        })
    }

    /// The metrics of the sink named `sink`.
    pub fn sink(&self, sink: &str) -> SinkMetrics {
        SinkMetrics {
            name: sink.to_string(),
            received: self.received.with_label_values(&[sink]),
            written: self.written.with_label_values(&[sink]),
            stale: self.stale.with_label_values(&[sink]),
            dlq: self.dlq.with_label_values(&[sink]),
            retries: self.retries.with_label_values(&[sink]),
            batch_size: self.batch_size.with_label_values(&[sink]),
            write_duration: self.write_duration.with_label_values(&[sink]),
            slow: self.slow.with_label_values(&[sink]),
            freshness: self.freshness.clone(),
            visible: self.visible.with_label_values(&[sink]),
            pool: self.pool.clone(),
            unavailable: self.unavailable.with_label_values(&[sink]),
            dlq_paused: self.dlq_paused.with_label_values(&[sink]),
            assigned: self.rebalances.with_label_values(&[sink, "assign"]),
            revoked: self.rebalances.with_label_values(&[sink, "revoke"]),
        }
    }
}

/// One sink's metrics.
#[derive(Clone)]
pub struct SinkMetrics {
    name: String,
    received: IntCounter,
    written: IntCounter,
    stale: IntCounter,
    dlq: IntCounter,
    retries: IntCounter,
    batch_size: Histogram,
    write_duration: Histogram,
    slow: IntCounter,
    freshness: prometheus::GaugeVec,
    visible: Histogram,
    pool: IntGaugeVec,
    unavailable: prometheus::IntGauge,
    dlq_paused: prometheus::IntGauge,
    assigned: IntCounter,
    revoked: IntCounter,
}

impl SinkMetrics {
    /// Marks the start (`true`) or end of a store outage.
    pub fn store_unavailable(&self, down: bool) {
        self.unavailable.set(i64::from(down));
    }

    /// Marks the start (`true`) or end of a pause for the dead-letter rate.
    pub fn dlq_paused(&self, paused: bool) {
        self.dlq_paused.set(i64::from(paused));
    }

    /// Counts a rebalance: an assignment (`true`) or a revocation.
    pub fn rebalanced(&self, assigned: bool) {
        if assigned {
            self.assigned.inc();
        } else {
            self.revoked.inc();
        }
    }

    /// Rebalances so far as `(assignments, revocations)`.
    pub fn rebalances(&self) -> (u64, u64) {
        (self.assigned.get(), self.revoked.get())
    }

    pub fn is_store_unavailable(&self) -> bool {
        self.unavailable.get() != 0
    }

    pub fn is_dlq_paused(&self) -> bool {
        self.dlq_paused.get() != 0
    }

    /// Records one applied batch: its outcome, size, write time and per-view freshness.
    pub fn batch_written(
        &self,
        records: usize,
        changes: &[Change],
        outcome: WriteOutcome,
        took: Duration,
    ) {
        self.received.inc_by(records as u64);
        self.written.inc_by(outcome.applied);
        self.stale.inc_by(outcome.stale);
        self.batch_size.observe(records as f64);
        self.write_duration.observe(took.as_secs_f64());
        if took > SLOW_WRITE {
            self.slow.inc();
        }
        let now_ms = tributary_runtime::clock::now_ms();
        let mut latest: Vec<(&'static str, i64)> = Vec::new();
        for c in changes {
            self.visible
                .observe((now_ms.saturating_sub(c.event_time_ms)).max(0) as f64 / 1000.0);
            match latest.iter_mut().find(|(v, _)| *v == c.view) {
                Some((_, t)) => *t = (*t).max(c.event_time_ms),
                None => latest.push((c.view, c.event_time_ms)),
            }
        }
        for (view, t) in latest {
            let age = (now_ms.saturating_sub(t)).max(0) as f64 / 1000.0;
            self.freshness
                .with_label_values(&[self.name.as_str(), view])
                .set(age);
        }
    }

    pub fn dead_lettered(&self, n: u64) {
        self.dlq.inc_by(n);
    }

    pub fn retried(&self) {
        self.retries.inc();
    }

    /// Records the store's connection pool usage.
    pub fn pool_usage(&self, idle: i64, in_use: i64) {
        self.pool
            .with_label_values(&[self.name.as_str(), "idle"])
            .set(idle);
        self.pool
            .with_label_values(&[self.name.as_str(), "in_use"])
            .set(in_use);
    }

    pub fn written(&self) -> u64 {
        self.written.get()
    }

    pub fn stale(&self) -> u64 {
        self.stale.get()
    }

    pub fn dlq(&self) -> u64 {
        self.dlq.get()
    }

    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    pub fn slow_writes(&self) -> u64 {
        self.slow.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family a sink process serves (its runner's and the growth sampler's) follows the
    /// one naming scheme of `tributary_runtime::metrics`.
    #[test]
    fn names_follow_the_scheme() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).expect("metrics").sink("postgres");
        let change = Change {
            view: "users",
            key: "u-1".to_string(),
            version: 1,
            event_time_ms: tributary_runtime::clock::now_ms(),
            op: crate::change::Op::Delete,
        };
        m.batch_written(
            1,
            &[change],
            WriteOutcome::default(),
            Duration::from_millis(1),
        );
        m.pool_usage(1, 1);
        m.dead_lettered(1);
        m.retried();
        let growth = crate::growth::GrowthMetrics::new(&registry).expect("growth metrics");
        growth.record(&[crate::growth::ViewSize {
            store: "postgres",
            view: "users".to_string(),
            entities: Some(1),
            bytes: Some(10),
        }]);
        let families = registry.gather();
        assert!(families.len() >= 15, "{}", families.len());
        assert_eq!(
            tributary_runtime::metrics::naming_problems(&families),
            Vec::<String>::new()
        );
        for shared in [RECEIVED_RECORDS, DLQ_RECORDS, RETRIES] {
            assert!(families.iter().any(|f| f.name() == shared), "{shared}");
        }
    }

    #[test]
    fn only_writes_slower_than_a_second_count_as_slow() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).expect("metrics").sink("s");
        let outcome = WriteOutcome::default();
        m.batch_written(1, &[], outcome, Duration::from_millis(20));
        assert_eq!(m.slow_writes(), 0);
        m.batch_written(1, &[], outcome, SLOW_WRITE + Duration::from_millis(1));
        assert_eq!(m.slow_writes(), 1);
    }

    #[test]
    fn every_change_of_a_batch_is_timed_from_its_event_to_the_store() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).expect("metrics").sink("s");
        let change = |age_ms: i64| Change {
            view: "orders",
            key: "o-1".to_string(),
            version: 1,
            event_time_ms: tributary_runtime::clock::now_ms() - age_ms,
            op: crate::change::Op::Delete,
        };
        let changes = [change(5), change(300), change(3_000)];
        m.batch_written(
            3,
            &changes,
            WriteOutcome::default(),
            Duration::from_millis(1),
        );
        let family = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "tributary_sink_event_to_visible_seconds")
            .expect("the histogram is registered");
        let h = family.get_metric()[0].get_histogram();
        assert_eq!(h.sample_count(), 3);
        let upto = |le: f64| {
            h.get_bucket()
                .iter()
                .find(|b| b.upper_bound() == le)
                .map(|b| b.cumulative_count())
                .expect("bucket")
        };
        assert_eq!((upto(0.1), upto(1.0), upto(5.0)), (1, 2, 3));
    }
}
