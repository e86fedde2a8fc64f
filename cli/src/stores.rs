//! What the commands that work on whole stores (`reconcile`, `rebuild`) share: the choice of
//! store, the stores' addresses and namespaces, connecting and migrating each store as
//! `tributary sink` does, the lock connection and a progress bar.

use anyhow::Context;
use clap::{Args as ClapArgs, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tributary_runtime::config::{
    DATABASE_URL, ELASTICSEARCH_URL, KAFKA_BROKERS, MONGODB_URL, REDIS_URL, SCHEMA_REGISTRY_URL,
};
use tributary_runtime::redact;
use tributary_sinks::reconcile::Progress;
use tributary_sinks::runner::{Projection, SourceTopic};
use tributary_sinks::{elasticsearch as es, mongodb as mongo, postgres as pg, redis as rd};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Store {
    Postgres,
    Mongodb,
    Redis,
    Elasticsearch,
    All,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::Postgres => "postgres",
            Store::Mongodb => "mongodb",
            Store::Redis => "redis",
            Store::Elasticsearch => "elasticsearch",
            Store::All => "all",
        }
    }

    /// The stores `self` stands for, one after the other.
    pub fn each(self) -> Vec<Store> {
        match self {
            Store::All => vec![
                Store::Postgres,
                Store::Mongodb,
                Store::Redis,
                Store::Elasticsearch,
            ],
            s => vec![s],
        }
    }
}

/// Addresses and namespaces of the log and of every store.
#[derive(ClapArgs)]
pub struct StoreArgs {
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    pub brokers: String,
    #[arg(long, env = "TRIBUTARY_SCHEMA_REGISTRY_URL", default_value = SCHEMA_REGISTRY_URL.default)]
    pub registry: String,
    #[arg(long, env = "TRIBUTARY_DATABASE_URL", default_value = DATABASE_URL.default)]
    pub database_url: String,
    /// PostgreSQL schema of the views; defaults to the server's `search_path`.
    #[arg(long)]
    pub postgres_schema: Option<String>,
    #[arg(long, env = "TRIBUTARY_MONGODB_URL", default_value = MONGODB_URL.default)]
    pub mongodb_url: String,
    /// Redis of the Redis views, and of the lock whatever the store.
    #[arg(long, env = "TRIBUTARY_REDIS_URL", default_value = REDIS_URL.default)]
    pub redis_url: String,
    #[arg(long, env = "TRIBUTARY_ELASTICSEARCH_URL", default_value = ELASTICSEARCH_URL.default)]
    pub elasticsearch_url: String,
    /// MongoDB database of the views.
    #[arg(long, default_value = "tributary")]
    pub mongodb_database: String,
    /// Prefix of the Elasticsearch indices and aliases.
    #[arg(long, default_value = "tributary-")]
    pub index_prefix: String,
    /// Prefix of the Redis keys.
    #[arg(long, default_value = "tributary:v1")]
    pub redis_prefix: String,
    /// Put before every event topic name (a pipeline and sinks started with the same
    /// `--topic-prefix`).
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
}

impl StoreArgs {
    /// The topics to replay for `projection`: empty (each stream's production topic) without a
    /// `--topic-prefix`.
    pub fn sources(&self, projection: &dyn Projection) -> Vec<SourceTopic> {
        if self.topic_prefix.is_empty() {
            return Vec::new();
        }
        projection
            .streams()
            .iter()
            .map(|&stream| SourceTopic {
                topic: tributary_runtime::topics::prefixed(&self.topic_prefix, stream.topic()),
                stream,
            })
            .collect()
    }

    pub fn postgres_config(&self) -> pg::PostgresConfig {
        pg::PostgresConfig {
            url: self.database_url.clone(),
            schema: self.postgres_schema.clone(),
            ..pg::PostgresConfig::default()
        }
    }

    /// The PostgreSQL writer, its migrations applied.
    pub async fn postgres(&self) -> anyhow::Result<pg::PostgresWriter> {
        let config = self.postgres_config();
        pg::PostgresWriter::connect(&config).await.with_context(|| {
            format!(
                "connecting to and migrating PostgreSQL at {}",
                redact::url(&config.url)
            )
        })
    }

    /// The MongoDB writer, its migrations applied.
    pub async fn mongodb(&self) -> anyhow::Result<mongo::MongoWriter> {
        let u = &self.mongodb_url;
        let writer = mongo::MongoWriter::connect(u, &self.mongodb_database)
            .await
            .with_context(|| format!("connecting to MongoDB at {}", redact::url(u)))?;
        mongo::migrate(writer.database())
            .await
            .with_context(|| format!("migrating MongoDB database {}", self.mongodb_database))?;
        Ok(writer)
    }

    pub fn redis_config(&self) -> rd::RedisConfig {
        rd::RedisConfig {
            url: self.redis_url.clone(),
            prefix: self.redis_prefix.clone(),
            ..rd::RedisConfig::default()
        }
    }

    pub async fn redis(&self) -> anyhow::Result<rd::RedisWriter> {
        rd::RedisWriter::connect(self.redis_config())
            .await
            .with_context(|| format!("connecting to Redis at {}", redact::url(&self.redis_url)))
    }

    /// The Elasticsearch writer, its index templates and aliases in place.
    pub async fn elasticsearch(&self) -> anyhow::Result<es::EsWriter> {
        let u = &self.elasticsearch_url;
        let writer = es::EsWriter::connect(u, self.index_prefix.clone())
            .with_context(|| format!("connecting to Elasticsearch at {}", redact::url(u)))?;
        es::migrate(writer.client(), &self.index_prefix)
            .await
            .with_context(|| format!("creating the indices at {}", redact::url(u)))?;
        Ok(writer)
    }

    /// The connection that holds the per-store lock.
    pub async fn lock_connection(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        let client = rd::client(&self.redis_url)
            .with_context(|| format!("invalid Redis url {}", redact::url(&self.redis_url)))?;
        redis::aio::ConnectionManager::new(client)
            .await
            .with_context(|| {
                format!(
                    "connecting to Redis at {} for the lock",
                    redact::url(&self.redis_url)
                )
            })
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(store: &str) -> Self {
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
