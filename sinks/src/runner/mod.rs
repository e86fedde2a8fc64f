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
//! Meanwhile the member stays in its group: once a batch has been in flight for
//! [`KEEPALIVE`], the runner pauses its partitions and goes on polling (which is what
//! `max.poll.interval.ms` measures), holding back any record that still arrives, and resumes
//! them once the batch is acknowledged. An outage shows as `tributary_sink_store_unavailable`
//! and one log line at its start and end.
//!
//! Only a record the store *rejects* (a writer's allow-list of data errors) is dead-lettered;
//! to find it, the runner takes out the record that produced the rejected entity (several
//! records of that entity are written one by one to find the bad one), or, when the store
//! cannot say which entity it was, writes the batch record by record.
//!
//! A spike of dead letters is more likely a bug or a misclassified outage than bad data: when
//! over [`SinkConfig::dlq_pause_ratio`] of the recent records (and at least
//! [`SinkConfig::dlq_pause_min`]) would be dead-lettered, the sink holds the batch back instead,
//! retrying it with backoff (`tributary_sink_dlq_paused`), rather than emptying its input into
//! the DLQ.

pub mod event;
pub mod projection;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tributary_runtime::kafka::{client_config, close_consumer, ensure_topic, TopicSpec};
use tributary_schemas::Codec;

use crate::change::{coalesce_counted, Change, ViewWriter, WriteError, WriteOutcome};
use crate::dlq::{DeadLetter, DeadLetterQueue, ErrorClass};
use crate::metrics::{Metrics, SinkMetrics};
use tributary_runtime::dlq::dlq_topic;

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
    /// The sink's name: the `component_id` label of its metrics.
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
    /// The sink pauses (holds the batch back and retries it) instead of dead-lettering when
    /// more than this fraction of the last `dlq_pause_window` records, batch included, would be
    /// dead letters...
    pub dlq_pause_ratio: f64,
    /// ...and at least this many of them: a few poison records never pause a sink.
    pub dlq_pause_min: u64,
    pub dlq_pause_window: u64,
}

impl SinkConfig {
    /// Defaults for the sink `name`: the local stack's broker (the binary sets `brokers` from
    /// `--brokers`; libraries never read the environment), group
    /// `tributary-sink-<name>`, 500 records or 100 ms per batch, retries from 100 ms up to 10 s;
    /// pauses when over half of the last 1000 records, and at least 50, would be dead letters.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            group_id: format!("tributary-sink-{name}"),
            name,
            brokers: tributary_runtime::config::KAFKA_BROKERS.default.to_string(),
            sources: Vec::new(),
            batch_max_records: 500,
            batch_linger: Duration::from_millis(100),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            consumer_settings: Vec::new(),
            dlq_pause_ratio: 0.5,
            dlq_pause_min: 50,
            dlq_pause_window: 1000,
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
    /// Whether a restart can help: a Kafka error by the one classification every process uses
    /// (creating a client fails for configuration only, which is not retriable); a sink without
    /// topics fails again.
    pub fn retriable(&self) -> bool {
        match self {
            SinkError::Kafka { source, .. } => tributary_runtime::kafka::is_retriable(source),
            SinkError::NoSources { .. } => false,
        }
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
    headers: Vec<(String, Option<Vec<u8>>)>,
    has_timestamp: bool,
    group: Arc<str>,
}

impl Record {
    fn of<M: Message>(m: &M, source: &SourceTopic, group: &Arc<str>) -> Record {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: source.topic.clone(),
            stream: source.stream,
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
            has_timestamp: m.timestamp().to_millis().is_some(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            group: group.clone(),
        }
    }

