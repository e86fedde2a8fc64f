//! Starting a processor: configuration, the [`App`] trait each domain app implements, the one
//! list of them ([`DomainApp::ALL`]), and the streams app around each.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tributary_runtime::config::{KAFKA_BROKERS, SCHEMA_REGISTRY_URL};
use tributary_schemas::Codec;
use tributary_streams::window::Windows;
use tributary_streams::{Processor, StreamsApp};

use crate::common::Wire;
use crate::error::Result;
use crate::payments::DeclineRule;
use crate::topics::Topics;

/// What every domain processor needs to run.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    pub brokers: String,
    /// The schema registry; basic-auth credentials, if any, as its userinfo (see
    /// `tributary_schemas::registry_auth`).
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
    /// Open orders a saga task holds before it stops taking new orders (0: no bound).
    pub saga_max_open: u64,
    pub decline: DeclineRule,
    /// The runtime's longest time between commits under steady load.
    pub commit_interval: Duration,
    /// The runtime's fetch wait (see `tributary_streams::StreamsConfig::fetch_wait`).
    pub fetch_wait: Duration,
    /// The runtime's producer linger (see `tributary_streams::StreamsConfig::linger`).
    pub linger: Duration,
    /// librdkafka's idempotent producer (up to 5 requests in flight, ordered per partition)
    /// instead of one request in flight: an output then never waits behind the changelog or the
    /// commit marker of the batch before it. Needs a broker with InitProducerId. Off by default:
    /// on the local broker it made the saga slower, not faster (BENCHMARKS.md).
    pub idempotent_producer: bool,
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
    /// The local stack's addresses, the real topic names, defaults elsewhere. The binary sets
    /// `brokers` and `registry_url` from its flags (libraries never read the environment:
    /// `tributary_runtime::config`).
    pub fn local() -> DomainConfig {
        DomainConfig {
            brokers: KAFKA_BROKERS.default.to_string(),
            registry_url: SCHEMA_REGISTRY_URL.default.to_string(),
            unknown_schema_grace: tributary_schemas::DEFAULT_UNKNOWN_SCHEMA_GRACE,
            topics: Topics::default(),
            state_dir: std::env::temp_dir().join("tributary-processors"),
            partitions: 3,
            saga_timeout: Duration::from_secs(30),
            saga_max_open: crate::DEFAULT_SAGA_MAX_OPEN,
            decline: DeclineRule::default(),
            commit_interval: Duration::from_millis(100),
            fetch_wait: Duration::from_millis(50),
            linger: Duration::from_millis(1),
            idempotent_producer: false,
            create_topics: true,
            analytics_windows: Windows::tumbling(60_000, 5_000),
            dedupe_retention: Duration::from_secs(7 * 24 * 3600),
            saga_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The recovery tests' kill switch (`testing` feature); without it, no value can be built, so
/// the binary has no path that stops like `kill -9`.
#[cfg(feature = "testing")]
type Kill = (CancellationToken, tributary_streams::KillPoint);
#[cfg(not(feature = "testing"))]
type Kill = std::convert::Infallible;

/// The boxed future an [`App`] builds its processors in.
pub type Building<'a> = Pin<Box<dyn Future<Output = Result<Factory>> + Send + 'a>>;

/// Makes the processor of one task (the input partition number it is given).
pub type Factory = Box<dyn Fn(i32) -> Box<dyn Processor> + Send + Sync>;

/// A factory handing each task a clone of `p`.
pub(crate) fn clones<P: Processor + Clone + Sync + 'static>(p: P) -> Factory {
    Box::new(move |_| Box::new(p.clone()))
}

/// What a domain app's processors are built from.
pub struct Build<'a> {
    pub cfg: &'a DomainConfig,
    pub codec: Arc<Codec>,
    pub topics: Topics,
    pub metrics: Option<&'a Registry>,
}

impl Build<'_> {
    pub(crate) fn wire(&self) -> Wire {
        Wire::new(self.codec.clone())
    }
}

/// One domain app, as `tributary process --app <name>` runs it: each is one streams application
/// (consumer group `<prefix>tributary-<name>`). Its file in this crate implements this trait
/// beside its processor, and one entry in [`DomainApp::ALL`] registers it: the CLI, the summary
/// and the tests take the list from there.
pub trait App: Send + Sync {
    /// Its name: `--app <name>`, and its application id `<prefix>tributary-<name>`.
    fn name(&self) -> &'static str;

