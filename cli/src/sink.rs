//! `tributary sink --store X`: one sink connector, a consumer-group member on the event topics.
//! Run several with the same store to share the partitions.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tributary_runtime::redact;

use anyhow::Context;
use clap::{Args as ClapArgs, ValueEnum};
use tributary_runtime::config::{
    DATABASE_URL, ELASTICSEARCH_URL, KAFKA_BROKERS, MONGODB_URL, REDIS_URL, SCHEMA_REGISTRY_URL,
};
use tributary_schemas::Codec;
use tributary_sinks::change::ViewWriter;
use tributary_sinks::growth;
use tributary_sinks::metrics::Metrics;
use tributary_sinks::runner::{Projection, Sink, SinkConfig, SourceTopic};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Store {
    Postgres,
    Mongodb,
    Redis,
    Elasticsearch,
}

#[derive(ClapArgs)]
pub struct Args {
    /// The store this sink keeps.
    #[arg(long, value_enum)]
    store: Store,
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    brokers: String,
    #[arg(long, env = "TRIBUTARY_SCHEMA_REGISTRY_URL", default_value = SCHEMA_REGISTRY_URL.default)]
    registry: String,
    /// Seconds a schema id the registry does not know is retried (with back-off) before the
    /// records that use it are dead-lettered: a registry failing over is not bad data.
    #[arg(long, env = "TRIBUTARY_UNKNOWN_SCHEMA_GRACE", default_value_t = 60)]
    unknown_schema_grace: u64,
    /// Address of the store; defaults to its TRIBUTARY_* variable.
    #[arg(long)]
    url: Option<String>,
    /// Consumer group; defaults to `tributary-sink-<store>`.
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
    /// MongoDB database of the views.
    #[arg(long, default_value = "tributary")]
    mongodb_database: String,
    /// Prefix of the Elasticsearch indices and aliases.
    #[arg(long, default_value = "tributary-")]
    index_prefix: String,
    /// Put before every topic name and the default group (a pipeline started with the same
    /// `--topic-prefix`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
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
}

fn name(store: Store) -> &'static str {
    match store {
        Store::Postgres => "postgres",
        Store::Mongodb => "mongodb",
        Store::Redis => "redis",
        Store::Elasticsearch => "elasticsearch",
    }
}

/// What the sink samples for the views' growth: the store's handle its writer already holds.
enum Sampler {
    Postgres(sqlx::PgPool),
    Mongodb(mongodb::Database),
    Redis(::redis::aio::ConnectionManager, String),
    Elasticsearch(elasticsearch::Elasticsearch, Vec<String>),
}

impl Sampler {
    async fn sample(&mut self) -> Result<Vec<growth::ViewSize>, growth::GrowthError> {
        match self {
            Sampler::Postgres(pool) => growth::postgres(pool, false).await,
            Sampler::Mongodb(db) => growth::mongodb(db).await,
            Sampler::Redis(conn, prefix) => growth::redis(conn, prefix).await,
            Sampler::Elasticsearch(client, aliases) => growth::elasticsearch(client, aliases).await,
        }
    }
}

type Connected = (Arc<dyn Projection>, Arc<dyn ViewWriter>, Sampler);