    fn dead(&self, class: ErrorClass, message: String) -> DeadLetter {
        DeadLetter {
            timestamp_ms: self.has_timestamp.then_some(self.timestamp_ms),
            headers: self.headers.clone(),
            group: self.group.to_string(),
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

/// Shutdown: the one style of every process (`tributary_runtime::shutdown`).
type Stop = CancellationToken;

/// How long a batch may be in flight before the runner pauses its partitions and polls to keep
/// the member in its group (also the interval of those polls). Far below any sensible
/// `max.poll.interval.ms` (at least the session timeout, 6 s on most brokers), and above a
/// normal batch's write time, so a healthy sink never pauses.
pub const KEEPALIVE: Duration = Duration::from_millis(500);

/// The sink's consumer: rebalances are counted (`tributary_sink_rebalances_total`) and logged,
/// so that a member that left its group during an outage shows.
type SinkConsumer = BaseConsumer<SinkContext>;

struct SinkContext {
    name: String,
    metrics: SinkMetrics,
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.rebalanced(true);
                tracing::info!(sink = %self.name, partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                self.metrics.rebalanced(false);
                tracing::info!(sink = %self.name, partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(sink = %self.name, error = %e, "rebalance error"),
        }
    }
}

/// Dead letters among the recent records, per batch, for the dead-letter rate limit.
#[derive(Default)]
struct DlqWindow {
    batches: VecDeque<(u64, u64)>,
    records: u64,
    dead: u64,
}

impl DlqWindow {
    /// Whether a batch of `records` with `dead` dead letters puts the rate over the limit.
    fn over(&self, config: &SinkConfig, records: u64, dead: u64) -> bool {
        if dead == 0 || config.dlq_pause_ratio >= 1.0 {
            return false;
        }
        let (mut total, mut dead_total) = (self.records + records, self.dead + dead);
        for (r, d) in &self.batches {
            if total.saturating_sub(*r) < config.dlq_pause_window {
                break;
            }
            total -= r;
            dead_total -= d;
        }
        dead_total >= config.dlq_pause_min
            && dead_total as f64 > config.dlq_pause_ratio * total as f64
    }

    fn push(&mut self, config: &SinkConfig, records: u64, dead: u64) {
        self.batches.push_back((records, dead));
        self.records += records;
        self.dead += dead;
        while let Some((r, d)) = self.batches.front().copied() {
            if self.records.saturating_sub(r) < config.dlq_pause_window {
                break;
            }
            self.batches.pop_front();
            self.records -= r;
            self.dead -= d;
        }
    }
}

/// Returned when shutdown interrupts a batch: nothing of it is acknowledged.
struct Stopped;

/// A sink: a projection and a store writer fed from the event topics.
pub struct Sink {
    config: SinkConfig,
    codec: Arc<Codec>,
    projection: Arc<dyn Projection>,
    writer: Arc<dyn ViewWriter>,
    metrics: SinkMetrics,
    /// When the current store outage started, if one is going on.
    outage: Mutex<Option<Instant>>,
    dlq_window: Mutex<DlqWindow>,
    /// When the current dead-letter-rate pause started, if one is going on.
    dlq_pause: Mutex<Option<Instant>>,
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
            outage: Mutex::new(None),
            dlq_window: Mutex::new(DlqWindow::default()),
            dlq_pause: Mutex::new(None),
        }
    }

    /// This sink's metrics.
    pub fn metrics(&self) -> &SinkMetrics {
        &self.metrics
    }

    /// Consumes until `shutdown` is cancelled, then commits what is durable and closes the
    /// consumer within `close_timeout`. A batch that shutdown interrupts is not acknowledged
    /// and is delivered again on the next start.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SinkError> {
        let stop: Stop = shutdown;
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
        let context = SinkContext {
            name: self.config.name.clone(),
            metrics: self.metrics.clone(),
        };
        let consumer: SinkConsumer = settings.create_with_context(context).map_err(kafka)?;
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
        consumer: &SinkConsumer,
        sources: &[SourceTopic],
        dlq: &DeadLetterQueue,
        stop: &Stop,
    ) -> Result<(), SinkError> {
        let max = self.config.batch_max_records.max(1);
        let group: Arc<str> = self.config.group_id.as_str().into();
        // Records polled while a batch was in flight: they start the next batch.
        let mut held: VecDeque<Record> = VecDeque::new();
        loop {
            let mut batch: Vec<Record> = Vec::new();
            let mut deadline: Option<Instant> = None;
            if !held.is_empty() {
                // A partition revoked meanwhile is its new owner's to read now.
                let assigned = consumer.assignment().ok();
                let owned = |r: &Record| {
                    assigned
                        .as_ref()
                        .is_some_and(|a| a.find_partition(&r.topic, r.partition).is_some())
                };
                while batch.len() < max {
                    let Some(r) = held.pop_front() else { break };
                    if owned(&r) {
                        batch.push(r);
                    }
                }
                if !batch.is_empty() {
                    deadline = Some(Instant::now() + self.config.batch_linger);
                }
            }
            while batch.len() < max && held.is_empty() {
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
                        batch.push(Record::of(&m, source, &group));
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
            let mut paused = false;
            let done = {
                let work = self.process(&batch, dlq, stop);
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        r = &mut work => break r,
                        _ = tokio::time::sleep(KEEPALIVE) => {
                            self.keep_alive(consumer, sources, &group, &mut held, &mut paused);
                        }
                    }
                }
            };
            if done.is_err() {
                return Ok(());
            }
            self.acknowledge(consumer, &batch);
            if paused {
                if let Ok(assigned) = consumer.assignment() {
                    if let Err(e) = consumer.resume(&assigned) {
                        tracing::warn!(sink = %self.config.name, error = %e, "resume failed");
                    }
                }
            }
        }
    }

