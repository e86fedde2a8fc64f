//! `tributary`: the one binary users run. Each subcommand lives in its own module.

use clap::{Parser, Subcommand};

mod dlq;
mod process;
mod produce;
mod rebuild;
mod reconcile;
mod registry;
mod registry_args;
mod schemas;
mod sink;
mod store_args;
mod summary;
mod topics;

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
    /// Create the pipeline's command and event topics (idempotent).
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Send one command, given as JSON on the command line or stdin.
    Produce(produce::ProduceArgs),
    /// Serve the HTTP command gateway.
    Gateway(produce::GatewayArgs),
    /// Send a seeded e-commerce workload.
    Loadgen(produce::LoadgenArgs),
    /// Run domain processors (users, inventory, payments, the order saga, notifications, analytics).
    Process(process::Args),
    /// Run a sink connector keeping one store a view of the event topics.
    Sink(sink::Args),
    /// Records per topic, sink lag, and the size of every view in every store.
    Summary(summary::Args),
    /// Compare a store (or all) with a replay of the event topics; `--repair` fixes the drift.
    Reconcile(reconcile::Args),
    /// Build a fresh copy of a store's views (or all) from the event topics and swap it in.
    Rebuild(rebuild::Args),
    /// Dead letters: list the DLQ topics, show their letters, replay them once the cause is fixed.
    Dlq {
        #[command(subcommand)]
        command: dlq::Command,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every command and event topic that does not exist yet.
    Create(topics::Args),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn,apache_avro=error".into()),
        )
        // Every log line has its URLs' passwords masked, whatever logged them.
        .with_writer(|| tributary_runtime::redact::Writer(std::io::stderr()))
        .init();
    // The environment is read here, at the binary's edge, and nowhere in the libraries: the
    // librdkafka properties every Kafka client of this process gets (`TRIBUTARY_KAFKA_*`).
    tributary_runtime::kafka::install_properties(tributary_runtime::kafka::properties_from(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    ));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Registry(args) => registry::run(args).await,
        Command::Schemas { command } => schemas::run(command).await,
        Command::Topics {
            command: TopicsCommand::Create(args),
        } => topics::create(args).await,
        Command::Produce(args) => produce::produce(args).await,
        Command::Gateway(args) => produce::gateway(args).await,
        Command::Loadgen(args) => produce::loadgen(args).await,
        Command::Process(args) => process::run(args).await,
        Command::Sink(args) => sink::run(args).await,
        Command::Summary(args) => summary::run(args).await,
        Command::Reconcile(args) => reconcile::run(args).await,
        Command::Rebuild(args) => rebuild::run(args).await,
        Command::Dlq { command } => dlq::run(command).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {}", tributary_runtime::redact::text(&message));
            std::process::ExitCode::from(2)
        }
    }
}
