//! Starting a processor: configuration, topics, and the streams app around each processor.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tributary_runtime::config::{KAFKA_BROKERS, SCHEMA_REGISTRY_URL};
use tributary_schemas::Codec;
use tributary_streams::window::Windows;
use tributary_streams::StreamsApp;

use crate::analytics::AnalyticsProcessor;
use crate::catalog::Catalog;
use crate::common::Wire;
use crate::error::{ProcessorError, Result};
use crate::inventory::InventoryProcessor;
use crate::notifications::NotificationsProcessor;
use crate::payments::{DeclineRule, PaymentsProcessor};
use crate::saga::OrderSaga;
use crate::topics::{check_co_partitioned, Topics};
use crate::users::UsersProcessor;

/// What every domain processor needs to run.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    pub brokers: String,
    pub registry_url: String,
    /// How long a schema id the registry does not know is retried before the record is
    /// dead-lettered (a registry failover is not bad data).
    pub unknown_schema_grace: Duration,
    /// Topic names (and, through their prefix, the application ids).
    pub topics: Topics,
    /// Root of the local state stores.
    pub state_dir: PathBuf,
    /// Partitions of the topics created by [`DomainConfig::create_topics`].
    pub partitions: i32,
    /// How long the saga waits for inventory and payments before it compensates and cancels.
    pub saga_timeout: Duration,
    pub decline: DeclineRule,
    /// The runtime's longest time between commits under steady load.
    pub commit_interval: Duration,
    /// The runtime's fetch wait (see `tributary_streams::StreamsConfig::fetch_wait`).
    pub fetch_wait: Duration,
    /// The runtime's producer linger (see `tributary_streams::StreamsConfig::linger`).
    pub linger: Duration,
    /// Create missing topics (the pipeline's and the internal ones) before starting.
    pub create_topics: bool,
    /// The analytics' windows (by event time).
    pub analytics_windows: Windows,
    /// How long a processed command or event id is remembered (duplicates arriving later are
    /// processed again).
    pub dedupe_retention: Duration,
    /// How long a finished order's saga state stays in the saga's store after its last change
    /// (a PlaceOrder reusing the id after that is a new order). Must exceed the saga timeout.
    pub saga_retention: Duration,
}

