//! The sink runner: one consumer-group member that keeps one store's views up to date.
//!
//! ```text
//!  poll ──► batch (max records | linger) ──► decode ──► project ──► coalesce ──► ViewWriter::write
//!                                              │           │                       │ Ok: store offsets, commit
//!                                              └─ poison ──┴──── Rejected ─────────┴──► <topic>.dlq
//!                                                                Unavailable ──► same batch again, backoff
//! ```
//!
//! Delivery is at-least-once: offsets are stored (and committed) only after the batch's changes
//! are durable in the store and its dead letters are on the broker. A crash between the two
//! delivers the batch again, which changes nothing because every write is idempotent by version.
//!
//! A transient store error never skips or reorders anything: the runner keeps the same batch and
//! retries it, with capped exponential backoff, until the store is back (or shutdown is asked).
//! Only a record the store *rejects* is dead-lettered; to find it, the runner takes out the
//! records that produced the rejected entity, or, when the store cannot say which entity it was,
//! writes the batch record by record.

pub mod event;
pub mod projection;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use tributary_runtime::kafka::{client_config, close_consumer, ensure_topic, TopicSpec};
use tributary_schemas::Codec;

use crate::change::{coalesce_counted, Change, ViewWriter, WriteError, WriteOutcome};
use crate::dlq::{dlq_topic, DeadLetter, DeadLetterQueue, ErrorClass};
use crate::metrics::{Metrics, SinkMetrics};

pub use event::{Event, EventStream, Tombstone, TOMBSTONE_VERSION};
pub use projection::{ProjectError, Projection};

/// A topic a sink reads and the stream its records are decoded as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTopic {
    pub topic: String,
    pub stream: EventStream,
}

impl SourceTopic {
    /// The stream's production topic.
    pub fn of(stream: EventStream) -> Self {
        Self {
            topic: stream.topic().to_string(),
            stream,
        }
    }
}

/// How a sink consumes, batches and retries.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The sink's name: the `sink` label of its metrics.
    pub name: String,
    pub brokers: String,
    pub group_id: String,
    /// Topics to read; empty means the production topic of every stream the projection reads.
    pub sources: Vec<SourceTopic>,
    /// A batch is written when it holds this many records...
    pub batch_max_records: usize,
    /// ...or this long after its first record arrived, whichever comes first.
    pub batch_linger: Duration,
    /// First wait after a transient error; doubles per attempt up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// A write that takes longer than this counts as a transient failure and is retried.
    pub write_timeout: Duration,
    /// Bound on closing the consumer at shutdown.
    pub close_timeout: Duration,
    /// Extra librdkafka consumer settings (e.g. `session.timeout.ms`), applied last.
    pub consumer_settings: Vec<(String, String)>,
}

impl SinkConfig {
    /// Defaults for the sink `name`: the broker from `TRIBUTARY_KAFKA_BROKERS`, group
    /// `tributary-sink-<name>`, 500 records or 100 ms per batch, retries from 100 ms up to 10 s.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            group_id: format!("tributary-sink-{name}"),
            name,
            brokers: tributary_runtime::config::KAFKA_BROKERS.get(),
            sources: Vec::new(),
            batch_max_records: 500,
            batch_linger: Duration::from_millis(100),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            consumer_settings: Vec::new(),
        }
    }
}

/// Why a sink stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink `{sink}`: kafka client setup failed: {source}")]
    Kafka {
        sink: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("sink `{sink}` has no topics to read")]
    NoSources { sink: String },
}

impl SinkError {
    /// Setup errors are configuration problems; a restart with the same settings fails again.
    pub fn retriable(&self) -> bool {
        false
    }
}

