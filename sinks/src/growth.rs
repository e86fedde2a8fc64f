//! Data growth of the views (ADR-007's monitoring list): entities per view and bytes per view or
//! store, read from each store's own statistics. Every sink process samples its store
//! periodically into [`GrowthMetrics`] ([`run`]); `tributary summary` reads the same numbers
//! once ([`crate::stores::view_sizes`]). Each store's [`Sampler`] is in its folder
//! (`<store>/growth.rs`); nothing here names a store.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Settings, Store};

use prometheus::{IntGaugeVec, Registry};
use tributary_runtime::metrics::{labels, Kind::Sink};

/// The size of one view (or, with an empty `view`, of the whole store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSize {
    pub store: &'static str,
    pub view: String,
    /// Rows, documents, keys; `None` when the store does not say.
    pub entities: Option<i64>,
    /// Bytes on disk or in memory; `None` when the store does not say.
    pub bytes: Option<i64>,
}

/// Why a store could not be sampled.
#[derive(Debug, thiserror::Error)]
#[error("sampling the size of {store}: {message}")]
pub struct GrowthError {
    pub store: &'static str,
    pub message: String,
}

/// Reads the size of one store's views.
#[async_trait::async_trait]
pub trait Sampler: Send + Sync {
    /// Entities (and bytes, where the store says) per view. `exact` asks for exact counts where
    /// the store otherwise gives a cheap estimate: the summary wants them, the periodic
    /// sampling of a sink does not.
    async fn sample(&self, exact: bool) -> Result<Vec<ViewSize>, GrowthError>;
}

/// Samples `sampler` into `metrics` every `every`, forever (a sink spawns this). A failed
/// sample is logged and tried again next time: sampling never stops the sink.
pub async fn run(sampler: Arc<dyn Sampler>, metrics: GrowthMetrics, every: Duration) {
    loop {
        match sampler.sample(false).await {
            Ok(sizes) => metrics.record(&sizes),
            Err(e) => tracing::warn!(error = %e, "sampling the views' growth"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The size of every view of each of `stores` (connected from `settings` without changing
/// anything: [`crate::store::StoreConfig::sampler`]), exact counts. A store that cannot be
/// reached or sampled gives its error instead, and the others are still sampled.
pub async fn view_sizes(
    stores: &[&'static dyn Store],
    settings: &Settings,
) -> Vec<(&'static str, Result<Vec<ViewSize>, String>)> {
    let mut out = Vec::with_capacity(stores.len());
    for store in stores {
        let sizes = async {
            let sampler = store
                .config(settings)
                .map_err(|e| e.to_string())?
                .sampler()
                .await
                .map_err(|e| e.to_string())?;
            sampler.sample(true).await.map_err(|e| e.to_string())
        }
        .await;
        out.push((store.name(), sizes));
    }
    out
}

pub(crate) fn err(store: &'static str) -> impl Fn(String) -> GrowthError {
    move |message| GrowthError { store, message }
}

/// `tributary_sink_view_entities{view}` and `tributary_sink_view_size_bytes{view}`, with the
/// store as `component_id` as every sink metric has it (`tributary_runtime::metrics`).
#[derive(Clone)]
pub struct GrowthMetrics {
    entities: IntGaugeVec,
    bytes: IntGaugeVec,
}

impl GrowthMetrics {
    pub fn new(registry: &Registry) -> Result<GrowthMetrics, prometheus::Error> {
        let entities = IntGaugeVec::new(
            Sink.opts(
                "tributary_sink_view_entities",
                "Rows, documents or keys of a view, as last sampled.",
            ),
            &labels(&["view"]),
        )?;
        let bytes = IntGaugeVec::new(
            Sink.opts(
                "tributary_sink_view_size_bytes",
                "Size of a view (or, with an empty view label, of the whole store), as last sampled.",
            ),
            &labels(&["view"]),
        )?;
        registry.register(Box::new(entities.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        Ok(GrowthMetrics { entities, bytes })
    }

    pub fn record(&self, sizes: &[ViewSize]) {
        for s in sizes {
            if let Some(n) = s.entities {
                self.entities
                    .with_label_values(&[s.store, s.view.as_str()])
                    .set(n);
            }
            if let Some(b) = s.bytes {
                self.bytes
                    .with_label_values(&[s.store, s.view.as_str()])
                    .set(b);
            }
        }
    }
}
