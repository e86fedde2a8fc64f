//! The application: configuration, the builder, and the engine loop.
//!
//! One app instance is one consumer-group member running one engine thread. The loop:
//!
//! 1. poll records for up to `commit_interval` (or `max_batch` records), handing each to its
//!    task at once: record in, writes staged, outputs buffered;
//! 2. fire due timers;
//! 3. commit: produce outputs, dead letters and changelog writes, wait until the broker has
//!    acknowledged every one, write the stores locally with their new checkpoints, then commit the
//!    input offsets. An input offset is therefore committed only after all of its effects are
//!    durable (at-least-once); redelivered records are made harmless by the stores' replay guard.
//!
//! Rebalances arrive as callbacks inside `poll`, on the same thread, so they see the engine
//! between records: a revoke commits what is pending and flushes the stores before the
//! partitions go; an assign creates the missing tasks and restores their stores before the
//! first record of them is processed. The engine sits behind a mutex only because the consumer's
//! context must be `Sync`; there is never contention.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::join_all;
use prometheus::Registry;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use redb::Durability;
use tokio_util::sync::CancellationToken;
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::{client_config, close_consumer, ensure_topic, TopicSpec};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::processor::{Context, Processor, TimeKind, Timer, TIMERS_STORE};
use crate::record::{Output, Position, Record};
use crate::store::KvStore;

/// Settings of one streams application. Instances with the same `application_id` form one
/// consumer group and share the changelog topics.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// Consumer group id and prefix of the changelog topics (`<app>-<store>-changelog`).
    pub application_id: String,
    /// Label of the metrics; defaults to the application id.
    pub processor_name: String,
    pub brokers: String,
    /// Input topics; co-partitioned ones (same partition count, same keying) share tasks.
    pub inputs: Vec<String>,
    /// Names of the key-value stores every task gets.
    pub stores: Vec<String>,
    /// Root of the local stores: `<state_dir>/<app>/task-<partition>/<store>.redb`.
    pub state_dir: PathBuf,
    /// Longest time between two commits while records flow.
    pub commit_interval: Duration,
    /// Most records per commit.
    pub max_batch: usize,
    /// How long the group waits for a silent member before moving its tasks.
    pub session_timeout: Duration,
    /// Bound on closing the consumer at shutdown.
    pub close_timeout: Duration,
    /// Longest back-off between retries of a record that failed with a retriable error.
    pub max_retry_backoff: Duration,
    pub guarantee: Guarantee,
    /// Create changelog and dead-letter topics at start. Off for brokers without CreateTopics
    /// (librdkafka's mock cluster), where the caller creates them.
    pub create_topics: bool,
}

/// The processing guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Outputs and changelog writes acknowledged before input offsets are committed; redelivered
    /// records are guarded per key by the stores. The only mode the local broker supports.
    AtLeastOnce,
    /// Outputs, changelog writes and input offsets in one Kafka transaction per commit; a failed
    /// transaction is aborted and its input read again. Needs a broker with transactions.
    ExactlyOnce,
}

impl StreamsConfig {
    pub fn new(application_id: &str) -> StreamsConfig {
        StreamsConfig {
            application_id: application_id.to_string(),
            processor_name: application_id.to_string(),
            brokers: KAFKA_BROKERS.get(),
            inputs: Vec::new(),
            stores: Vec::new(),
            state_dir: std::env::temp_dir().join("tributary-streams"),
            commit_interval: Duration::from_millis(100),
            max_batch: 2000,
            session_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            max_retry_backoff: Duration::from_secs(5),
            guarantee: Guarantee::AtLeastOnce,
            create_topics: true,
        }
    }

    /// The compacted topic that keeps `store`'s writes.
    pub fn changelog_topic(&self, store: &str) -> String {
        format!("{}-{store}-changelog", self.application_id)
    }

    /// The local directory of one task's stores.
    pub fn task_dir(&self, task: i32) -> PathBuf {
        self.state_dir
            .join(&self.application_id)
            .join(format!("task-{task}"))
    }

    fn all_stores(&self) -> impl Iterator<Item = &str> {
        self.stores
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(TIMERS_STORE))
    }
}

