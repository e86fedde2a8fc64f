//! MongoDB in the list of stores: its options, its config type and how that connects its parts.

use std::sync::Arc;

use tributary_runtime::config::MONGODB_URL;
use tributary_runtime::redact;

use super::growth::MongoSampler;
use super::live::MongoLive;
use super::projection::MongoProjection;
use super::rebuild::MongoTarget;
use super::{migrate, MongoWriter, STORE};
use crate::growth::Sampler;
use crate::runner::Projection;
use crate::store::{Settings, Store, StoreConfig, StoreError, StoreOption, StoreParts};

const URL: &str = "mongodb-url";
const DATABASE: &str = "mongodb-database";

/// The database of the views unless told otherwise.
pub const DEFAULT_DATABASE: &str = "tributary";

const OPTIONS: &[StoreOption] = &[
    StoreOption {
        name: URL,
        env: Some(MONGODB_URL.var),
        default: Some(MONGODB_URL.default),
        help: "MongoDB of the MongoDB views",
        value_name: "URL",
        address: true,
    },
    StoreOption {
        name: DATABASE,
        env: None,
        default: Some(DEFAULT_DATABASE),
        help: "MongoDB database of the views",
        value_name: "NAME",
        address: false,
    },
];

/// Where the MongoDB views are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoConfig {
    /// `mongodb://...` (TLS and credentials in the URL).
    pub url: String,
    pub database: String,
}

/// The MongoDB entry of [`crate::stores::all`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Mongodb;

impl Store for Mongodb {
    fn name(&self) -> &'static str {
        STORE
    }

    fn options(&self) -> &'static [StoreOption] {
        OPTIONS
    }

    fn projection(&self) -> Arc<dyn Projection> {
        Arc::new(MongoProjection)
    }

    fn config(&self, settings: &Settings) -> Result<Box<dyn StoreConfig>, StoreError> {
        Ok(Box::new(MongoConfig {
            url: settings.require(STORE, URL)?.to_string(),
            database: settings.require(STORE, DATABASE)?.to_string(),
        }))
    }
}

impl MongoConfig {
    async fn writer(&self) -> Result<MongoWriter, StoreError> {
        MongoWriter::connect(&self.url, &self.database)
            .await
            .map_err(StoreError::connect(
                STORE,
                format!("connecting to MongoDB at {}", redact::url(&self.url)),
            ))
    }
}

#[async_trait::async_trait]
impl StoreConfig for MongoConfig {
    async fn build(&self) -> Result<StoreParts, StoreError> {
        let writer = self.writer().await?;
        migrate(writer.database())
            .await
            .map_err(StoreError::connect(
                STORE,
                format!("migrating MongoDB database {}", self.database),
            ))?;
        let db = writer.database().clone();
        Ok(StoreParts {
            projection: Arc::new(MongoProjection),
            live: Arc::new(MongoLive::new(db.clone())),
            target: Arc::new(MongoTarget::new(&db)),
            sampler: Arc::new(MongoSampler { db }),
            writer: Arc::new(writer),
        })
    }

    /// Connected, not migrated: sampling changes nothing.
    async fn sampler(&self) -> Result<Arc<dyn Sampler>, StoreError> {
        let writer = self.writer().await?;
        Ok(Arc::new(MongoSampler {
            db: writer.database().clone(),
        }))
    }
}