    /// Polls while a batch is in flight, so that the member stays in its group however long the
    /// store takes: the first call pauses every assigned partition; a record that still arrives
    /// (fetched before the pause, or of a partition assigned since) is held for the next batch
    /// and its partition paused. Resuming restarts each partition's fetch after the last record
    /// handed out, so nothing is skipped.
    fn keep_alive(
        &self,
        consumer: &SinkConsumer,
        sources: &[SourceTopic],
        group: &Arc<str>,
        held: &mut VecDeque<Record>,
        paused: &mut bool,
    ) {
        if !*paused {
            if let Ok(assigned) = consumer.assignment() {
                if let Err(e) = consumer.pause(&assigned) {
                    tracing::warn!(sink = %self.config.name, error = %e, "pause failed");
                }
            }
            *paused = true;
        }
        while let Some(polled) = consumer.poll(Duration::ZERO) {
            let m = match polled {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(sink = %self.config.name, error = %e, "consumer error while paused");
                    break;
                }
            };
            let Some(source) = sources.iter().find(|s| s.topic == m.topic()) else {
                continue;
            };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(m.topic(), m.partition());
            if let Err(e) = consumer.pause(&tpl) {
                tracing::warn!(sink = %self.config.name, error = %e, "pause failed");
            }
            held.push_back(Record::of(&m, source, group));
        }
    }

    /// Stores the last offset of every partition of the batch and commits them.
    fn acknowledge(&self, consumer: &SinkConsumer, batch: &[Record]) {
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

    /// Decodes, projects and writes one batch; dead-letters its poison records, unless that
    /// puts the dead-letter rate over the limit: then the batch is held back and tried again.
    async fn process(
        &self,
        batch: &[Record],
        dlq: &DeadLetterQueue,
        stop: &Stop,
    ) -> Result<(), Stopped> {
        let mut attempt = 0;
        let dead = loop {
            let mut projected: Vec<(usize, Vec<Change>)> = Vec::with_capacity(batch.len());
            let mut dead: Vec<DeadLetter> = Vec::new();
            for (i, r) in batch.iter().enumerate() {
                match self.project(r, stop).await? {
                    Ok(changes) => projected.push((i, changes)),
                    Err(letter) => dead.push(letter),
                }
            }
            self.write_all(batch, projected, &mut dead, stop).await?;
            let over =
                lock(&self.dlq_window).over(&self.config, batch.len() as u64, dead.len() as u64);
            if !over {
                break dead;
            }
            {
                let mut pause = lock(&self.dlq_pause);
                if pause.is_none() {
                    *pause = Some(Instant::now());
                    self.metrics.dlq_paused(true);
                    tracing::error!(sink = %self.config.name, dead = dead.len(), records = batch.len(), ratio = self.config.dlq_pause_ratio, min = self.config.dlq_pause_min, window = self.config.dlq_pause_window, first = %dead[0].message, "dead-letter rate over the limit: sink paused, holding the batch back and retrying it");
                }
            }
            self.backoff(&mut attempt, stop).await?;
        };
        if let Some(since) = lock(&self.dlq_pause).take() {
            self.metrics.dlq_paused(false);
            tracing::warn!(sink = %self.config.name, paused_for = ?since.elapsed(), dead = dead.len(), "dead-letter rate back under the limit: sink resumed");
        }
        for letter in &dead {
            let mut attempt = 0;
            while let Err(e) = dlq.send(letter).await {
                tracing::warn!(sink = %self.config.name, error = %e, "dead letter not delivered; retrying");
                self.metrics.retried();
                self.backoff(&mut attempt, stop).await?;
            }
            tracing::warn!(sink = %self.config.name, topic = %letter.topic, partition = letter.partition, offset = letter.offset, class = letter.class.as_str(), reason = %letter.message, "record dead-lettered");
        }
        lock(&self.dlq_window).push(&self.config, batch.len() as u64, dead.len() as u64);
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
        let mut suspects: Vec<(usize, Vec<Change>)> = Vec::new();
        loop {
            let (changes, stale) =
                coalesce_counted(projected.iter().flat_map(|(_, c)| c.clone()).collect());
            let records = projected.len();
            let Err(rejected) = self.write_retrying(records, &changes, stale, stop).await? else {
                suspects.sort_by_key(|(i, _)| *i);
                for (i, changes) in suspects {
                    let (changes, stale) = coalesce_counted(changes);
                    if let Err(e) = self.write_retrying(1, &changes, stale, stop).await? {
                        dead.push(batch[i].dead(ErrorClass::Rejected, e.to_string()));
                    }
                }
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
            if culprits.len() == 1 {
                let (i, _) = projected.remove(culprits[0]);
                dead.push(batch[i].dead(ErrorClass::Rejected, rejected.to_string()));
                continue;
            }
            if !culprits.is_empty() {
                // Several records made the rejected entity: the rest of the batch first, then
                // these one by one in order, so that only the bad one is dead-lettered (the
                // versions make the earlier ones' writes no-ops when a later one is newer).
                for pos in culprits.into_iter().rev() {
                    suspects.push(projected.remove(pos));
                }
                continue;
            }
            // The store could not name the entity: find the culprits one record at a time.
            projected.extend(suspects);
            projected.sort_by_key(|(i, _)| *i);
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
                _ = stop.cancelled() => return Err(Stopped),
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
                    self.outage_over();
                    outcome.stale += stale_in_batch;
                    self.metrics
                        .batch_written(records, changes, outcome, started.elapsed());
                    return Ok(Ok(outcome));
                }
                Err(e) if e.retriable() => {
                    {
                        let mut outage = lock(&self.outage);
                        if outage.is_none() {
                            *outage = Some(Instant::now());
                            self.metrics.store_unavailable(true);
                            tracing::warn!(sink = %self.config.name, store = self.writer.store(), error = %e, "store unavailable: holding the batch, retrying it with backoff; partitions paused while polling goes on");
                        } else {
                            tracing::debug!(sink = %self.config.name, error = %e, attempt, "store still unavailable");
                        }
                    }
                    self.metrics.retried();
                    self.backoff(&mut attempt, stop).await?;
                }
                Err(e) => {
                    self.outage_over();
                    return Ok(Err(e));
                }
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
            _ = stop.cancelled() => Err(Stopped),
            _ = tokio::time::sleep(wait) => Ok(()),
        }
    }

    /// Ends the current outage, if any: one log line with its length.
    fn outage_over(&self) {
        if let Some(since) = lock(&self.outage).take() {
            self.metrics.store_unavailable(false);
            tracing::warn!(sink = %self.config.name, store = self.writer.store(), down_for = ?since.elapsed(), "store available again; outage over");
        }
    }

    async fn pause(&self, wait: Duration, stop: &Stop) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn stopped(stop: &Stop) -> bool {
    stop.is_cancelled()
}

/// The state behind a mutex; never held across an await, so a poisoned one is still sound.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_rate_limit_needs_both_the_ratio_and_the_count() {
        let mut config = SinkConfig::new("t");
        config.dlq_pause_ratio = 0.5;
        config.dlq_pause_min = 10;
        config.dlq_pause_window = 100;
        let mut w = DlqWindow::default();
        // A few poison records, even all of a batch, do not pause.
        assert!(!w.over(&config, 3, 3));
        w.push(&config, 3, 3);
        // Ten of twelve: over both.
        assert!(w.over(&config, 9, 7));
        // Diluted by good records: under the ratio.
        w.push(&config, 90, 0);
        assert!(!w.over(&config, 10, 7));
        // Old batches leave the window: 100 good records push the first out.
        w.push(&config, 100, 0);
        assert_eq!(w.dead, 0);
        // Disabled.
        config.dlq_pause_ratio = 1.0;
        assert!(!w.over(&config, 50, 50));
    }
}
