//! `tributary reconcile --store X|all [--json] [--repair] [--samples N]`: replays the event
//! topics into the expected view of a store, compares it with the live store and reports the
//! drift per view; `--repair` fixes exactly that drift through the sink's own writer.
//!
//! Exit code: 0 when no drift was found, 1 when some was (even if `--repair` fixed it; the
//! report says what is left), 2 on error. Each store's run holds its Redis lock
//! (`tributary:lock:reconcile:<store>`), so two runs on one store cannot collide.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args as ClapArgs, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tributary_runtime::config::{
    DATABASE_URL, ELASTICSEARCH_URL, KAFKA_BROKERS, MONGODB_URL, REDIS_URL, SCHEMA_REGISTRY_URL,
};
use tributary_schemas::Codec;
use tributary_sinks::change::ViewWriter;
use tributary_sinks::reconcile::{
    self, LiveStore, Parts, Progress, ReconcileConfig, ReconcileMetrics, Report,
};
use tributary_sinks::runner::Projection;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Store {
    Postgres,
    Mongodb,
    Redis,
    Elasticsearch,
    All,
}

const EACH: [Store; 4] = [
    Store::Postgres,
    Store::Mongodb,
    Store::Redis,
    Store::Elasticsearch,
];

#[derive(ClapArgs)]
pub struct Args {
    /// The store to reconcile, or `all`.
    #[arg(long, value_enum)]
    store: Store,
    /// Print the report as JSON (stdout) instead of text and metrics.
    #[arg(long)]
    json: bool,
    /// Fix the drift found: write missing and differing entities, delete extra ones.
    #[arg(long)]
    repair: bool,
    /// Ids shown per view and kind of drift.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    brokers: String,
    #[arg(long, env = "TRIBUTARY_SCHEMA_REGISTRY_URL", default_value = SCHEMA_REGISTRY_URL.default)]
    registry: String,
    #[arg(long, env = "TRIBUTARY_DATABASE_URL", default_value = DATABASE_URL.default)]
    database_url: String,
    #[arg(long, env = "TRIBUTARY_MONGODB_URL", default_value = MONGODB_URL.default)]
    mongodb_url: String,
    /// Redis of the Redis views, and of the lock whatever the store.
    #[arg(long, env = "TRIBUTARY_REDIS_URL", default_value = REDIS_URL.default)]
    redis_url: String,
    #[arg(long, env = "TRIBUTARY_ELASTICSEARCH_URL", default_value = ELASTICSEARCH_URL.default)]
    elasticsearch_url: String,
    /// MongoDB database of the views.
    #[arg(long, default_value = "tributary")]
    mongodb_database: String,
    /// Prefix of the Elasticsearch indices and aliases.
    #[arg(long, default_value = "tributary-")]
    index_prefix: String,
    /// Prefix of the Redis keys.
    #[arg(long, default_value = "tributary:v1")]
    redis_prefix: String,
    /// Seconds to wait for the lock when another reconcile of the store holds it.
    #[arg(long, default_value_t = 0)]
    lock_wait_secs: u64,
}

fn name(store: Store) -> &'static str {
    match store {
        Store::Postgres => "postgres",
        Store::Mongodb => "mongodb",
        Store::Redis => "redis",
        Store::Elasticsearch => "elasticsearch",
        Store::All => "all",
    }
}

type Connected = (Arc<dyn Projection>, Arc<dyn ViewWriter>, Arc<dyn LiveStore>);

