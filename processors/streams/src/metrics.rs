//! The engine's Prometheus metrics, registered in a registry the caller owns so that tests (and
//! a process running several apps) can read them. Updated once per batch, not per record.

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};
use tributary_runtime::metrics::Kind::Processor;
use tributary_runtime::metrics::{labels, DLQ_RECORDS, RECEIVED_RECORDS, RETRIES, SENT_RECORDS};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Metrics {
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub dlq_records: IntCounterVec,
    pub process_duration: HistogramVec,
    pub consumer_lag: IntGaugeVec,
    pub restore_records: IntCounterVec,
    /// Changelog records still to read, per store being restored (0 once restored).
    pub restore_remaining: IntGaugeVec,
    pub commits: IntCounterVec,
    /// Commit time by phase: `produce` (outputs and changelog acknowledged), `marker` (the
    /// commit point), `store` (local copy), `offsets` (group offsets, asynchronous).
    pub commit_duration: HistogramVec,
    pub records_per_commit: HistogramVec,
    /// Per-record processing time.
    pub record_duration: HistogramVec,
    /// Retries of records that failed with a retriable error.
    pub retries: IntCounterVec,
    /// How long the task's current record has been retrying (0 when none is).
    pub retrying_seconds: IntGaugeVec,
    /// Records seen again below the committed position (after a crash between the commit
    /// point and the group's offset commit) and skipped.
    pub skipped: IntCounterVec,
    /// Local stores found not to match their changelog (topic recreated or truncated), wiped
    /// and restored from scratch.
    pub stale_stores: IntCounterVec,
    /// Times a task's input was paused because its processor did not admit more of it.
    pub backpressure_pauses: IntCounterVec,
    /// Task inputs paused by backpressure now.
    pub inputs_held: IntGaugeVec,
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> Result<HistogramVec> {
    let h =
        HistogramVec::new(Processor.histogram_opts(name, help, buckets), labels).map_err(prom)?;
    registry.register(Box::new(h.clone())).map_err(prom)?;
    Ok(h)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Processor.opts(name, help), labels).map_err(prom)?;
    registry.register(Box::new(g.clone())).map_err(prom)?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Processor.opts(name, help), labels).map_err(prom)?;
    registry.register(Box::new(c.clone())).map_err(prom)?;
    Ok(c)
}

