//! Elasticsearch in the list of stores: its options, its config type and how that connects its
//! parts.

use std::sync::Arc;

use tributary_runtime::config::ELASTICSEARCH_URL;
use tributary_runtime::redact;

use super::connect::{EsSecurity, API_KEY_VAR, CA_VAR};
use super::growth::EsSampler;
use super::indices::INDICES;
use super::live::EsLive;
use super::projection::EsProjection;
use super::rebuild::EsTarget;
use super::{migrate, EsWriter, STORE};
use crate::growth::Sampler;
use crate::runner::Projection;
use crate::store::{Settings, Store, StoreConfig, StoreError, StoreOption, StoreParts};

const URL: &str = "elasticsearch-url";
const INDEX_PREFIX: &str = "index-prefix";
const API_KEY: &str = "elasticsearch-api-key";
const CA: &str = "elasticsearch-ca";

/// The prefix of the indices and aliases unless told otherwise.
pub const DEFAULT_INDEX_PREFIX: &str = "tributary-";

const OPTIONS: &[StoreOption] = &[
    StoreOption {
        name: URL,
        env: Some(ELASTICSEARCH_URL.var),
        default: Some(ELASTICSEARCH_URL.default),
        help: "Elasticsearch of the Elasticsearch views",
        value_name: "URL",
        address: true,
    },
    StoreOption {
        name: API_KEY,
        env: Some(API_KEY_VAR),
        default: None,
        help: "Encoded API key for Elasticsearch (sent as `Authorization: ApiKey ...`; wins over \
               the URL's userinfo)",
        value_name: "KEY",
        address: false,
    },
    StoreOption {
        name: CA,
        env: Some(CA_VAR),
        default: None,
        help: "PEM file of the CAs an `https://` Elasticsearch is verified against, instead of \
               the system's roots",
        value_name: "FILE",
        address: false,
    },
    StoreOption {
        name: INDEX_PREFIX,
        env: None,
        default: Some(DEFAULT_INDEX_PREFIX),
        help: "Prefix of the Elasticsearch indices and aliases",
        value_name: "NAME",
        address: false,
    },
];

/// Where the Elasticsearch views are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsConfig {
    /// `http(s)://[user:password@]host:port`.
    pub url: String,
    /// Put before every index and alias name.
    pub index_prefix: String,
    /// API key and CA file, from `--elasticsearch-api-key` and `--elasticsearch-ca`.
    pub security: EsSecurity,
}

/// The Elasticsearch entry of [`crate::stores::all`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Elasticsearch;

impl Store for Elasticsearch {
    fn name(&self) -> &'static str {
        STORE
    }

    fn options(&self) -> &'static [StoreOption] {
        OPTIONS
    }

    fn projection(&self) -> Arc<dyn Projection> {
        Arc::new(EsProjection)
    }

    fn config(&self, settings: &Settings) -> Result<Box<dyn StoreConfig>, StoreError> {
        Ok(Box::new(EsConfig {
            url: settings.require(STORE, URL)?.to_string(),
            index_prefix: settings.require(STORE, INDEX_PREFIX)?.to_string(),
            security: EsSecurity {
                api_key: settings
                    .get(API_KEY)
                    .filter(|v| !v.trim().is_empty())
                    .map(Into::into),
                ca_file: settings
                    .get(CA)
                    .filter(|v| !v.trim().is_empty())
                    .map(Into::into),
            },
        }))
    }
}

impl EsConfig {
    fn writer(&self) -> Result<EsWriter, StoreError> {
        EsWriter::connect_with(&self.url, &self.security, self.index_prefix.clone()).map_err(
            StoreError::connect(
                STORE,
                format!("connecting to Elasticsearch at {}", redact::url(&self.url)),
            ),
        )
    }

    fn sampler_of(writer: &EsWriter) -> EsSampler {
        EsSampler {
            client: writer.client().clone(),
            aliases: INDICES.iter().map(|spec| writer.alias(spec.view)).collect(),
        }
    }
}

#[async_trait::async_trait]
impl StoreConfig for EsConfig {
    async fn build(&self) -> Result<StoreParts, StoreError> {
        let writer = self.writer()?;
        migrate(writer.client(), &self.index_prefix)
            .await
            .map_err(StoreError::connect(
                STORE,
                format!("creating the indices at {}", redact::url(&self.url)),
            ))?;
        let client = writer.client().clone();
        Ok(StoreParts {
            projection: Arc::new(EsProjection),
            live: Arc::new(EsLive::new(client.clone(), self.index_prefix.clone())),
            target: Arc::new(EsTarget::new(client, &self.index_prefix)),
            sampler: Arc::new(Self::sampler_of(&writer)),
            writer: Arc::new(writer),
        })
    }

    /// No index templates or aliases created: sampling changes nothing (a missing alias is an
    /// empty view).
    async fn sampler(&self) -> Result<Arc<dyn Sampler>, StoreError> {
        Ok(Arc::new(Self::sampler_of(&self.writer()?)))
    }
}
