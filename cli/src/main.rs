//! `tributary`: the one binary users run. Each subcommand lives in its own module.

use clap::{Parser, Subcommand};

mod registry;
mod schemas;

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "Kafka-Streams-style event pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the schema registry (Confluent REST API; state in a compacted Kafka topic).
    Registry(registry::Args),
    /// Register the topic schemas, or check that changed ones are compatible before deploying.
    Schemas {
        #[command(subcommand)]
        command: schemas::Command,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn,apache_avro=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Registry(args) => registry::run(args).await,
        Command::Schemas { command } => schemas::run(command).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