fn prom(e: prometheus::Error) -> Error {
    Error::Config(format!("metrics: {e}"))
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics> {
        let process_duration = histogram(
            registry,
            "tributary_processor_process_duration_seconds",
            "Time to process one batch of input records, commit excluded.",
            &labels(&["processor"]),
            prometheus::exponential_buckets(0.0005, 4.0, 9).map_err(prom)?,
        )?;
        let consumer_lag = gauge(
            registry,
            "tributary_processor_consumer_lag",
            "Records between the committed position and the partition's end, per input partition.",
            &labels(&["topic", "partition"]),
        )?;
        Ok(Metrics {
            records_in: counter(
                registry,
                RECEIVED_RECORDS,
                "Input records handed to the processor.",
                &labels(&["processor"]),
            )?,
            records_out: counter(
                registry,
                SENT_RECORDS,
                "Records the processor sent to output topics, acknowledged by the broker.",
                &labels(&["processor"]),
            )?,
            dlq_records: counter(
                registry,
                DLQ_RECORDS,
                "Input records sent to a dead-letter topic.",
                &labels(&["processor"]),
            )?,
            process_duration,
            consumer_lag,
            restore_records: counter(
                registry,
                "tributary_processor_restore_records_total",
                "Changelog records read to restore state stores.",
                &labels(&["store"]),
            )?,
            restore_remaining: gauge(
                registry,
                "tributary_processor_restore_remaining_records",
                "Changelog records still to read to restore a store (0 once restored).",
                &labels(&["store"]),
            )?,
            commits: counter(
                registry,
                "tributary_processor_commits_total",
                "Commits of a batch, by outcome: ok, aborted (a write or the commit point failed; the batch is read again).",
                &labels(&["outcome"]),
            )?,
            commit_duration: histogram(
                registry,
                "tributary_processor_commit_duration_seconds",
                "Time of one commit, by phase: produce, marker, store, offsets.",
                &labels(&["phase"]),
                prometheus::exponential_buckets(0.0002, 3.0, 10).map_err(prom)?,
            )?,
            records_per_commit: histogram(
                registry,
                "tributary_processor_commit_size_records",
                "Input records per commit.",
                &labels(&[]),
                prometheus::exponential_buckets(1.0, 4.0, 8).map_err(prom)?,
            )?,
            record_duration: histogram(
                registry,
                "tributary_processor_record_duration_seconds",
                "Time the processor took for one record.",
                &labels(&[]),
                prometheus::exponential_buckets(0.00001, 4.0, 10).map_err(prom)?,
            )?,
            retries: counter(
                registry,
                RETRIES,
                "Retries of records that failed with a retriable error.",
                &labels(&[]),
            )?,
            retrying_seconds: gauge(
                registry,
                "tributary_processor_task_retrying_seconds",
                "How long the task's current record has been retrying; 0 when none is.",
                &labels(&["task"]),
            )?,
            skipped: counter(
                registry,
                "tributary_processor_skipped_records_total",
                "Records read again below the committed position and skipped.",
                &labels(&[]),
            )?,
            stale_stores: counter(
                registry,
                "tributary_processor_stale_stores_total",
                "Local stores that did not match their changelog, wiped and restored from scratch.",
                &labels(&["store"]),
            )?,
            backpressure_pauses: counter(
                registry,
                "tributary_processor_backpressure_pauses_total",
                "Times a task's input was paused because its processor admitted no more of it for now.",
                &labels(&["topic"]),
            )?,
            inputs_held: gauge(
                registry,
                "tributary_processor_inputs_held",
                "Task inputs paused by backpressure now.",
                &labels(&[]),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family follows the one naming scheme (`tributary_runtime::metrics`): the
    /// processor's own under `tributary_processor_`, the shared ones under
    /// `tributary_component_`, each series with `component_kind` and `component_id`.
    #[test]
    fn names_follow_the_conventions() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).expect("register");
        m.records_in.with_label_values(&["a", "p"]).inc();
        m.records_out.with_label_values(&["a", "p"]).inc();
        m.dlq_records.with_label_values(&["a", "p"]).inc();
        m.process_duration
            .with_label_values(&["a", "p"])
            .observe(0.1);
        m.consumer_lag.with_label_values(&["a", "t", "0"]).set(3);
        m.restore_records.with_label_values(&["a", "s"]).inc();
        m.commits.with_label_values(&["a", "ok"]).inc();
        m.restore_remaining.with_label_values(&["a", "s"]).set(0);
        m.commit_duration
            .with_label_values(&["a", "produce"])
            .observe(0.1);
        m.records_per_commit.with_label_values(&["a"]).observe(3.0);
        m.record_duration.with_label_values(&["a"]).observe(0.1);
        m.retries.with_label_values(&["a"]).inc();
        m.retrying_seconds.with_label_values(&["a", "0"]).set(0);
        m.skipped.with_label_values(&["a"]).inc();
        m.stale_stores.with_label_values(&["a", "s"]).inc();
        m.backpressure_pauses.with_label_values(&["a", "t"]).inc();
        m.inputs_held.with_label_values(&["a"]).set(1);
        let families = registry.gather();
        assert_eq!(families.len(), 17);
        assert_eq!(
            tributary_runtime::metrics::naming_problems(&families),
            Vec::<String>::new()
        );
        // What processors and sinks both count has the one shared name.
        for shared in [RECEIVED_RECORDS, SENT_RECORDS, DLQ_RECORDS, RETRIES] {
            assert!(families.iter().any(|f| f.name() == shared), "{shared}");
        }
        // A second app in the same registry is refused rather than silently merged.
        assert!(Metrics::register(&registry).is_err());
    }
}
