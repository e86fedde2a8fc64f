//! PostgreSQL in the list of stores: its options and how [`PostgresConfig`] connects its parts.

use std::sync::Arc;

use tributary_runtime::config::DATABASE_URL;
use tributary_runtime::redact;

use super::growth::PostgresSampler;
use super::live::PostgresLive;
use super::rebuild::PostgresTarget;
use super::{PostgresConfig, PostgresProjection, PostgresWriter, STORE};
use crate::growth::Sampler;
use crate::runner::Projection;
use crate::store::{Settings, Store, StoreConfig, StoreError, StoreOption, StoreParts};

const URL: &str = "database-url";
const SCHEMA: &str = "postgres-schema";

const OPTIONS: &[StoreOption] = &[
    StoreOption {
        name: URL,
        env: Some(DATABASE_URL.var),
        default: Some(DATABASE_URL.default),
        help: "PostgreSQL of the PostgreSQL views (`sslmode` in the URL for TLS)",
        value_name: "URL",
        address: true,
    },
    StoreOption {
        name: SCHEMA,
        env: None,
        default: None,
        help: "PostgreSQL schema of the views; defaults to the server's `search_path`",
        value_name: "NAME",
        address: false,
    },
];

/// The PostgreSQL entry of [`crate::stores::all`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Postgres;

impl Store for Postgres {
    fn name(&self) -> &'static str {
        STORE
    }

    fn options(&self) -> &'static [StoreOption] {
        OPTIONS
    }

    fn projection(&self) -> Arc<dyn Projection> {
        Arc::new(PostgresProjection)
    }

    fn config(&self, settings: &Settings) -> Result<Box<dyn StoreConfig>, StoreError> {
        Ok(Box::new(PostgresConfig {
            url: settings.require(STORE, URL)?.to_string(),
            schema: settings.get(SCHEMA).map(str::to_string),
            ..PostgresConfig::default()
        }))
    }
}

#[async_trait::async_trait]
impl StoreConfig for PostgresConfig {
    async fn build(&self) -> Result<StoreParts, StoreError> {
        let writer = PostgresWriter::connect(self)
            .await
            .map_err(StoreError::connect(
                STORE,
                format!(
                    "connecting to and migrating PostgreSQL at {}",
                    redact::url(&self.url)
                ),
            ))?;
        let pool = writer.pool().clone();
        let target = PostgresTarget::with_pool(self, pool.clone())
            .await
            .map_err(StoreError::connect(
                STORE,
                "finding the live PostgreSQL schema",
            ))?;
        Ok(StoreParts {
            projection: Arc::new(PostgresProjection),
            writer: Arc::new(writer),
            live: Arc::new(PostgresLive::new(pool.clone())),
            target: Arc::new(target),
            sampler: Arc::new(PostgresSampler { pool }),
        })
    }

    /// A pool that connects on first use, no migrations: sampling changes nothing.
    async fn sampler(&self) -> Result<Arc<dyn Sampler>, StoreError> {
        let pool = self.pool().map_err(|e| StoreError::Invalid {
            store: STORE,
            message: e.to_string(),
        })?;
        Ok(Arc::new(PostgresSampler { pool }))
    }
}