/// One consumed record, detached from the consumer.
#[derive(Debug, Clone)]
struct Record {
    topic: String,
    stream: EventStream,
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

impl Record {
    fn dead(&self, class: ErrorClass, message: String) -> DeadLetter {
        DeadLetter {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key: self.key.clone(),
            value: self.value.clone(),
            class,
            message,
        }
    }
}

type Stop = Shared<BoxFuture<'static, ()>>;

/// Returned when shutdown interrupts a batch: nothing of it is acknowledged.
struct Stopped;

/// A sink: a projection and a store writer fed from the event topics.
pub struct Sink {
    config: SinkConfig,
    codec: Arc<Codec>,
    projection: Arc<dyn Projection>,
    writer: Arc<dyn ViewWriter>,
    metrics: SinkMetrics,
}

impl Sink {
    pub fn new(
        config: SinkConfig,
        codec: Arc<Codec>,
        projection: Arc<dyn Projection>,
        writer: Arc<dyn ViewWriter>,
        metrics: &Metrics,
    ) -> Self {
        let metrics = metrics.sink(&config.name);
        Self {
            config,
            codec,
            projection,
            writer,
            metrics,
        }
    }

    /// This sink's metrics.
    pub fn metrics(&self) -> &SinkMetrics {
        &self.metrics
    }

    /// Consumes until `shutdown` completes, then commits what is durable and closes the
    /// consumer within `close_timeout`. A batch that shutdown interrupts is not acknowledged
    /// and is delivered again on the next start.
    pub async fn run<F>(self, shutdown: F) -> Result<(), SinkError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop: Stop = shutdown.boxed().shared();
        let sources = if self.config.sources.is_empty() {
            self.projection
                .streams()
                .iter()
                .map(|s| SourceTopic::of(*s))
                .collect()
        } else {
            self.config.sources.clone()
        };
        if sources.is_empty() {
            return Err(SinkError::NoSources {
                sink: self.config.name.clone(),
            });
        }
        let kafka = |source| SinkError::Kafka {
            sink: self.config.name.clone(),
            source,
        };
        let mut settings = client_config(&self.config.brokers);
        settings
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &self.config.consumer_settings {
            settings.set(k, v);
        }
        let consumer: BaseConsumer = settings.create().map_err(kafka)?;
        let topics: Vec<&str> = sources.iter().map(|s| s.topic.as_str()).collect();
        consumer.subscribe(&topics).map_err(kafka)?;
        let dlq = DeadLetterQueue::new(&self.config.brokers).map_err(kafka)?;
        for s in &sources {
            // Created up front so that the first dead letter does not wait on auto-creation.
            let spec = TopicSpec {
                partitions: 1,
                compacted: false,
            };
            if let Err(e) = ensure_topic(&self.config.brokers, &dlq_topic(&s.topic), spec).await {
                tracing::warn!(sink = %self.config.name, topic = %s.topic, error = %e, "cannot create the DLQ topic; producing will try to auto-create it");
            }
        }
        tracing::info!(sink = %self.config.name, topics = ?topics, "sink started");

