//! The engine's Prometheus metrics, registered in a registry the caller owns so that tests (and
//! a process running several apps) can read them. Updated once per batch, not per record.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

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
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).map_err(prom)?;
    registry.register(Box::new(h.clone())).map_err(prom)?;
    Ok(h)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).map_err(prom)?;
    registry.register(Box::new(g.clone())).map_err(prom)?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels).map_err(prom)?;
    registry.register(Box::new(c.clone())).map_err(prom)?;
    Ok(c)
}

fn prom(e: prometheus::Error) -> Error {
    Error::Config(format!("metrics: {e}"))
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics> {
        let process_duration = HistogramVec::new(
            HistogramOpts::new(
                "tributary_streams_process_duration_seconds",
                "Time to process one batch of input records, commit excluded.",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 4.0, 9).map_err(prom)?),
            &["app", "processor"],
        )
        .map_err(prom)?;
        registry
            .register(Box::new(process_duration.clone()))
            .map_err(prom)?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "tributary_streams_consumer_lag",
                "Records between the committed position and the partition's end, per input partition.",
            ),
            &["app", "topic", "partition"],
        )
        .map_err(prom)?;
        registry
            .register(Box::new(consumer_lag.clone()))
            .map_err(prom)?;
        Ok(Metrics {
            records_in: counter(
                registry,
                "tributary_streams_records_in_total",
                "Input records handed to the processor.",
                &["app", "processor"],
            )?,
            records_out: counter(
                registry,
                "tributary_streams_records_out_total",
                "Records the processor sent to output topics, acknowledged by the broker.",
                &["app", "processor"],
            )?,
            dlq_records: counter(
                registry,
                "tributary_streams_dlq_records_total",
                "Input records sent to a dead-letter topic.",
                &["app", "processor"],
            )?,
            process_duration,
            consumer_lag,
            restore_records: counter(
                registry,
                "tributary_streams_restore_records_total",
                "Changelog records read to restore state stores.",
                &["app", "store"],
            )?,
            restore_remaining: gauge(
                registry,
                "tributary_streams_restore_remaining_records",
                "Changelog records still to read to restore a store (0 once restored).",
                &["app", "store"],
            )?,
            commits: counter(
                registry,
                "tributary_streams_commits_total",
                "Commits of a batch, by outcome: ok, aborted (a write or the commit point failed; the batch is read again).",
                &["app", "outcome"],
            )?,
            commit_duration: histogram(
                registry,
                "tributary_streams_commit_duration_seconds",
                "Time of one commit, by phase: produce, marker, store, offsets.",
                &["app", "phase"],
                prometheus::exponential_buckets(0.0002, 3.0, 10).map_err(prom)?,
            )?,
            records_per_commit: histogram(
                registry,
                "tributary_streams_commit_size_records",
                "Input records per commit.",
                &["app"],
                prometheus::exponential_buckets(1.0, 4.0, 8).map_err(prom)?,
            )?,
            record_duration: histogram(
                registry,
                "tributary_streams_record_duration_seconds",
                "Time the processor took for one record.",
                &["app"],
                prometheus::exponential_buckets(0.00001, 4.0, 10).map_err(prom)?,
            )?,
            retries: counter(
                registry,
                "tributary_streams_retries_total",
                "Retries of records that failed with a retriable error.",
                &["app"],
            )?,
            retrying_seconds: gauge(
                registry,
                "tributary_streams_task_retrying_seconds",
                "How long the task's current record has been retrying; 0 when none is.",
                &["app", "task"],
            )?,
            skipped: counter(
                registry,
                "tributary_streams_skipped_records_total",
                "Records read again below the committed position and skipped.",
                &["app"],
            )?,
            stale_stores: counter(
                registry,
                "tributary_streams_stale_stores_total",
                "Local stores that did not match their changelog, wiped and restored from scratch.",
                &["app", "store"],
            )?,
            backpressure_pauses: counter(
                registry,
                "tributary_streams_backpressure_pauses_total",
                "Times a task's input was paused because its processor admitted no more of it for now.",
                &["app", "topic"],
            )?,
            inputs_held: gauge(
                registry,
                "tributary_streams_inputs_held",
                "Task inputs paused by backpressure now.",
                &["app"],
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names follow `<namespace>_<name>_<unit>[_total]`: counters end in `_total`, durations are
    /// `_seconds` histograms (sizes `_records`), and every series carries the `app` label.
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
        for f in &families {
            let name = f.name();
            assert!(name.starts_with("tributary_streams_"), "{name}");
            match f.get_field_type() {
                prometheus::proto::MetricType::COUNTER => {
                    assert!(name.ends_with("_total"), "{name}")
                }
                prometheus::proto::MetricType::HISTOGRAM => {
                    assert!(
                        name.ends_with("_seconds") || name.ends_with("_records"),
                        "{name}"
                    )
                }
                _ => assert!(!name.ends_with("_total"), "{name}"),
            }
            for metric in f.get_metric() {
                assert!(
                    metric.get_label().iter().any(|l| l.name() == "app"),
                    "{name}"
                );
            }
        }
        // A second app in the same registry is refused rather than silently merged.
        assert!(Metrics::register(&registry).is_err());
    }
}