impl DomainConfig {
    /// Addresses from the `TRIBUTARY_*` variables, the real topic names, defaults elsewhere.
    pub fn from_env() -> DomainConfig {
        DomainConfig {
            brokers: KAFKA_BROKERS.get(),
            registry_url: SCHEMA_REGISTRY_URL.get(),
            unknown_schema_grace: tributary_schemas::DEFAULT_UNKNOWN_SCHEMA_GRACE,
            topics: Topics::default(),
            state_dir: std::env::temp_dir().join("tributary-processors"),
            partitions: 3,
            saga_timeout: Duration::from_secs(30),
            decline: DeclineRule::default(),
            commit_interval: Duration::from_millis(100),
            fetch_wait: Duration::from_millis(50),
            linger: Duration::from_millis(1),
            create_topics: true,
            analytics_windows: Windows::tumbling(60_000, 5_000),
            dedupe_retention: Duration::from_secs(7 * 24 * 3600),
            saga_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The domain processors, each one streams application (consumer group `<prefix>tributary-<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainApp {
    Users,
    Inventory,
    Payments,
    Orders,
    Notifications,
    Analytics,
}

impl DomainApp {
    pub const ALL: [DomainApp; 6] = [
        DomainApp::Users,
        DomainApp::Inventory,
        DomainApp::Payments,
        DomainApp::Orders,
        DomainApp::Notifications,
        DomainApp::Analytics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DomainApp::Users => "users",
            DomainApp::Inventory => "inventory",
            DomainApp::Payments => "payments",
            DomainApp::Orders => "orders",
            DomainApp::Notifications => "notifications",
            DomainApp::Analytics => "analytics",
        }
    }

    pub fn from_name(name: &str) -> Option<DomainApp> {
        DomainApp::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn application_id(self, cfg: &DomainConfig) -> String {
        cfg.topics.name(&format!("tributary-{}", self.name()))
    }

    /// The topics this app consumes (its consumer group's subscription).
    pub fn inputs(self, topics: &Topics) -> Vec<String> {
        match self {
            DomainApp::Analytics => AnalyticsProcessor::inputs(topics),
            DomainApp::Users => UsersProcessor::inputs(topics),
            DomainApp::Inventory => InventoryProcessor::inputs(topics),
            DomainApp::Payments => PaymentsProcessor::inputs(topics),
            DomainApp::Orders => OrderSaga::inputs(topics),
            DomainApp::Notifications => NotificationsProcessor::inputs(topics),
        }
    }

    /// The app's state stores (each changelogged to `<app id>-<store>-changelog`).
    pub fn stores(self) -> Vec<&'static str> {
        match self {
            DomainApp::Analytics => AnalyticsProcessor::stores(),
            DomainApp::Users => UsersProcessor::stores(),
            DomainApp::Inventory => InventoryProcessor::stores(),
            DomainApp::Payments => PaymentsProcessor::stores(),
            DomainApp::Orders => OrderSaga::stores(),
            DomainApp::Notifications => NotificationsProcessor::stores(),
        }
    }

    /// Runs the processor until `shutdown` fires. `metrics` receives the runtime's metrics; one
    /// registry per app (the runtime registers its metric families per app).
    pub async fn run(
        self,
        cfg: &DomainConfig,
        metrics: Option<&Registry>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        self.run_inner(cfg, metrics, shutdown, None).await
    }

    /// Like [`run`](Self::run), stopping as `kill -9` would at `point` of a commit once `kill`
    /// fires (the recovery tests run apps in-process).
    #[doc(hidden)]
    pub async fn run_with_kill_switch(
        self,
        cfg: &DomainConfig,
        shutdown: CancellationToken,
        kill: CancellationToken,
        point: tributary_streams::KillPoint,
    ) -> Result<()> {
        self.run_inner(cfg, None, shutdown, Some((kill, point)))
            .await
    }

    async fn run_inner(
        self,
        cfg: &DomainConfig,
        metrics: Option<&Registry>,
        shutdown: CancellationToken,
        kill: Option<(CancellationToken, tributary_streams::KillPoint)>,
    ) -> Result<()> {
        if cfg.create_topics {
            cfg.topics.ensure(&cfg.brokers, cfg.partitions).await?;
        }
        let codec = Arc::new(
            Codec::new(&cfg.registry_url).with_unknown_schema_grace(cfg.unknown_schema_grace),
        );
        let wire = Wire::new(codec.clone());
        let topics = cfg.topics.clone();
        let mut b = StreamsApp::builder(&self.application_id(cfg))
            .brokers(&cfg.brokers)
            .processor_name(self.name())
            .state_dir(&cfg.state_dir)
            .commit_interval(cfg.commit_interval)
            .fetch_wait(cfg.fetch_wait)
            .linger(cfg.linger);
        if let Some(r) = metrics {
            b = b.metrics_registry(r);
        }
        for t in &self.inputs(&topics) {
            b = b.input(t);
        }
        for s in self.stores() {
            b = match s {
                crate::common::SEEN => b.store_with_retention(s, cfg.dedupe_retention),
                crate::saga::ORDERS if self == DomainApp::Orders => {
                    b.store_with_retention(s, cfg.saga_retention.max(cfg.saga_timeout * 2))
                }
                _ => b.store(s),
            };
        }
        let b = match self {
            DomainApp::Analytics => {
                let p = AnalyticsProcessor::new(wire, topics, cfg.analytics_windows);
                b.processor(move |_| p.clone())
            }
            DomainApp::Users => {
                let p = UsersProcessor::new(wire, topics);
                b.processor(move |_| p.clone())
            }
            DomainApp::Inventory => {
                let p = InventoryProcessor::new(wire, topics);
                b.processor(move |_| p.clone())
            }
            DomainApp::Payments => {
                let p = PaymentsProcessor::new(wire, topics, cfg.decline.clone());
                b.processor(move |_| p.clone())
            }
            DomainApp::Notifications => {
                let p = NotificationsProcessor::new(wire, topics);
                b.processor(move |_| p.clone())
            }
            DomainApp::Orders => {
                let (brokers, co) = (
                    cfg.brokers.clone(),
                    vec![
                        topics.orders_saga(),
                        topics.events_inventory(),
                        topics.events_payments(),
                    ],
                );
                let events = topics.events_inventory();
                let owner = (
                    DomainApp::Inventory.application_id(cfg),
                    InventoryProcessor::inputs(&topics),
                );
                let catalog = tokio::task::spawn_blocking(move || -> Result<Catalog> {
                    check_co_partitioned(&brokers, &co)?;
                    Catalog::start(&brokers, &events, Some((&owner.0, owner.1)), codec)
                })
                .await
                .map_err(|e| ProcessorError::Config(format!("starting the catalog: {e}")))??;
                let catalog = Arc::new(catalog);
                let timeout = cfg.saga_timeout;
                let outcomes = metrics
                    .map(crate::saga::outcome_metric)
                    .transpose()
                    .map_err(|e| ProcessorError::Config(format!("saga metrics: {e}")))?;
                b.processor(move |_| {
                    OrderSaga::new(
                        wire.clone(),
                        topics.clone(),
                        catalog.clone(),
                        timeout,
                        outcomes.clone(),
                    )
                })
            }
        };
        let app = b.build()?;
        match kill {
            None => app.run(shutdown).await?,
            Some((kill, point)) => app.run_with_kill_switch(shutdown, kill, point).await?,
        }
        Ok(())
    }
}