async fn connect(args: &Args) -> anyhow::Result<Connected> {
    use tributary_sinks::{elasticsearch as es, mongodb as mongo, postgres as pg, redis as rd};
    let url = |default: &tributary_runtime::config::Setting| {
        args.url.clone().unwrap_or_else(|| default.get())
    };
    Ok(match args.store {
        Store::Postgres => {
            let config = pg::PostgresConfig {
                url: url(&DATABASE_URL),
                ..pg::PostgresConfig::default()
            };
            let writer = pg::PostgresWriter::connect(&config)
                .await
                .with_context(|| {
                    format!(
                        "connecting to and migrating PostgreSQL at {}",
                        redact::url(&config.url)
                    )
                })?;
            let sampler = Sampler::Postgres(writer.pool().clone());
            (Arc::new(pg::PostgresProjection), Arc::new(writer), sampler)
        }
        Store::Mongodb => {
            let u = url(&MONGODB_URL);
            let writer = mongo::MongoWriter::connect(&u, &args.mongodb_database)
                .await
                .with_context(|| format!("connecting to MongoDB at {}", redact::url(&u)))?;
            mongo::migrate(writer.database())
                .await
                .with_context(|| format!("migrating MongoDB database {}", args.mongodb_database))?;
            let sampler = Sampler::Mongodb(writer.database().clone());
            (
                Arc::new(mongo::projection::MongoProjection),
                Arc::new(writer),
                sampler,
            )
        }
        Store::Redis => {
            let config = rd::RedisConfig {
                url: url(&REDIS_URL),
                ..rd::RedisConfig::default()
            };
            let u = config.url.clone();
            let prefix = format!("{}:", config.prefix);
            let writer = rd::RedisWriter::connect(config)
                .await
                .with_context(|| format!("connecting to Redis at {}", redact::url(&u)))?;
            let sampler = Sampler::Redis(writer.connection(), prefix);
            (
                Arc::new(rd::RedisProjection::default()),
                Arc::new(writer),
                sampler,
            )
        }
        Store::Elasticsearch => {
            let u = url(&ELASTICSEARCH_URL);
            let writer = es::EsWriter::connect(&u, args.index_prefix.clone())
                .with_context(|| format!("connecting to Elasticsearch at {}", redact::url(&u)))?;
            es::migrate(writer.client(), &args.index_prefix)
                .await
                .with_context(|| format!("creating the indices at {}", redact::url(&u)))?;
            let aliases = es::indices::INDICES
                .iter()
                .map(|spec| writer.alias(spec.view))
                .collect();
            let sampler = Sampler::Elasticsearch(writer.client().clone(), aliases);
            (
                Arc::new(es::projection::EsProjection),
                Arc::new(writer),
                sampler,
            )
        }
    })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = name(args.store);
    let (projection, writer, mut sampler) = connect(&args).await?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).context("registering the sink's metrics")?;
    let growth_metrics =
        growth::GrowthMetrics::new(&registry).context("registering the growth metrics")?;
    let every = Duration::from_secs(args.growth_interval_secs.max(1));
    // Sampling never stops the sink: a failed sample is logged and tried again next time.
    tokio::spawn(async move {
        loop {
            match sampler.sample().await {
                Ok(sizes) => growth_metrics.record(&sizes),
                Err(e) => tracing::warn!(error = %e, "sampling the views' growth"),
            }
            tokio::time::sleep(every).await;
        }
    });
    let mut config = SinkConfig::new(store);
    config.brokers = args.brokers.clone();
    if !args.topic_prefix.is_empty() {
        config.group_id = tributary_runtime::topics::prefixed(&args.topic_prefix, &config.group_id);
        config.sources = projection
            .streams()
            .iter()
            .map(|&stream| SourceTopic {
                topic: tributary_runtime::topics::prefixed(&args.topic_prefix, stream.topic()),
                stream,
            })
            .collect();
    }
    if let Some(group) = &args.group {
        config.group_id = group.clone();
    }
    config.batch_max_records = args.batch_max_records.max(1);
    config.batch_linger = Duration::from_millis(args.batch_linger_ms);
    config.dlq_pause_ratio = args.dlq_pause_ratio;
    config.dlq_pause_min = args.dlq_pause_min;
    config.dlq_pause_window = args.dlq_pause_window.max(1);
    let codec = Arc::new(
        Codec::new(&args.registry)
            .with_unknown_schema_grace(Duration::from_secs(args.unknown_schema_grace)),
    );
    let sink = Sink::new(config, codec, projection, writer, &metrics);

    let stop = tributary_runtime::shutdown::on_signal();
    let (addr, _server) =
        tributary_runtime::metrics::serve(args.metrics_listen, registry, stop.clone())
            .await
            .with_context(|| format!("serving metrics on {}", args.metrics_listen))?;
    tracing::info!(store, metrics = %addr, "sink running");
    sink.run(stop)
        .await
        .with_context(|| format!("running the {store} sink"))?;
    Ok(ExitCode::SUCCESS)
}