/// The projection, writer and live view of `store`, connected as `tributary sink` does.
async fn connect(args: &Args, store: Store) -> anyhow::Result<Connected> {
    use tributary_sinks::{elasticsearch as es, mongodb as mongo, postgres as pg, redis as rd};
    Ok(match store {
        Store::Postgres => {
            let config = pg::PostgresConfig {
                url: args.database_url.clone(),
                ..pg::PostgresConfig::default()
            };
            let writer = pg::PostgresWriter::connect(&config)
                .await
                .with_context(|| {
                    format!("connecting to and migrating PostgreSQL at {}", config.url)
                })?;
            let live = reconcile::postgres::PostgresLive::new(writer.pool().clone());
            (
                Arc::new(pg::PostgresProjection),
                Arc::new(writer),
                Arc::new(live),
            )
        }
        Store::Mongodb => {
            let u = &args.mongodb_url;
            let writer = mongo::MongoWriter::connect(u, &args.mongodb_database)
                .await
                .with_context(|| format!("connecting to MongoDB at {u}"))?;
            mongo::migrate(writer.database())
                .await
                .with_context(|| format!("migrating MongoDB database {}", args.mongodb_database))?;
            let live = reconcile::mongodb::MongoLive::new(writer.database().clone());
            (
                Arc::new(mongo::projection::MongoProjection),
                Arc::new(writer),
                Arc::new(live),
            )
        }
        Store::Redis => {
            let config = rd::RedisConfig {
                url: args.redis_url.clone(),
                prefix: args.redis_prefix.clone(),
                ..rd::RedisConfig::default()
            };
            let writer = rd::RedisWriter::connect(config)
                .await
                .with_context(|| format!("connecting to Redis at {}", args.redis_url))?;
            let live =
                reconcile::redis::RedisLive::new(writer.connection(), args.redis_prefix.clone());
            (
                Arc::new(rd::RedisProjection::default()),
                Arc::new(writer),
                Arc::new(live),
            )
        }
        Store::Elasticsearch => {
            let u = &args.elasticsearch_url;
            let writer = es::EsWriter::connect(u, args.index_prefix.clone())
                .with_context(|| format!("connecting to Elasticsearch at {u}"))?;
            es::migrate(writer.client(), &args.index_prefix)
                .await
                .with_context(|| format!("creating the indices at {u}"))?;
            let live = reconcile::elasticsearch::EsLive::new(
                writer.client().clone(),
                args.index_prefix.clone(),
            );
            (
                Arc::new(es::projection::EsProjection),
                Arc::new(writer),
                Arc::new(live),
            )
        }
        Store::All => anyhow::bail!("`all` is not one store"),
    })
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:28} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(bar)
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        self.0.set_message(phase.to_string());
        self.0.set_position(0);
        self.0.set_length(total);
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

async fn one(
    args: &Args,
    store: Store,
    codec: &Codec,
    lock: redis::aio::ConnectionManager,
) -> anyhow::Result<Report> {
    let (projection, writer, live) = connect(args, store).await?;
    let mut config = ReconcileConfig::new(name(store));
    config.brokers = args.brokers.clone();
    config.samples = args.samples;
    config.repair = args.repair;
    config.lock_wait = Duration::from_secs(args.lock_wait_secs);
    let bar = Bar::new();
    let parts = Parts {
        codec,
        projection: projection.as_ref(),
        live: live.as_ref(),
        writer: writer.as_ref(),
        lock,
        progress: &bar,
    };
    reconcile::reconcile(&config, parts)
        .await
        .with_context(|| format!("reconciling {}", name(store)))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let stores: Vec<Store> = match args.store {
        Store::All => EACH.to_vec(),
        s => vec![s],
    };
    let client = redis::Client::open(args.redis_url.as_str())
        .with_context(|| format!("invalid Redis url {}", args.redis_url))?;
    let lock = redis::aio::ConnectionManager::new(client)
        .await
        .with_context(|| format!("connecting to Redis at {} for the lock", args.redis_url))?;
    let codec = Codec::new(&args.registry);
    let registry = prometheus::Registry::new();
    let metrics = ReconcileMetrics::new(&registry).context("registering the metrics")?;
    let mut reports = Vec::new();
    for store in stores {
        let report = one(&args, store, &codec, lock.clone()).await?;
        metrics.observe(&report);
        if !args.json {
            print!("{report}");
        }
        reports.push(report);
    }
    let drift: usize = reports.iter().map(Report::drift).sum();
    if args.json {
        let out = serde_json::json!({ "drift": drift > 0, "stores": reports });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .context("encoding the metrics")?;
        println!();
        print!("{text}");
    }
    Ok(if drift > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
