//! The application: the builder and `run`, which creates the topics the app needs and runs the
//! engine (`engine.rs`) on a blocking thread until shutdown.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;
use tributary_runtime::kafka::{
    client_config, close_consumer, ensure_topic, partition_count, TopicSpec,
};

use crate::clock::{Clock, SystemClock};
use crate::config::{Guarantee, StreamsConfig};
use crate::dlq::dlq_topic;
use crate::engine::{consumer_config, lock, run_loop, Engine, KillPoint, Rebalancer};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::processor::{Processor, TIMERS_STORE};

/// Makes the processor instance of a task.
pub type ProcessorFactory = Arc<dyn Fn(i32) -> Box<dyn Processor> + Send + Sync>;

/// Builds a [`StreamsApp`].
pub struct StreamsBuilder {
    config: StreamsConfig,
    factory: Option<ProcessorFactory>,
    registry: Option<Registry>,
    clock: Option<Arc<dyn Clock>>,
}

impl StreamsBuilder {
    pub fn brokers(mut self, brokers: &str) -> Self {
        self.config.brokers = brokers.to_string();
        self
    }
    pub fn input(mut self, topic: &str) -> Self {
        self.config.inputs.push(topic.to_string());
        self
    }
    pub fn store(mut self, name: &str) -> Self {
        self.config.stores.push(name.to_string());
        self
    }
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = dir.into();
        self
    }
    pub fn processor_name(mut self, name: &str) -> Self {
        self.config.processor_name = name.to_string();
        self
    }
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.config.commit_interval = d;
        self
    }
    pub fn min_commit_interval(mut self, d: Duration) -> Self {
        self.config.min_commit_interval = d;
        self
    }
    pub fn max_batch(mut self, n: usize) -> Self {
        self.config.max_batch = n.max(1);
        self
    }
    pub fn session_timeout(mut self, d: Duration) -> Self {
        self.config.session_timeout = d;
        self
    }
    pub fn max_retry_backoff(mut self, d: Duration) -> Self {
        self.config.max_retry_backoff = d;
        self
    }
    pub fn guarantee(mut self, g: Guarantee) -> Self {
        self.config.guarantee = g;
        self
    }
    pub fn create_topics(mut self, create: bool) -> Self {
        self.config.create_topics = create;
        self
    }
    /// A store whose entries are deleted once `retention` has passed since their last write.
    pub fn store_with_retention(mut self, name: &str, retention: Duration) -> Self {
        self.config.stores.push(name.to_string());
        self.config.retention.insert(name.to_string(), retention);
        self
    }
    pub fn fetch_wait(mut self, d: Duration) -> Self {
        self.config.fetch_wait = d;
        self
    }
    pub fn linger(mut self, d: Duration) -> Self {
        self.config.linger = d;
        self
    }
    pub fn max_poll_interval(mut self, d: Duration) -> Self {
        self.config.max_poll_interval = d;
        self
    }
    /// Dead-letter a record that keeps failing retriably for longer than `d`.
    pub fn retry_timeout(mut self, d: Option<Duration>) -> Self {
        self.config.retry_timeout = d;
        self
    }
    pub fn idempotent_producer(mut self, on: bool) -> Self {
        self.config.idempotent_producer = on;
        self
    }
    /// The wall clock timers, retention and `Context::now_ms` follow (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
    /// The registry the app's metrics go to; a private one when not given.
    pub fn metrics_registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }
    /// `make(task)` creates the processor of one task.
    pub fn processor<P, F>(mut self, make: F) -> Self
    where
        P: Processor + 'static,
        F: Fn(i32) -> P + Send + Sync + 'static,
    {
        self.factory = Some(Arc::new(move |task| {
            Box::new(make(task)) as Box<dyn Processor>
        }));
        self
    }

    pub fn build(self) -> Result<StreamsApp> {
        let c = &self.config;
        if c.inputs.is_empty() {
            return Err(Error::Config("no input topic".into()));
        }
        if c.stores
            .iter()
            .any(|s| s.is_empty() || s == TIMERS_STORE || s.contains('/'))
        {
            return Err(Error::Config(format!(
                "store names must be non-empty, without `/`, and not `{TIMERS_STORE}`"
            )));
        }
        let factory = self
            .factory
            .ok_or_else(|| Error::Config("no processor".into()))?;
        let registry = self.registry.unwrap_or_default();
        let metrics = Metrics::register(&registry)?;
        Ok(StreamsApp {
            config: self.config,
            factory,
            metrics,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
        })
    }
}

