//! `tributary rebuild --store X|all`: builds a fresh copy of a store's views from the event
//! topics beside the live one (a schema, a database, indices behind the aliases, a key prefix),
//! catches it up to the log head while the sink keeps running, swaps it in atomically and drops
//! the old copy. Readers never see an empty or half-built view.
//!
//! Each store's run holds the store's Redis lock, the same one `tributary reconcile` takes
//! (`tributary:lock:reconcile:<store>`): a reconcile reading across a swap, or a repair of a
//! copy about to be dropped, would be as wrong as two rebuilds swapping each other's copies.
//! Progress goes to stderr; a one-line report per store to stdout. Exit code 0 on success, 2 on
//! error.

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
use tributary_sinks::rebuild::{self, Parts, RebuildConfig, RebuildReport, Target};
use tributary_sinks::reconcile::Progress;
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
    /// The store to rebuild, or `all` (one after the other).
    #[arg(long, value_enum)]
    store: Store,
    /// Print the reports as JSON (stdout).
    #[arg(long)]
    json: bool,
    /// Records per write of the copy.
    #[arg(long, default_value_t = 500)]
    batch_max_records: usize,
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    brokers: String,
    #[arg(long, env = "TRIBUTARY_SCHEMA_REGISTRY_URL", default_value = SCHEMA_REGISTRY_URL.default)]
    registry: String,
    #[arg(long, env = "TRIBUTARY_DATABASE_URL", default_value = DATABASE_URL.default)]
    database_url: String,
    /// PostgreSQL schema of the views; defaults to the server's `search_path`.
    #[arg(long)]
    postgres_schema: Option<String>,
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
    /// Seconds to wait for the lock when another rebuild or reconcile of the store holds it.
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

type Connected = (Arc<dyn Projection>, Arc<dyn ViewWriter>, Box<dyn Target>);

/// The projection, the live writer and the rebuild target of `store`, connected as
/// `tributary sink` does.
async fn connect(
    args: &Args,
    store: Store,
    lock: &redis::aio::ConnectionManager,
) -> anyhow::Result<Connected> {
    use tributary_sinks::{elasticsearch as es, mongodb as mongo, postgres as pg, redis as rd};
    Ok(match store {
        Store::Postgres => {
            let config = pg::PostgresConfig {
                url: args.database_url.clone(),
                schema: args.postgres_schema.clone(),
                ..pg::PostgresConfig::default()
            };
            let writer = pg::PostgresWriter::connect(&config)
                .await
                .with_context(|| {
                    format!("connecting to and migrating PostgreSQL at {}", config.url)
                })?;
            let target = rebuild::postgres::PostgresTarget::new(&config)
                .await
                .context("finding the live PostgreSQL schema")?;
            (
                Arc::new(pg::PostgresProjection),
                Arc::new(writer),
                Box::new(target),
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
            let target = rebuild::mongodb::MongoTarget::new(writer.database());
            (
                Arc::new(mongo::projection::MongoProjection),
                Arc::new(writer),
                Box::new(target),
            )
        }
        Store::Redis => {
            let config = rd::RedisConfig {
                url: args.redis_url.clone(),
                prefix: args.redis_prefix.clone(),
                ..rd::RedisConfig::default()
            };
            let writer = rd::RedisWriter::connect(config.clone())
                .await
                .with_context(|| format!("connecting to Redis at {}", args.redis_url))?;
            let target = rebuild::redis::RedisTarget::new(config, lock.clone());
            (
                Arc::new(rd::RedisProjection::default()),
                Arc::new(writer),
                Box::new(target),
            )
        }
        Store::Elasticsearch => {
            let u = &args.elasticsearch_url;
            let writer = es::EsWriter::connect(u, args.index_prefix.clone())
                .with_context(|| format!("connecting to Elasticsearch at {u}"))?;
            es::migrate(writer.client(), &args.index_prefix)
                .await
                .with_context(|| format!("creating the indices at {u}"))?;
            let target =
                rebuild::elasticsearch::EsTarget::new(writer.client().clone(), &args.index_prefix);
            (
                Arc::new(es::projection::EsProjection),
                Arc::new(writer),
                Box::new(target),
            )
        }
        Store::All => anyhow::bail!("`all` is not one store"),
    })
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Bar {
    fn new(store: &str) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:14} {msg:28} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(store.to_string());
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
) -> anyhow::Result<RebuildReport> {
    let (projection, writer, target) = connect(args, store, &lock).await?;
    let mut config = RebuildConfig::new(name(store));
    config.brokers = args.brokers.clone();
    config.batch_records = args.batch_max_records.max(1);
    config.lock_wait = Duration::from_secs(args.lock_wait_secs);
    let bar = Bar::new(name(store));
    let parts = Parts {
        codec,
        projection: projection.as_ref(),
        target: target.as_ref(),
        live: writer.as_ref(),
        lock,
        progress: &bar,
    };
    rebuild::rebuild(&config, parts)
        .await
        .with_context(|| format!("rebuilding {}", name(store)))
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
    let mut reports = Vec::new();
    for store in stores {
        let report = one(&args, store, &codec, lock.clone()).await?;
        if !args.json {
            print!("{report}");
        }
        reports.push(report);
    }
    if args.json {
        let out = serde_json::json!({ "stores": reports });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