/// Makes the processor instance of a task.
pub type ProcessorFactory = Arc<dyn Fn(i32) -> Box<dyn Processor> + Send + Sync>;

/// Builds a [`StreamsApp`].
pub struct StreamsBuilder {
    config: StreamsConfig,
    factory: Option<ProcessorFactory>,
    registry: Option<Registry>,
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
        })
    }
}

/// A streams application instance, ready to run.
pub struct StreamsApp {
    config: StreamsConfig,
    factory: ProcessorFactory,
    metrics: Metrics,
}

impl StreamsApp {
    pub fn builder(application_id: &str) -> StreamsBuilder {
        StreamsBuilder {
            config: StreamsConfig::new(application_id),
            factory: None,
            registry: None,
        }
    }

    pub fn config(&self) -> &StreamsConfig {
        &self.config
    }

    /// Runs until `shutdown` fires, then commits, flushes the stores and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        self.run_with_kill_switch(shutdown, CancellationToken::new())
            .await
    }

    /// Like [`run`](Self::run), plus `kill`, which stops the engine the way `kill -9` would at
    /// its worst moment: after outputs and changelog writes were acknowledged but before the
    /// local stores are written or input offsets committed. Nothing is flushed. Used by the
    /// recovery tests, which run instances in-process.
    pub async fn run_with_kill_switch(
        self,
        shutdown: CancellationToken,
        kill: CancellationToken,
    ) -> Result<()> {
        let partitions = {
            let cfg = self.config.clone();
            tokio::task::spawn_blocking(move || input_partitions(&cfg))
                .await
                .map_err(|e| Error::Config(format!("metadata thread: {e}")))??
        };
        let create = if self.config.create_topics {
            self.config.all_stores().collect()
        } else {
            Vec::new()
        };
        for store in create {
            let spec = TopicSpec {
                partitions,
                compacted: true,
            };
            ensure_topic(
                &self.config.brokers,
                &self.config.changelog_topic(store),
                spec,
            )
            .await?;
        }
        let dlqs = if self.config.create_topics {
            self.config.inputs.clone()
        } else {
            Vec::new()
        };
        for input in &dlqs {
            let spec = TopicSpec {
                partitions: 1,
                compacted: false,
            };
            ensure_topic(&self.config.brokers, &dlq_topic(input), spec).await?;
        }
        tokio::task::spawn_blocking(move || self.run_blocking(shutdown, kill))
            .await
            .map_err(|e| Error::Config(format!("engine thread: {e}")))?
    }

    fn run_blocking(self, shutdown: CancellationToken, kill: CancellationToken) -> Result<()> {
        let cfg = Arc::new(self.config);
        let engine = Arc::new(Mutex::new(Engine::new(
            cfg.clone(),
            self.factory,
            self.metrics,
        )?));
        let consumer: BaseConsumer<Rebalancer> =
            consumer_config(&cfg).create_with_context(Rebalancer {
                engine: engine.clone(),
            })?;
        let inputs: Vec<&str> = cfg.inputs.iter().map(String::as_str).collect();
        consumer.subscribe(&inputs)?;

        let result = run_loop(&cfg, &engine, &consumer, &shutdown, &kill);
        let killed = kill.is_cancelled();
        if killed {
            lock(&engine).aborted = true;
        } else if result.is_ok() {
            // Whatever the loop left pending is committed while the partitions are still ours.
            if let Err(e) = lock(&engine).commit(&consumer) {
                tracing::warn!(error = %e, "final commit failed; the records will be read again");
            }
        }
        // Leaving the group runs the revoke callback (which flushes unless killed) and keeps
        // the consumer's drop from stalling in rd_kafka_destroy.
        close_consumer(&consumer, cfg.close_timeout);
        drop(consumer);
        let mut engine = lock(&engine);
        let flush = !engine.aborted;
        engine.close_all(flush);
        engine.restorer_close(cfg.close_timeout);
        result
    }
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A panic inside a processor poisons the mutex; the engine state itself is still coherent
    // (nothing half-committed is kept), so carry on with it.
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

