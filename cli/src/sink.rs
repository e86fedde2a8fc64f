//! `tributary sink --store X`: one sink connector, a consumer-group member on the event topics.
//! Run several with the same store to share the partitions.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_schemas::Codec;
use tributary_sinks::growth;
use tributary_sinks::metrics::Metrics;
use tributary_sinks::runner::{Sink, SinkConfig};
use tributary_sinks::stores;

use crate::store_args::{store_choice, StoreArgs};

#[derive(ClapArgs)]
pub struct Args {
    /// The store this sink keeps.
    #[arg(long, value_parser = store_choice(false))]
    store: String,
    /// Seconds a schema id the registry does not know is retried (with back-off) before the
    /// records that use it are dead-lettered: a registry failing over is not bad data.
    #[arg(long, env = "TRIBUTARY_UNKNOWN_SCHEMA_GRACE", default_value_t = 60)]
    unknown_schema_grace: u64,
    /// Address of the store (its `--<store>-url` flag, which defaults to its TRIBUTARY_*
    /// variable).
    #[arg(long)]
    url: Option<String>,
    /// Consumer group; defaults to `<topic prefix>tributary-sink-<store>`.
    #[arg(long)]
    group: Option<String>,
    /// Records per batch at most.
    #[arg(long, default_value_t = 500)]
    batch_max_records: usize,
    /// Milliseconds a batch waits for more records after its first.
    #[arg(long, default_value_t = 100)]
    batch_linger_ms: u64,
    /// Where to serve /metrics and /health.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// Seconds between samples of the views' growth (entities and bytes per view).
    #[arg(long, default_value_t = 30)]
    growth_interval_secs: u64,
    /// Pause (hold the batch, retry it) instead of dead-lettering when more than this fraction
    /// of the last `--dlq-pause-window` records would be dead letters; 1 disables the pause.
    #[arg(long, default_value_t = 0.5)]
    dlq_pause_ratio: f64,
    /// ...and at least this many: a few poison records never pause the sink.
    #[arg(long, default_value_t = 50)]
    dlq_pause_min: u64,
    /// Records the dead-letter rate is measured over.
    #[arg(long, default_value_t = 1000)]
    dlq_pause_window: u64,
    #[command(flatten)]
    stores: StoreArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = stores::find(stores::all(), &args.store)
        .with_context(|| format!("no store is called {}", args.store))?;
    let name = store.name();
    let mut settings = args.stores.settings().clone();
    if let Some(url) = &args.url {
        for option in store.options().iter().filter(|o| o.address) {
            settings.set(option.name, url.clone());
        }
    }
    let parts = store.config(&settings)?.build().await?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).context("registering the sink's metrics")?;
    let growth_metrics =
        growth::GrowthMetrics::new(&registry).context("registering the growth metrics")?;
    let every = Duration::from_secs(args.growth_interval_secs.max(1));
    tokio::spawn(growth::run(parts.sampler.clone(), growth_metrics, every));
    let prefix = &args.stores.topic_prefix;
    let mut config = SinkConfig::new(name);
    config.brokers = args.stores.brokers.clone();
    config.group_id = args
        .group
        .clone()
        .unwrap_or_else(|| stores::sink_group(prefix, name));
    config.sources = stores::sources(parts.projection.as_ref(), prefix);
    config.batch_max_records = args.batch_max_records.max(1);
    config.batch_linger = Duration::from_millis(args.batch_linger_ms);
    config.dlq_pause_ratio = args.dlq_pause_ratio;
    config.dlq_pause_min = args.dlq_pause_min;
    config.dlq_pause_window = args.dlq_pause_window.max(1);
    let codec = std::sync::Arc::new(
        Codec::new(&args.stores.registry.url())
            .with_unknown_schema_grace(Duration::from_secs(args.unknown_schema_grace)),
    );
    let sink = Sink::new(config, codec, parts.projection, parts.writer, &metrics);

    let stop = tributary_runtime::shutdown::on_signal();
    let (addr, _server) =
        tributary_runtime::metrics::serve(args.metrics_listen, registry, stop.clone())
            .await
            .with_context(|| format!("serving metrics on {}", args.metrics_listen))?;
    tracing::info!(store = name, metrics = %addr, "sink running");
    sink.run(stop)
        .await
        .with_context(|| format!("running the {name} sink"))?;
    Ok(ExitCode::SUCCESS)
}
