//! `tributary topics create`: the pipeline's topics, created idempotently.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::{ensure_topic, TopicSpec};
use tributary_schemas::types::ALL_TOPICS;

#[derive(ClapArgs)]
pub struct Args {
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    brokers: String,
    /// Partitions of each topic: the most consumer-group members that can share its work.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Put before every topic name (a pipeline started with the same `--topic-prefix`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
}

pub async fn create(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.partitions > 0,
        "--partitions must be positive, got {}",
        args.partitions
    );
    let spec = TopicSpec {
        partitions: args.partitions,
        compacted: false,
    };
    for (base, _) in ALL_TOPICS {
        let topic = format!("{}{base}", args.topic_prefix);
        ensure_topic(&args.brokers, &topic, spec)
            .await
            .with_context(|| format!("creating topic {topic} at {}", args.brokers))?;
        println!("{topic:<24} {} partitions", args.partitions);
    }
    Ok(ExitCode::SUCCESS)
}