fn run_loop(
    cfg: &StreamsConfig,
    engine: &Mutex<Engine>,
    consumer: &BaseConsumer<Rebalancer>,
    shutdown: &CancellationToken,
    kill: &CancellationToken,
) -> Result<()> {
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let started = Instant::now();
        let mut n = 0;
        while n < cfg.max_batch && started.elapsed() < cfg.commit_interval {
            if shutdown.is_cancelled() || kill.is_cancelled() {
                break;
            }
            let wait = cfg
                .commit_interval
                .saturating_sub(started.elapsed())
                .min(Duration::from_millis(100));
            match consumer.poll(wait) {
                None => {}
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                Some(Ok(m)) => {
                    let record = Record::from_message(&m);
                    drop(m);
                    if !lock(engine).process_record(record, shutdown, kill) {
                        break;
                    }
                    n += 1;
                }
            }
            if let Some(e) = lock(engine).fatal.take() {
                return Err(e);
            }
        }
        let mut e = lock(engine);
        e.punctuate();
        if kill.is_cancelled() {
            // Worst moment for a crash: effects in Kafka, nothing local, offsets not committed.
            let _ = e.produce_all();
            return Ok(());
        }
        e.commit(consumer)?;
    }
}

pub(crate) fn dlq_topic(input: &str) -> String {
    format!("{input}.dlq")
}

fn consumer_config(cfg: &StreamsConfig) -> ClientConfig {
    let mut c = client_config(&cfg.brokers);
    c.set("group.id", &cfg.application_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Range keeps partition N of every co-partitioned input on the same member.
        .set("partition.assignment.strategy", "range")
        // Inputs may be another app's transactional outputs: never read aborted ones.
        .set("isolation.level", "read_committed")
        .set(
            "session.timeout.ms",
            cfg.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (cfg.session_timeout.as_millis() / 4).max(100).to_string(),
        );
    c
}

fn input_partitions(cfg: &StreamsConfig) -> Result<i32> {
    let probe: BaseConsumer = client_config(&cfg.brokers).create()?;
    let mut max = 0;
    for topic in &cfg.inputs {
        let md = probe.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0);
        if n == 0 {
            return Err(Error::Config(format!(
                "input topic `{topic}` does not exist"
            )));
        }
        max = max.max(n);
    }
    Ok(max)
}

/// The consumer context: forwards rebalances to the engine.
struct Rebalancer {
    engine: Arc<Mutex<Engine>>,
}

impl ClientContext for Rebalancer {}

impl ConsumerContext for Rebalancer {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut e = lock(&self.engine);
                let parts = task_ids(tpl);
                tracing::info!(app = %e.cfg.application_id, tasks = ?parts, "partitions revoked");
                e.on_revoke(consumer);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut e = lock(&self.engine);
            let parts = task_ids(tpl);
            tracing::info!(app = %e.cfg.application_id, tasks = ?parts, "partitions assigned");
            if let Err(err) = e.on_assign(parts) {
                tracing::error!(error = %err, "creating tasks failed");
                e.fatal = Some(err);
            }
        }
    }
}

fn task_ids(tpl: &TopicPartitionList) -> BTreeSet<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// One task: the processor instance and stores of one input partition number.
struct Task {
    id: i32,
    processor: Box<dyn Processor>,
    stores: HashMap<String, KvStore>,
    /// Outputs and dead letters of the batch, produced at commit.
    outputs: Vec<Output>,
    dead_letters: u64,
    /// Per input topic: (first offset of the batch, next offset to commit).
    consumed: BTreeMap<String, (i64, i64)>,
    stream_time: i64,
}

impl Task {
    fn has_pending(&self) -> bool {
        !self.outputs.is_empty()
            || !self.consumed.is_empty()
            || self.stores.values().any(|s| !s.batch().is_empty())
    }

    fn keep_record(&mut self) {
        self.stores.values_mut().for_each(KvStore::keep_record);
    }

    fn drop_record(&mut self) {
        self.stores.values_mut().for_each(KvStore::drop_record);
    }

