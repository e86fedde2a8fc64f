//! `tributary registry`: serves the schema registry until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_registry::{Access, Compatibility, RegistryConfig, Users};
use tributary_runtime::config::KAFKA_BROKERS;

#[derive(ClapArgs)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    brokers: String,
    /// Compacted topic holding the registry's state.
    #[arg(long, default_value = "_schemas")]
    topic: String,
    /// Compatibility level of subjects without one of their own, until changed with PUT /config.
    #[arg(long, default_value = "BACKWARD")]
    compatibility: Compatibility,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// HTTP basic authentication: a users file of `user: password,role` lines (Jetty's format,
    /// as Confluent's registry reads it), roles `read-only`, `write` or `admin`. Without it the
    /// registry is open to anyone who can reach it.
    #[arg(long, env = "TRIBUTARY_REGISTRY_USERS_FILE")]
    users_file: Option<String>,
    /// With --users-file: reads (GET, lookups, compatibility checks) need no credentials.
    #[arg(long, requires = "users_file")]
    anonymous_reads: bool,
    /// Refuse every change (422, error code 42205); `GET /mode` answers READONLY.
    #[arg(long)]
    read_only: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = RegistryConfig {
        listen: args.listen,
        brokers: args.brokers.clone(),
        topic: args.topic.clone(),
        max_body_bytes: args.max_body_bytes,
        default_compatibility: args.compatibility,
    };
    let mut access = Access::open().with_read_only(args.read_only);
    if let Some(path) = &args.users_file {
        let users = Users::from_file(path).map_err(anyhow::Error::msg)?;
        access = access
            .with_users(users)
            .with_anonymous_reads(args.anonymous_reads);
    } else {
        tracing::warn!("no --users-file: the registry accepts changes from anyone");
    }
    let running = tributary_registry::start_with(config, access)
        .await
        .with_context(|| {
            format!(
                "starting the schema registry on {} (topic `{}` at {})",
                args.listen, args.topic, args.brokers
            )
        })?;
    tracing::info!(addr = %running.addr, topic = %args.topic, "schema registry listening");
    tributary_runtime::shutdown::on_signal().cancelled().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