/// A streams application instance, ready to run.
pub struct StreamsApp {
    config: StreamsConfig,
    factory: ProcessorFactory,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
}

impl StreamsApp {
    pub fn builder(application_id: &str) -> StreamsBuilder {
        StreamsBuilder {
            config: StreamsConfig::new(application_id),
            factory: None,
            registry: None,
            clock: None,
        }
    }

    pub fn config(&self) -> &StreamsConfig {
        &self.config
    }

    /// Runs until `shutdown` fires, then commits, flushes the stores and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        self.start(shutdown, None).await
    }

    /// Like [`run`](Self::run), plus `kill`, which stops the engine the way `kill -9` would at
    /// `point` of the next commit once the token fires: nothing after it is done, nothing is
    /// flushed. For the recovery tests, which run instances in-process: only with the `testing`
    /// feature, so no deployed binary can carry it.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub async fn run_with_kill_switch(
        self,
        shutdown: CancellationToken,
        kill: CancellationToken,
        point: KillPoint,
    ) -> Result<()> {
        self.start(shutdown, Some((kill, point))).await
    }

    async fn start(
        self,
        shutdown: CancellationToken,
        kill: Option<(CancellationToken, KillPoint)>,
    ) -> Result<()> {
        let partitions = {
            let cfg = self.config.clone();
            tokio::task::spawn_blocking(move || input_partitions(&cfg))
                .await
                .map_err(|e| Error::Config(format!("metadata thread: {e}")))??
        };
        if self.config.create_topics {
            let compacted = TopicSpec {
                partitions,
                compacted: true,
            };
            let mut topics: Vec<String> = self
                .config
                .all_stores()
                .map(|s| self.config.changelog_topic(s))
                .collect();
            topics.push(self.config.commits_topic());
            for topic in topics {
                ensure_topic(&self.config.brokers, &topic, compacted).await?;
            }
            for input in &self.config.inputs {
                let spec = TopicSpec {
                    partitions: 1,
                    compacted: false,
                };
                ensure_topic(&self.config.brokers, &dlq_topic(input), spec).await?;
            }
        }
        tokio::task::spawn_blocking(move || self.run_blocking(shutdown, kill))
            .await
            .map_err(|e| Error::Config(format!("engine thread: {e}")))?
    }

    fn run_blocking(
        self,
        shutdown: CancellationToken,
        kill: Option<(CancellationToken, KillPoint)>,
    ) -> Result<()> {
        let cfg = Arc::new(self.config);
        let engine = Arc::new(Mutex::new(Engine::new(
            cfg.clone(),
            self.factory,
            self.metrics,
            self.clock,
            kill,
        )?));
        let consumer: BaseConsumer<Rebalancer> =
            consumer_config(&cfg).create_with_context(Rebalancer {
                engine: engine.clone(),
            })?;
        let inputs: Vec<&str> = cfg.inputs.iter().map(String::as_str).collect();
        consumer.subscribe(&inputs)?;

        let result = run_loop(&cfg, &engine, &consumer, &shutdown);
        let killed = lock(&engine).aborted;
        if !killed && result.is_ok() {
            // Whatever the loop left pending is committed while the partitions are still ours.
            let mut e = lock(&engine);
            e.sync_offsets = true;
            if let Err(e) = e.commit(&consumer) {
                tracing::warn!(error = %e, "final commit failed; the records will be read again");
            }
        }
        // Leaving the group runs the revoke callback (which commits and flushes unless killed)
        // and keeps the consumer's drop from stalling in rd_kafka_destroy.
        close_consumer(&consumer, cfg.close_timeout);
        drop(consumer);
        let mut engine = lock(&engine);
        let flush = !engine.aborted;
        engine.close_all(flush);
        engine.restorer_close(cfg.close_timeout);
        result
    }
}

fn input_partitions(cfg: &StreamsConfig) -> Result<i32> {
    let probe: BaseConsumer = client_config(&cfg.brokers).create()?;
    let mut max = 0;
    for topic in &cfg.inputs {
        let n = partition_count(&probe, topic, Duration::from_secs(10))?;
        if n == 0 {
            return Err(Error::Config(format!(
                "input topic `{topic}` does not exist"
            )));
        }
        max = max.max(n);
    }
    Ok(max)
}