    /// Runs `f` with a context whose effects are kept only if it succeeds.
    fn attempt(
        &mut self,
        position: Option<Position>,
        f: impl FnOnce(&mut dyn Processor, &mut Context<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut staged = Vec::new();
        let res = {
            let mut ctx = Context {
                task: self.id,
                stores: &mut self.stores,
                outputs: &mut staged,
                position,
                stream_time: self.stream_time,
            };
            f(self.processor.as_mut(), &mut ctx)
        };
        match res {
            Ok(()) => {
                self.keep_record();
                self.outputs.extend(staged);
                Ok(())
            }
            Err(e) => {
                self.drop_record();
                Err(e)
            }
        }
    }
}

struct Engine {
    cfg: Arc<StreamsConfig>,
    factory: ProcessorFactory,
    producer: FutureProducer,
    restorer: Option<BaseConsumer>,
    metrics: Metrics,
    tasks: BTreeMap<i32, Task>,
    /// Set when the app is being killed: nothing may be flushed or committed any more.
    aborted: bool,
    /// Set after a fatal transaction error: the producer is unusable, so no commit is tried.
    producer_failed: bool,
    /// An error raised inside a rebalance callback, picked up by the loop.
    fatal: Option<Error>,
    batch_in: u64,
    batch_time: Duration,
    lag_updated: Instant,
}

const LAG_INTERVAL: Duration = Duration::from_secs(5);

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Engine {
    fn new(cfg: Arc<StreamsConfig>, factory: ProcessorFactory, metrics: Metrics) -> Result<Engine> {
        let mut pcfg = client_config(&cfg.brokers);
        if cfg.guarantee == Guarantee::ExactlyOnce {
            // Zombie instances are fenced through the consumer group generation
            // (send_offsets_to_transaction with group metadata), so the id only has to be unique.
            pcfg.set(
                "transactional.id",
                format!("{}-{}", cfg.application_id, uuid::Uuid::new_v4().simple()),
            )
            .set("transaction.timeout.ms", "30000");
        }
        let producer: FutureProducer = pcfg
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "500000")
            // Java's partitioner, so outputs land where other clients would put the same key.
            .set("partitioner", "murmur2_random")
            // Keeps each changelog partition in write order across retries, which the replay
            // guard relies on.
            .set("max.in.flight.requests.per.connection", "1")
            .create()?;
        if cfg.guarantee == Guarantee::ExactlyOnce {
            producer.init_transactions(Duration::from_secs(30))?;
        }
        let restorer: BaseConsumer = client_config(&cfg.brokers)
            .set("group.id", format!("{}-restore", cfg.application_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()?;
        Ok(Engine {
            cfg,
            factory,
            producer,
            restorer: Some(restorer),
            metrics,
            tasks: BTreeMap::new(),
            aborted: false,
            producer_failed: false,
            fatal: None,
            batch_in: 0,
            batch_time: Duration::ZERO,
            lag_updated: Instant::now()
                .checked_sub(LAG_INTERVAL)
                .unwrap_or_else(Instant::now),
        })
    }

    /// Hands one record to its task, retrying retriable failures and dead-lettering the rest.
    /// Returns false when shutdown interrupted the retries (the record stays uncommitted).
    fn process_record(
        &mut self,
        record: Record,
        shutdown: &CancellationToken,
        kill: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
        let max_backoff = self.cfg.max_retry_backoff;
        let Some(task) = self.tasks.get_mut(&record.partition) else {
            // librdkafka can still hand out a record fetched before its partition was revoked.
            return true;
        };
        if let Some(ts) = record.timestamp {
            task.stream_time = task.stream_time.max(ts);
        }
        let position = Position {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            let input = record.clone();
            match task.attempt(Some(position.clone()), |p, ctx| p.process(ctx, input)) {
                Ok(()) => break,
                Err(e) if e.retriable() => {
                    tracing::warn!(record = %record.id(), error = %e, ?backoff, "retrying record");
                    if shutdown.is_cancelled() || kill.is_cancelled() {
                        return false;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(max_backoff);
                }
                Err(e) => {
                    tracing::warn!(record = %record.id(), error = %e, "record sent to the dead-letter topic");
                    task.outputs.push(dead_letter(&record, &e));
                    task.dead_letters += 1;
                    break;
                }
            }
        }
        let entry = task
            .consumed
            .entry(record.topic.clone())
            .or_insert((record.offset, record.offset + 1));
        entry.1 = record.offset + 1;
        self.batch_in += 1;
        self.batch_time += started.elapsed();
        true
    }

    /// Fires the timers that are due, by wall clock or by each task's stream time.
    fn punctuate(&mut self) {
        let now = wall_ms();
        for task in self.tasks.values_mut() {
            let timers = match task.stores.get(TIMERS_STORE).map(KvStore::scan) {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    tracing::warn!(task = task.id, error = %e, "reading timers failed");
                    continue;
                }
                None => continue,
            };
            let mut due: Vec<Timer> = timers
                .iter()
                .filter_map(|(k, v)| Timer::decode(k, v))
                .filter(|t| match t.kind {
                    TimeKind::WallClock => t.due_ms <= now,
                    TimeKind::StreamTime => t.due_ms <= task.stream_time,
                })
                .collect();
            due.sort_by_key(|t| t.due_ms);
            for timer in due {
                let res = task.attempt(None, |p, ctx| {
                    // Removed before the call so that the processor can schedule it again.
                    ctx.cancel(&timer.name)?;
                    p.punctuate(ctx, &timer)
                });
                match res {
                    Ok(()) => {}
                    Err(e) if e.retriable() => {
                        tracing::warn!(task = task.id, timer = %timer.name, error = %e, "timer will fire again");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(task = task.id, timer = %timer.name, error = %e, "timer failed; dropped");
                        let _ = task.attempt(None, |_, ctx| ctx.cancel(&timer.name));
                    }
                }
            }
        }
    }

    /// Produces every pending output and changelog write and waits for the acknowledgements.
    /// Returns, per (task, store), the highest changelog offset written.
    fn produce_all(&mut self) -> Result<HashMap<(i32, String), i64>> {
        let mut outputs: Vec<DeliveryFuture> = Vec::new();
        let mut changelog: Vec<(i32, String, DeliveryFuture)> = Vec::new();
        for task in self.tasks.values() {
            for o in &task.outputs {
                let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
                for (k, v) in &o.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                let mut rec: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&o.topic).headers(headers);
                if let Some(k) = &o.key {
                    rec = rec.key(k.as_slice());
                }
                if let Some(v) = &o.value {
                    rec = rec.payload(v.as_slice());
                }
                outputs.push(send(&self.producer, rec)?);
            }
            for store in task.stores.values() {
                for (k, v) in store.batch() {
                    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&store.changelog)
                        .partition(task.id)
                        .key(k.as_slice());
                    if let Some(v) = v {
                        rec = rec.payload(v.as_slice());
                    }
                    changelog.push((task.id, store.name.clone(), send(&self.producer, rec)?));
                }
            }
        }
        let out_results = futures::executor::block_on(join_all(outputs));
        for r in out_results {
            delivered(r)?;
        }
        let (keys, futs): (Vec<_>, Vec<_>) =
            changelog.into_iter().map(|(t, s, f)| ((t, s), f)).unzip();
        let results = futures::executor::block_on(join_all(futs));
        let mut offsets: HashMap<(i32, String), i64> = HashMap::new();
        for (key, r) in keys.into_iter().zip(results) {
            let off = delivered(r)?;
            let e = offsets.entry(key).or_insert(off);
            *e = (*e).max(off);
        }
        Ok(offsets)
    }