        let result = self.consume(&consumer, &sources, &dlq, &stop).await;
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit is also a (harmless) error.
            tracing::debug!(sink = %self.config.name, error = %e, "final commit");
        }
        close_consumer(&consumer, self.config.close_timeout);
        tracing::info!(sink = %self.config.name, "sink stopped");
        result
    }

    async fn consume(
        &self,
        consumer: &BaseConsumer,
        sources: &[SourceTopic],
        dlq: &DeadLetterQueue,
        stop: &Stop,
    ) -> Result<(), SinkError> {
        let max = self.config.batch_max_records.max(1);
        loop {
            let mut batch: Vec<Record> = Vec::new();
            let mut deadline: Option<Instant> = None;
            while batch.len() < max {
                if stopped(stop) {
                    // The partial batch is dropped unacknowledged: it comes back on restart.
                    return Ok(());
                }
                match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => {
                        let Some(source) = sources.iter().find(|s| s.topic == m.topic()) else {
                            continue;
                        };
                        if deadline.is_none() {
                            deadline = Some(Instant::now() + self.config.batch_linger);
                        }
                        batch.push(Record {
                            topic: source.topic.clone(),
                            stream: source.stream,
                            partition: m.partition(),
                            offset: m.offset(),
                            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().map(<[u8]>::to_vec),
                        });
                        // A steady trickle must not hold a batch back past its linger either.
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(sink = %self.config.name, error = %e, "consumer error");
                        self.pause(Duration::from_millis(100), stop).await;
                    }
                    None => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        // librdkafka fetches in the background; a short nap between empty
                        // polls keeps this task from spinning without delaying a batch much.
                        self.pause(Duration::from_millis(5), stop).await;
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            if self.process(&batch, dlq, stop).await.is_err() {
                return Ok(());
            }
            self.acknowledge(consumer, &batch);
        }
    }

    /// Stores the last offset of every partition of the batch and commits them.
    fn acknowledge(&self, consumer: &BaseConsumer, batch: &[Record]) {
        let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in batch {
            let e = last
                .entry((r.topic.as_str(), r.partition))
                .or_insert(r.offset);
            *e = (*e).max(r.offset);
        }
        for ((topic, partition), offset) in last {
            // librdkafka commits `offset + 1`, the next record to read.
            if let Err(e) = consumer.store_offset(topic, partition, offset) {
                // The partition was revoked meanwhile; its new owner reprocesses from the last
                // commit, which is harmless since writes are idempotent.
                tracing::warn!(sink = %self.config.name, topic, partition, offset, error = %e, "cannot store offset");
            }
        }
        // Asynchronous: a failed commit is covered by the next one, and the final one at
        // shutdown is synchronous.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
            tracing::warn!(sink = %self.config.name, error = %e, "commit failed");
        }
    }

    /// Decodes, projects and writes one batch; dead-letters its poison records.
    async fn process(
        &self,
        batch: &[Record],
        dlq: &DeadLetterQueue,
        stop: &Stop,
    ) -> Result<(), Stopped> {
        let mut projected: Vec<(usize, Vec<Change>)> = Vec::with_capacity(batch.len());
        let mut dead: Vec<DeadLetter> = Vec::new();
        for (i, r) in batch.iter().enumerate() {
            match self.project(r, stop).await? {
                Ok(changes) => projected.push((i, changes)),
                Err(letter) => dead.push(letter),
            }
        }
        self.write_all(batch, projected, &mut dead, stop).await?;
        for letter in &dead {
            let mut attempt = 0;
            while let Err(e) = dlq.send(letter).await {
                tracing::warn!(sink = %self.config.name, error = %e, "dead letter not delivered; retrying");
                self.metrics.retried();
                self.backoff(&mut attempt, stop).await?;
            }
            tracing::warn!(sink = %self.config.name, topic = %letter.topic, partition = letter.partition, offset = letter.offset, class = letter.class.as_str(), reason = %letter.message, "record dead-lettered");
        }
        self.metrics.dead_lettered(dead.len() as u64);
        Ok(())
    }

    /// The changes of one record, or its dead letter. Retries while the schema registry is
    /// unreachable: that says nothing about the record.
    async fn project(
        &self,
        r: &Record,
        stop: &Stop,
    ) -> Result<Result<Vec<Change>, DeadLetter>, Stopped> {
        let Some(value) = &r.value else {
            let key = r
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            if key.is_empty() {
                return Ok(Err(r.dead(
                    ErrorClass::Decode,
                    "tombstone without a key names no entity".into(),
                )));
            }
            return Ok(Ok(self.projection.tombstone(&Tombstone {
                stream: r.stream,
                key,
                timestamp_ms: r.timestamp_ms,
            })));
        };
        let mut attempt = 0;
        loop {
            match r.stream.decode(&self.codec, value).await {
                Ok(event) => {
                    return Ok(self
                        .projection
                        .project(&event)
                        .map_err(|e| r.dead(ErrorClass::Projection, e.to_string())));
                }
                Err(e) if e.retriable() => {
                    tracing::warn!(sink = %self.config.name, error = %e, "decoding needs the schema registry; retrying");
                    self.metrics.retried();
                    self.backoff(&mut attempt, stop).await?;
                }
                Err(e) => {
                    return Ok(Err(r.dead(
                        ErrorClass::Decode,
                        format!("{}/{}@{}: {e}", r.topic, r.partition, r.offset),
                    )))
                }
            }
        }
    }

    /// Writes the changes of `projected` records, moving the records the store rejects to
    /// `dead`.
    async fn write_all(
        &self,
        batch: &[Record],
        mut projected: Vec<(usize, Vec<Change>)>,
        dead: &mut Vec<DeadLetter>,
        stop: &Stop,
    ) -> Result<(), Stopped> {
        loop {
            let (changes, stale) =
                coalesce_counted(projected.iter().flat_map(|(_, c)| c.clone()).collect());
            let records = projected.len();
            let Err(rejected) = self.write_retrying(records, &changes, stale, stop).await? else {
                return Ok(());
            };
            let (view, key) = match &rejected {
                WriteError::Rejected { view, key, .. } => (*view, key.as_str()),
                WriteError::Unavailable { .. } => return Ok(()),
            };
            let culprits: Vec<usize> = projected
                .iter()
                .enumerate()
                .filter(|(_, (_, cs))| cs.iter().any(|c| c.view == view && c.key == key))
                .map(|(pos, _)| pos)
                .collect();
            if !culprits.is_empty() {
                for pos in culprits.into_iter().rev() {
                    let (i, _) = projected.remove(pos);
                    dead.push(batch[i].dead(ErrorClass::Rejected, rejected.to_string()));
                }
                continue;
            }
            // The store could not name the entity: find the culprits one record at a time.
            for (i, changes) in projected {
                let (changes, stale) = coalesce_counted(changes);
                if let Err(e) = self.write_retrying(1, &changes, stale, stop).await? {
                    dead.push(batch[i].dead(ErrorClass::Rejected, e.to_string()));
                }
            }
            return Ok(());
        }
    }

    /// Writes `changes` until the store accepts or rejects them; transient errors are retried
    /// with backoff. `Ok(Err(_))` is always a [`WriteError::Rejected`].
    async fn write_retrying(
        &self,
        records: usize,
        changes: &[Change],
        stale_in_batch: u64,
        stop: &Stop,
    ) -> Result<Result<WriteOutcome, WriteError>, Stopped> {
        if changes.is_empty() {
            let outcome = WriteOutcome {
                applied: 0,
                stale: stale_in_batch,
            };
            self.metrics
                .batch_written(records, changes, outcome, Duration::ZERO);
            return Ok(Ok(outcome));
        }
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let write = tokio::time::timeout(self.config.write_timeout, self.writer.write(changes));
            // Shutdown does not wait for a slow store: dropping the write rolls it back (or, if it
            // got through, the batch comes again on restart and changes nothing).
            let result = match tokio::select! {
                r = write => r,
                _ = stop.clone() => return Err(Stopped),
            } {
                Ok(r) => r,
                Err(_) => Err(WriteError::Unavailable {
                    store: self.writer.store(),
                    message: format!(
                        "write did not finish within {:?}",
                        self.config.write_timeout
                    ),
                }),
            };
            if let Some((idle, in_use)) = self.writer.pool_usage() {
                self.metrics.pool_usage(idle, in_use);
            }
            match result {
                Ok(mut outcome) => {
                    outcome.stale += stale_in_batch;
                    self.metrics
                        .batch_written(records, changes, outcome, started.elapsed());
                    return Ok(Ok(outcome));
                }
                Err(e) if e.retriable() => {
                    tracing::warn!(sink = %self.config.name, error = %e, attempt, "store unavailable; retrying the same batch");
                    self.metrics.retried();
                    self.backoff(&mut attempt, stop).await?;
                }
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    /// Sleeps `retry_initial * 2^attempt` (capped at `retry_max`), or returns `Stopped` as soon
    /// as shutdown is asked.
    async fn backoff(&self, attempt: &mut u32, stop: &Stop) -> Result<(), Stopped> {
        let factor = 2u32.saturating_pow((*attempt).min(20));
        let wait = self
            .config
            .retry_initial
            .saturating_mul(factor)
            .min(self.config.retry_max);
        *attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = stop.clone() => Err(Stopped),
            _ = tokio::time::sleep(wait) => Ok(()),
        }
    }

    async fn pause(&self, wait: Duration, stop: &Stop) {
        tokio::select! {
            _ = stop.clone() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn stopped(stop: &Stop) -> bool {
    stop.clone().now_or_never().is_some()
}