    /// The topics it consumes (its consumer group's subscription), in subscription order.
    fn inputs(&self, topics: &Topics) -> Vec<String>;

    /// Its state stores (each changelogged to `<app id>-<store>-changelog`).
    fn stores(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// How long an entry of `store` is kept after its last change; `None`: until deleted. By
    /// default the dedupe store keeps ids for [`DomainConfig::dedupe_retention`].
    fn retention(&self, store: &str, cfg: &DomainConfig) -> Option<Duration> {
        (store == crate::common::SEEN).then_some(cfg.dedupe_retention)
    }

    /// Builds what makes each task's processor.
    fn build<'a>(&'a self, b: Build<'a>) -> Building<'a>;
}

/// A domain app of [`DomainApp::ALL`]; compared and printed by name.
#[derive(Clone, Copy)]
pub struct DomainApp(&'static dyn App);

impl PartialEq for DomainApp {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for DomainApp {}

impl std::fmt::Debug for DomainApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// Named like the variants they replaced, so call sites read `DomainApp::Orders`.
#[allow(non_upper_case_globals)]
impl DomainApp {
    pub const Users: DomainApp = DomainApp(&crate::users::UsersApp);
    pub const Inventory: DomainApp = DomainApp(&crate::inventory::InventoryApp);
    pub const Payments: DomainApp = DomainApp(&crate::payments::PaymentsApp);
    pub const Orders: DomainApp = DomainApp(&crate::saga::OrdersApp);
    pub const Notifications: DomainApp = DomainApp(&crate::notifications::NotificationsApp);
    pub const Analytics: DomainApp = DomainApp(&crate::analytics::AnalyticsApp);

    /// Every domain app, in the order `--app all` starts them: the one list.
    pub const ALL: [DomainApp; 6] = [
        DomainApp::Users,
        DomainApp::Inventory,
        DomainApp::Payments,
        DomainApp::Orders,
        DomainApp::Notifications,
        DomainApp::Analytics,
    ];

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn from_name(name: &str) -> Option<DomainApp> {
        DomainApp::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn application_id(self, cfg: &DomainConfig) -> String {
        cfg.topics.name(&format!("tributary-{}", self.name()))
    }

    /// The topics this app consumes (its consumer group's subscription).
    pub fn inputs(self, topics: &Topics) -> Vec<String> {
        self.0.inputs(topics)
    }

    /// The app's state stores (each changelogged to `<app id>-<store>-changelog`).
    pub fn stores(self) -> Vec<&'static str> {
        self.0.stores()
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
    /// fires (the recovery tests run apps in-process; only with the `testing` feature).
    #[cfg(feature = "testing")]
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
        kill: Option<Kill>,
    ) -> Result<()> {
        if cfg.create_topics {
            cfg.topics.ensure(&cfg.brokers, cfg.partitions).await?;
        }
        let codec = Arc::new(
            Codec::new(&cfg.registry_url).with_unknown_schema_grace(cfg.unknown_schema_grace),
        );
        let topics = cfg.topics.clone();
        let mut b = StreamsApp::builder(&self.application_id(cfg))
            .brokers(&cfg.brokers)
            .processor_name(self.name())
            .state_dir(&cfg.state_dir)
            .commit_interval(cfg.commit_interval)
            .fetch_wait(cfg.fetch_wait)
            .linger(cfg.linger)
            .idempotent_producer(cfg.idempotent_producer);
        if let Some(r) = metrics {
            b = b.metrics_registry(r);
        }
        for t in &self.inputs(&topics) {
            b = b.input(t);
        }
        for s in self.stores() {
            b = match self.0.retention(s, cfg) {
                Some(r) => b.store_with_retention(s, r),
                None => b.store(s),
            };
        }
        let factory = self
            .0
            .build(Build {
                cfg,
                codec,
                topics,
                metrics,
            })
            .await?;
        let app = b.processor(factory).build()?;
        match kill {
            None => app.run(shutdown).await?,
            #[cfg(feature = "testing")]
            Some((kill, point)) => app.run_with_kill_switch(shutdown, kill, point).await?,
            #[cfg(not(feature = "testing"))]
            Some(never) => match never {},
        }
        Ok(())
    }
}