    /// Commits the batch: at-least-once or in a transaction, as configured.
    fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<()> {
        if self.aborted || self.producer_failed || !self.tasks.values().any(Task::has_pending) {
            return Ok(());
        }
        match self.cfg.guarantee {
            Guarantee::AtLeastOnce => self.commit_at_least_once(consumer),
            Guarantee::ExactlyOnce => self.commit_transaction(consumer),
        }
    }

    /// Outputs and changelog acknowledged, then local stores, then input offsets.
    fn commit_at_least_once<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<()> {
        let offsets = match self.produce_all() {
            Ok(o) => o,
            Err(e) if e.retriable() => {
                tracing::warn!(error = %e, "producing the batch failed; reading it again");
                self.count_commit("error");
                self.rewind(consumer);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let tpl = self.pending_offsets()?;
        self.finish_batch(&offsets)?;
        if tpl.count() == 0 {
            return Ok(());
        }
        let outcome = consumer
            .store_offsets(&tpl)
            .and_then(|()| consumer.commit(&tpl, CommitMode::Sync));
        match outcome {
            Ok(()) => self.count_commit("ok"),
            Err(e) => {
                // The effects are durable and replays are guarded, so a failed commit only
                // means some records will be read again.
                tracing::warn!(error = %e, "offset commit failed");
                self.count_commit("error");
            }
        }
        self.update_lag(&tpl);
        Ok(())
    }

    /// One transaction: begin, produce outputs and changelog writes, add the input offsets,
    /// commit. Only then are the local stores written, so an aborted transaction leaves nothing
    /// behind but a rewind of the inputs.
    fn commit_transaction<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<()> {
        let tpl = self.pending_offsets()?;
        let txn_timeout = Duration::from_secs(30);
        let attempt = (|| -> Result<HashMap<(i32, String), i64>> {
            self.producer.begin_transaction()?;
            let offsets = self.produce_all()?;
            if tpl.count() > 0 {
                let group = consumer
                    .group_metadata()
                    .ok_or_else(|| Error::Config("exactly-once needs a consumer group".into()))?;
                self.producer
                    .send_offsets_to_transaction(&tpl, &group, txn_timeout)?;
            }
            self.producer.commit_transaction(txn_timeout)?;
            Ok(offsets)
        })();
        match attempt {
            Ok(offsets) => {
                self.finish_batch(&offsets)?;
                self.count_commit("ok");
                self.update_lag(&tpl);
                Ok(())
            }
            Err(e) => {
                self.count_commit("aborted");
                if txn_fatal(&e) {
                    tracing::error!(error = %e, "transaction failed fatally (fenced?); stopping");
                    self.producer_failed = true;
                    return Err(e);
                }
                tracing::warn!(error = %e, "transaction failed; aborting and reading the batch again");
                // A failed batch can leave records queued or in flight (a delivery failed while
                // others were still retrying); the abort would wait for them, so drop them first:
                // the transaction is being thrown away anyway.
                self.producer
                    .purge(PurgeConfig::default().queue().inflight());
                let mut tries = 0;
                while let Err(abort) = self.producer.abort_transaction(txn_timeout) {
                    tries += 1;
                    let retriable =
                        matches!(&abort, KafkaError::Transaction(t) if t.is_retriable());
                    if !retriable || tries >= 3 {
                        tracing::error!(error = %abort, "abort failed; stopping");
                        self.producer_failed = true;
                        return Err(abort.into());
                    }
                    tracing::warn!(error = %abort, "abort failed; trying again");
                }
                self.rewind(consumer);
                Ok(())
            }
        }
    }

    /// The next offset of every input partition processed in this batch.
    fn pending_offsets(&self) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for task in self.tasks.values() {
            for (topic, (_, next)) in &task.consumed {
                tpl.add_partition_offset(topic, task.id, Offset::Offset(*next))?;
            }
        }
        Ok(tpl)
    }

    /// The batch is durable in Kafka: write the stores locally and count it.
    fn finish_batch(&mut self, changelog_offsets: &HashMap<(i32, String), i64>) -> Result<()> {
        let mut out = 0u64;
        let mut dlq = 0u64;
        for task in self.tasks.values_mut() {
            out += task.outputs.len() as u64 - task.dead_letters;
            dlq += task.dead_letters;
            task.outputs.clear();
            task.dead_letters = 0;
            task.consumed.clear();
            for store in task.stores.values_mut() {
                let off = changelog_offsets
                    .get(&(task.id, store.name.clone()))
                    .copied();
                store.write_batch(off)?;
            }
        }
        let labels = [
            self.cfg.application_id.as_str(),
            self.cfg.processor_name.as_str(),
        ];
        let m = &self.metrics;
        m.records_in
            .with_label_values(&labels)
            .inc_by(self.batch_in);
        m.records_out.with_label_values(&labels).inc_by(out);
        m.dlq_records.with_label_values(&labels).inc_by(dlq);
        if self.batch_in > 0 {
            m.process_duration
                .with_label_values(&labels)
                .observe(self.batch_time.as_secs_f64());
        }
        self.batch_in = 0;
        self.batch_time = Duration::ZERO;
        Ok(())
    }

    fn count_commit(&self, outcome: &str) {
        self.metrics
            .commits
            .with_label_values(&[&self.cfg.application_id, outcome])
            .inc();
    }

    fn update_lag(&mut self, tpl: &TopicPartitionList) {
        // Lag needs a round trip per partition, so it is refreshed every few seconds only.
        if self.lag_updated.elapsed() < LAG_INTERVAL {
            return;
        }
        self.lag_updated = Instant::now();
        let Some(r) = &self.restorer else { return };
        for e in tpl.elements() {
            if let (Offset::Offset(next), Ok((_, high))) = (
                e.offset(),
                r.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1)),
            ) {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[
                        &self.cfg.application_id,
                        e.topic(),
                        &e.partition().to_string(),
                    ])
                    .set((high - next).max(0));
            }
        }
    }

    /// Forgets the uncommitted batch and seeks back to its first record.
    fn rewind<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        for task in self.tasks.values_mut() {
            task.outputs.clear();
            task.dead_letters = 0;
            task.stores.values_mut().for_each(KvStore::drop_batch);
            for (topic, (first, _)) in std::mem::take(&mut task.consumed) {
                if let Err(e) = consumer.seek(
                    &topic,
                    task.id,
                    Offset::Offset(first),
                    Duration::from_secs(5),
                ) {
                    tracing::warn!(topic, partition = task.id, error = %e, "seek failed");
                }
            }
        }
        self.batch_in = 0;
        self.batch_time = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(500));
    }

    fn on_revoke<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.aborted {
            return;
        }
        if let Err(e) = self.commit(consumer) {
            tracing::error!(error = %e, "commit before revoke failed");
            self.fatal = Some(e);
        }
        // Tasks stay open until the next assignment says which ones leave: an eager rebalance
        // revokes everything and usually hands most of it straight back.
        for task in self.tasks.values() {
            for store in task.stores.values() {
                if let Err(e) = store.flush() {
                    tracing::warn!(task = task.id, store = %store.name, error = %e, "flush failed");
                }
            }
        }
    }

    fn on_assign(&mut self, assigned: BTreeSet<i32>) -> Result<()> {
        let gone: Vec<i32> = self
            .tasks
            .keys()
            .filter(|id| !assigned.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(task) = self.tasks.remove(&id) {
                close_task(task, !self.aborted);
            }
        }
        for id in assigned {
            if !self.tasks.contains_key(&id) {
                let task = self.open_task(id)?;
                self.tasks.insert(id, task);
            }
        }
        Ok(())
    }

    fn open_task(&mut self, id: i32) -> Result<Task> {
        let cfg = self.cfg.clone();
        let dir = cfg.task_dir(id);
        let mut stores = HashMap::new();
        for name in cfg.all_stores() {
            let store = KvStore::open(&dir, name, &cfg.changelog_topic(name))?;
            self.restore(&store, id)?;
            stores.insert(name.to_string(), store);
        }
        let mut task = Task {
            id,
            processor: (self.factory)(id),
            stores,
            outputs: Vec::new(),
            dead_letters: 0,
            consumed: BTreeMap::new(),
            stream_time: i64::MIN,
        };
        task.attempt(None, |p, ctx| p.init(ctx))?;
        Ok(task)
    }

    /// Brings `store` up to the end of its changelog partition: from its checkpoint when the
    /// local copy has one, from the beginning otherwise.
    fn restore(&mut self, store: &KvStore, partition: i32) -> Result<()> {
        let Some(restorer) = &self.restorer else {
            return Ok(());
        };
        let topic = store.changelog.as_str();
        let (low, high) = restorer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        let checkpoint = store.checkpoint()?;
        let start = checkpoint.map(|c| c + 1).unwrap_or(low).max(low);
        if start >= high {
            return Ok(());
        }
        tracing::info!(store = %store.name, partition, start, high, local = ?store.path(), "restoring");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
        restorer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut chunk: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut last = start - 1;
        let mut total = 0u64;
        let result = loop {
            if last >= high - 1 {
                break Ok(());
            }
            if Instant::now() > deadline {
                break Err(Error::store(
                    &store.name,
                    format!("restore of {topic}/{partition} stalled at offset {last} of {high}"),
                ));
            }
            match restorer.poll(Duration::from_millis(200)) {
                None => tracing::debug!(topic, partition, last, "restore poll: nothing"),
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break Ok(()),
                Some(Err(e)) => tracing::warn!(error = %e, "restore consumer error"),
                Some(Ok(m)) => {
                    tracing::debug!(
                        topic,
                        partition = m.partition(),
                        offset = m.offset(),
                        "restore record"
                    );
                    if let Some(v) = m.payload() {
                        if crate::store::decode_entry(v).is_none() {
                            break Err(Error::CorruptChangelog {
                                topic: topic.to_string(),
                                partition,
                                offset: m.offset(),
                                message: "value is not a store entry".into(),
                            });
                        }
                    }
                    let Some(k) = m.key() else { continue };
                    chunk.push((k.to_vec(), m.payload().map(<[u8]>::to_vec)));
                    last = m.offset();
                    total += 1;
                    if chunk.len() >= 5000 {
                        let entries = chunk.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
                        store.apply(entries, Some(last), Durability::Eventual)?;
                        chunk.clear();
                    }
                }
            }
        };
        let entries = chunk.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
        store.apply(entries, Some(last.max(start - 1)), Durability::Immediate)?;
        let _ = restorer.unassign();
        self.metrics
            .restore_records
            .with_label_values(&[&self.cfg.application_id, &store.name])
            .inc_by(total);
        result
    }

    fn close_all(&mut self, flush: bool) {
        for (_, task) in std::mem::take(&mut self.tasks) {
            close_task(task, flush);
        }
    }

    fn restorer_close(&mut self, timeout: Duration) {
        if let Some(r) = self.restorer.take() {
            close_consumer(&r, timeout);
        }
    }
}

