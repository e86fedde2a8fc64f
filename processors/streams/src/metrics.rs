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
    pub commits: IntCounterVec,
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
            commits: counter(
                registry,
                "tributary_streams_commits_total",
                "Commits of a batch, by outcome: ok, error (at-least-once offset commit failed), aborted (transaction).",
                &["app", "outcome"],
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names follow `<namespace>_<name>_<unit>[_total]`: counters end in `_total`, durations are
    /// `_seconds` histograms, and every series carries the `app` label.
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
        let families = registry.gather();
        assert_eq!(families.len(), 7);
        for f in &families {
            let name = f.name();
            assert!(name.starts_with("tributary_streams_"), "{name}");
            match f.get_field_type() {
                prometheus::proto::MetricType::COUNTER => {
                    assert!(name.ends_with("_total"), "{name}")
                }
                prometheus::proto::MetricType::HISTOGRAM => {
                    assert!(name.ends_with("_seconds"), "{name}")
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
