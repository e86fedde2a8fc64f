//! `tributary topics create`: the pipeline's topics, created idempotently, and checked.
//!
//! Every command and event topic is the log the stores are views of, so it is created with
//! `retention.ms=-1` (the broker never deletes its records by age) and `--replication-factor`
//! replicas. A topic that exists already is left as it was created, but checked: one with a
//! finite retention is reported (the exit code stays 0), and `--fix` sets `retention.ms=-1` on
//! it with AlterConfigs (exit code 1 when the broker would not change one: nisshi, the local
//! broker, has only IncrementalAlterConfigs, which rdkafka 0.39 does not wrap).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::{
    ensure_topic_with, retain_forever, topic_configs, TopicOptions, TopicSpec,
};
use tributary_schemas::types::ALL_TOPICS;

#[derive(ClapArgs)]
pub struct Args {
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    brokers: String,
    /// Partitions of each topic: the most consumer-group members that can share its work.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Replicas of each partition of a new topic: 1 on the local single-broker stack; 3 is
    /// right for a 3-broker cluster (the log then survives the loss of a broker).
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// Put before every topic name (a pipeline started with the same `--topic-prefix`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Set `retention.ms=-1` on existing topics whose retention is finite (AlterConfigs; exit
    /// code 1 when the broker refuses it).
    #[arg(long)]
    fix: bool,
}

/// Why `entries` (a topic's configuration as the broker describes it) break the log's
/// promise, or `None` when they keep it: a record must never be deleted by age. A missing
/// `retention.ms` is the broker's default, finite (7 days) unless the broker was told otherwise.
pub fn broken_retention(entries: &[(String, Option<String>)]) -> Option<String> {
    let get = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    };
    match get("retention.ms") {
        Some(v) if v.trim().parse::<i64>().is_ok_and(|ms| ms < 0) => None,
        Some(v) => Some(format!("retention.ms={v}")),
        None => Some("retention.ms not set (the broker's default, 7 days)".into()),
    }
}

pub async fn create(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.partitions > 0,
        "--partitions must be positive, got {}",
        args.partitions
    );
    anyhow::ensure!(
        args.replication_factor > 0,
        "--replication-factor must be positive, got {}",
        args.replication_factor
    );
    let spec = TopicSpec {
        partitions: args.partitions,
        compacted: false,
    };
    let options = TopicOptions::log(args.replication_factor);
    let mut broken = 0usize;
    for (base, _) in ALL_TOPICS {
        let topic = tributary_runtime::topics::prefixed(&args.topic_prefix, base);
        ensure_topic_with(&args.brokers, &topic, spec, options)
            .await
            .with_context(|| format!("creating topic {topic} at {}", args.brokers))?;
        let entries = topic_configs(&args.brokers, &topic)
            .await
            .with_context(|| format!("describing topic {topic} at {}", args.brokers))?;
        match broken_retention(&entries) {
            None => println!(
                "{topic:<24} {} partitions, retention forever",
                args.partitions
            ),
            Some(why) if args.fix => match retain_forever(&args.brokers, &topic, &entries).await {
                Ok(()) => println!("{topic:<24} fixed: was {why}, now retention.ms=-1"),
                Err(e) => {
                    broken += 1;
                    println!("{topic:<24} BREAKS THE LOG: {why}; not fixed: {e}");
                }
            },
            Some(why) => {
                broken += 1;
                println!(
                    "{topic:<24} BREAKS THE LOG: {why}; its records will be deleted by age (`--fix` sets retention.ms=-1)"
                );
            }
        }
    }
    if broken > 0 {
        eprintln!("{broken} topic(s) with a finite retention: once the broker deletes their first records, reconcile and rebuild refuse them");
    }
    // A report alone exits 0, so that scripts creating the topics on an older stack (compose's
    // `topics create && schemas register`, `make demo`) go on; a fix asked for and not made
    // is a failure.
    Ok(if args.fix && broken > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::broken_retention;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    #[test]
    fn only_infinite_retention_keeps_the_log() {
        assert_eq!(broken_retention(&entries(&[("retention.ms", "-1")])), None);
        assert_eq!(
            broken_retention(&entries(&[("retention.ms", "604800000")])).as_deref(),
            Some("retention.ms=604800000")
        );
        assert!(broken_retention(&entries(&[("cleanup.policy", "delete")])).is_some());
    }
}