/// Whether a transactional error leaves the producer unusable (fenced, or fatal by librdkafka).
fn txn_fatal(e: &Error) -> bool {
    match e {
        Error::Kafka(k) => match k {
            KafkaError::Transaction(t) => t.is_fatal(),
            other => matches!(
                other.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::ProducerFenced)
            ),
        },
        Error::Config(_) => true,
        _ => false,
    }
}

fn close_task(mut task: Task, flush: bool) {
    if flush {
        for store in task.stores.values() {
            if let Err(e) = store.flush() {
                tracing::warn!(task = task.id, store = %store.name, error = %e, "flush failed");
            }
        }
    }
    task.processor.close();
}

fn send<'a>(
    producer: &FutureProducer,
    mut rec: FutureRecord<'a, [u8], [u8]>,
) -> Result<DeliveryFuture> {
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                // The producer's own thread drains the queue; give it a moment.
                rec = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

fn delivered(
    r: std::result::Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<i64> {
    match r {
        Ok(Ok(d)) => Ok(d.offset),
        Ok(Err((e, _))) => Err(e.into()),
        Err(_) => Err(Error::Kafka(KafkaError::Canceled)),
    }
}

fn dead_letter(record: &Record, error: &Error) -> Output {
    let mut headers = record.headers.clone();
    headers.push(("dlq.source.topic".into(), record.topic.clone().into_bytes()));
    headers.push((
        "dlq.source.partition".into(),
        record.partition.to_string().into_bytes(),
    ));
    headers.push((
        "dlq.source.offset".into(),
        record.offset.to_string().into_bytes(),
    ));
    headers.push(("dlq.error.class".into(), error.class().as_bytes().to_vec()));
    headers.push(("dlq.error.message".into(), error.to_string().into_bytes()));
    Output {
        topic: dlq_topic(&record.topic),
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
    }
}
