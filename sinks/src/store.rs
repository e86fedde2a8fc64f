//! # The store trait family
//!
//! A store is one folder of this crate (`src/<store>/`) and one line in [`crate::stores`]. The
//! folder implements two small traits:
//!
//! ```text
//!  Store (the list entry: name, options, projection)
//!    └─ config(&Settings) ──► StoreConfig (that store's own config type, e.g. PostgresConfig)
//!                               └─ build() ──► StoreParts { projection, writer, live, target, sampler }
//!                                                 │          │       │      │        └─ growth::Sampler  (<store>/growth.rs)
//!                                                 │          │       │      └─ rebuild::Target        (<store>/rebuild.rs)
//!                                                 │          │       └─ reconcile::LiveStore          (<store>/live.rs)
//!                                                 │          └─ change::ViewWriter                    (<store>/writer.rs)
//!                                                 └─ runner::Projection                               (<store>/projection.rs)
//! ```
//!
//! The sink, reconcile, rebuild, summary and growth take stores from [`crate::stores::all`] and
//! call only these traits, so none of them names a store. The store's name lives on its
//! [`Store`] entry (and on its writer, whose messages carry it); the other parts do not repeat it.
//!
//! Settings are plain named strings ([`StoreOption`], [`Settings`]) rather than a struct with a
//! field per store: the CLI makes one flag of each option of each listed store for every command
//! that touches stores, so a new store's flags appear without editing the CLI.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::change::ViewWriter;
use crate::growth::Sampler;
use crate::rebuild::Target;
use crate::reconcile::LiveStore;
use crate::runner::Projection;

/// One setting a store reads. The CLI offers it as `--<name>` on every command that touches
/// stores, read from `env` when set, else `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOption {
    /// The flag's name, e.g. `database-url`.
    pub name: &'static str,
    /// The environment variable the CLI falls back to, e.g. `TRIBUTARY_DATABASE_URL`.
    pub env: Option<&'static str>,
    /// The value when neither the flag nor the variable is given; `None`: unset.
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// What the flag's value is called in `--help`: `URL`, `NAME`, `FILE`, ...
    pub value_name: &'static str,
    /// The store's address: what `tributary sink --url` sets for the store it runs.
    pub address: bool,
}

/// The values of the stores' options, by option name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

impl Settings {
    /// No values at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// The defaults of every option of `stores` (the environment is not read: that is the
    /// CLI's job).
    pub fn defaults<'a>(stores: impl IntoIterator<Item = &'a dyn Store>) -> Self {
        let mut settings = Self::new();
        for store in stores {
            for option in store.options() {
                if let Some(d) = option.default {
                    settings.set(option.name, d);
                }
            }
        }
        settings
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.values.insert(name.to_string(), value.into());
        self
    }

    pub fn unset(&mut self, name: &str) -> &mut Self {
        self.values.remove(name);
        self
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of `name`, which `store` cannot do without.
    pub fn require(&self, store: &'static str, name: &'static str) -> Result<&str, StoreError> {
        self.get(name).ok_or(StoreError::Missing { store, name })
    }
}

/// Why a store could not be configured or connected.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A setting the store needs is not set; retrying with the same settings cannot help.
    #[error("{store}: the setting `--{name}` is missing")]
    Missing {
        store: &'static str,
        name: &'static str,
    },
    /// A setting's value is unusable (e.g. a URL that does not parse); retrying cannot help.
    #[error("{store}: {message}")]
    Invalid {
        store: &'static str,
        message: String,
    },
    /// Connecting to the store or preparing it (migrations, index templates) failed; the store
    /// may be back later.
    #[error("{store}: {action}: {source}")]
    Connect {
        store: &'static str,
        /// What was done, with the address its password masked.
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether running again can help.
    pub fn retriable(&self) -> bool {
        matches!(self, StoreError::Connect { .. })
    }

    /// A [`StoreError::Connect`] maker for `map_err`.
    pub fn connect<E>(store: &'static str, action: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let action = action.into();
        move |source| StoreError::Connect {
            store,
            action,
            source: Box::new(source),
        }
    }
}

/// Everything of one connected store, each part the same object whichever command runs it.
#[derive(Clone)]
pub struct StoreParts {
    /// Events → changes: the same projection for the sink, reconcile and rebuild.
    pub projection: Arc<dyn Projection>,
    /// The sink's writer of the live view.
    pub writer: Arc<dyn ViewWriter>,
    /// The store as reconcile reads and releases it.
    pub live: Arc<dyn LiveStore>,
    /// Where a rebuild builds its copy and how it swaps it in.
    pub target: Arc<dyn Target>,
    /// Entities and bytes per view, for the growth metrics and the summary.
    pub sampler: Arc<dyn Sampler>,
}

/// A store in the list of stores: its name, its options and its projection, and its config type.
pub trait Store: Send + Sync {
    /// `postgres`, `mongodb`, ...: `--store <name>`, the sink's group `tributary-sink-<name>`,
    /// the lock `tributary:lock:reconcile:<name>`, the `store` label of the growth metrics.
    fn name(&self) -> &'static str;

    /// The settings [`Store::config`] reads.
    fn options(&self) -> &'static [StoreOption] {
        &[]
    }

    /// The projection its sink runs. No connection needed: the summary reads which topics each
    /// sink consumes from it.
    fn projection(&self) -> Arc<dyn Projection>;

    /// The store's config type, filled from `settings`.
    fn config(&self, settings: &Settings) -> Result<Box<dyn StoreConfig>, StoreError>;
}

/// One store's config type (`PostgresConfig`, `RedisConfig`, ...): how to reach it.
#[async_trait::async_trait]
pub trait StoreConfig: Send + Sync {
    /// Connects, applies the store's migrations (as the sink does on start) and returns its
    /// parts.
    async fn build(&self) -> Result<StoreParts, StoreError>;

    /// Only the growth sampler. By default the built parts' sampler; a store whose
    /// [`StoreConfig::build`] changes the store (migrations) overrides this, so that reading
    /// sizes (`tributary summary`) changes nothing.
    async fn sampler(&self) -> Result<Arc<dyn Sampler>, StoreError> {
        Ok(self.build().await?.sampler)
    }
}
