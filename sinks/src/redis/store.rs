//! Redis in the list of stores: its options and how [`RedisConfig`] connects its parts.

use std::sync::Arc;

use tributary_runtime::config::REDIS_URL;
use tributary_runtime::redact;

use super::growth::RedisSampler;
use super::live::RedisLive;
use super::rebuild::RedisTarget;
use super::{RedisConfig, RedisProjection, RedisWriter, DEFAULT_PREFIX, REDIS_CA_VAR, STORE};
use crate::runner::Projection;
use crate::store::{Settings, Store, StoreConfig, StoreError, StoreOption, StoreParts};

const URL: &str = "redis-url";
const PREFIX: &str = "redis-prefix";
const CA: &str = "redis-ca";

const OPTIONS: &[StoreOption] = &[
    StoreOption {
        name: URL,
        env: Some(REDIS_URL.var),
        default: Some(REDIS_URL.default),
        help: "Redis of the Redis views, and of the stores' locks whatever the store \
               (`rediss://` for TLS)",
        value_name: "URL",
        address: true,
    },
    StoreOption {
        name: CA,
        env: Some(REDIS_CA_VAR),
        default: None,
        help: "PEM file of the CAs a `rediss://` Redis is verified against, instead of the \
               system's roots",
        value_name: "FILE",
        address: false,
    },
    StoreOption {
        name: PREFIX,
        env: None,
        default: Some(DEFAULT_PREFIX),
        help: "Prefix of the Redis keys (a key is `<prefix>:<view>:<id>`)",
        value_name: "NAME",
        address: false,
    },
];

/// The Redis entry of [`crate::stores::all`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Redis;

impl Redis {
    /// The Redis URL of `settings`: the Redis views' and, whatever the store, the one that
    /// holds the stores' locks.
    pub fn url(settings: &Settings) -> Result<&str, StoreError> {
        settings.require(STORE, URL)
    }

    /// The CA file of `settings` to verify a `rediss://` Redis against, if any.
    pub fn ca(settings: &Settings) -> Option<&str> {
        settings.get(CA).filter(|path| !path.trim().is_empty())
    }
}

impl Store for Redis {
    fn name(&self) -> &'static str {
        STORE
    }

    fn options(&self) -> &'static [StoreOption] {
        OPTIONS
    }

    fn projection(&self) -> Arc<dyn Projection> {
        Arc::new(RedisProjection::default())
    }

    fn config(&self, settings: &Settings) -> Result<Box<dyn StoreConfig>, StoreError> {
        Ok(Box::new(RedisConfig {
            url: Self::url(settings)?.to_string(),
            ca_file: Self::ca(settings).map(str::to_string),
            prefix: settings.require(STORE, PREFIX)?.to_string(),
            ..RedisConfig::default()
        }))
    }
}

#[async_trait::async_trait]
impl StoreConfig for RedisConfig {
    /// Nothing to migrate: building the parts changes nothing in Redis, so the default
    /// [`StoreConfig::sampler`] is fine.
    async fn build(&self) -> Result<StoreParts, StoreError> {
        let writer = RedisWriter::connect(self.clone())
            .await
            .map_err(StoreError::connect(
                STORE,
                format!("connecting to Redis at {}", redact::url(&self.url)),
            ))?;
        let conn = writer.connection();
        Ok(StoreParts {
            projection: Arc::new(RedisProjection::default()),
            live: Arc::new(RedisLive::new(conn.clone(), self.prefix.clone())),
            // The swap runs on the writer's connection: the same server as the views.
            target: Arc::new(RedisTarget::new(self.clone(), conn.clone())),
            sampler: Arc::new(RedisSampler {
                conn,
                prefix: self.prefix.clone(),
            }),
            writer: Arc::new(writer),
        })
    }
}
