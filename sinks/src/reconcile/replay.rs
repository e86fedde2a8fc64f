//! Reads event topics from their low to their high watermark (as they were when the replay
//! started) and folds every record, through the store's own [`Projection`], into an
//! [`Expected`] view.
//!
//! The consumer is assigned its partitions explicitly and never commits: a replay is a reader
//! of the log, not a member of any sink's consumer group.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tributary_runtime::kafka::{client_config, close_consumer, unique_name};
use tributary_schemas::Codec;

use super::expected::Expected;
use super::ReconcileError;
use crate::change::Change;
use crate::job::Progress;
use crate::runner::{Projection, SourceTopic, Tombstone};

/// Where a replay puts the changes of each record: reconcile folds them into an [`Expected`]
/// view; a rebuild writes them, in batches, through a store's writer.
#[async_trait::async_trait]
pub trait Fold: Send {
    /// Takes the changes of one record, in log order per partition.
    async fn record(&mut self, changes: Vec<Change>) -> Result<(), ReconcileError>;
}

#[async_trait::async_trait]
impl Fold for Expected {
    async fn record(&mut self, changes: Vec<Change>) -> Result<(), ReconcileError> {
        for c in changes {
            self.apply(c);
        }
        Ok(())
    }
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[low, high)` offsets of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub low: i64,
    pub high: i64,
}

/// Offsets per `(topic, partition)`.
pub type Watermarks = BTreeMap<(String, i32), Range>;

/// What a replay read.
#[derive(Debug, Clone, Default)]
pub struct ReplayStats {
    /// Records folded in.
    pub records: u64,
    /// Records the sink would dead-letter (undecodable, or refused by the projection): they
    /// change no view.
    pub skipped: u64,
    /// Where each partition started and ended.
    pub watermarks: Watermarks,
}

fn consumer(brokers: &str) -> Result<BaseConsumer, ReconcileError> {
    client_config(brokers)
        // librdkafka wants a group id; nothing is ever committed under it.
        .set("group.id", unique_name("tributary-reconcile"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|source| ReconcileError::Kafka {
            action: "creating the replay consumer".into(),
            source,
        })
}

/// The current watermarks of every partition of `sources`.
pub fn watermarks(
    consumer: &BaseConsumer,
    sources: &[SourceTopic],
) -> Result<Watermarks, ReconcileError> {
    let mut out = Watermarks::new();
    for s in sources {
        let kafka = |action: String| {
            move |source| ReconcileError::Kafka {
                action: action.clone(),
                source,
            }
        };
        let md = consumer
            .fetch_metadata(Some(&s.topic), METADATA_TIMEOUT)
            .map_err(kafka(format!("reading the metadata of {}", s.topic)))?;
        for t in md.topics() {
            if t.partitions().is_empty() {
                return Err(ReconcileError::NoSuchTopic {
                    topic: s.topic.clone(),
                });
            }
            for p in t.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(&s.topic, p.id(), METADATA_TIMEOUT)
                    .map_err(kafka(format!(
                        "reading the offsets of {}/{}",
                        s.topic,
                        p.id()
                    )))?;
                out.insert((s.topic.clone(), p.id()), Range { low, high });
            }
        }
    }
    Ok(out)
}

/// Refuses `marks` as the ranges of a whole-history replay when a partition's low watermark
/// (its log start) is above 0: the records before it are gone (retention, DeleteRecords), so
/// what the replay folds is not the log every store is a view of, and a rebuild or a repair
/// from it would drop every entity only the lost records made. With `allow_truncated`, only
/// logs it. The one check `reconcile` and `rebuild` share.
pub fn check_whole_log(marks: &Watermarks, allow_truncated: bool) -> Result<(), ReconcileError> {
    for ((topic, partition), r) in marks {
        if r.low > 0 {
            if !allow_truncated {
                return Err(ReconcileError::TruncatedLog {
                    topic: topic.clone(),
                    partition: *partition,
                    log_start: r.low,
                });
            }
            tracing::warn!(%topic, partition, log_start = r.low, "replaying a truncated log: the result is a view of the retained records only");
        }
    }
    Ok(())
}

/// The watermarks of `sources` now, with a consumer of its own.
pub fn current_watermarks(
    brokers: &str,
    sources: &[SourceTopic],
) -> Result<Watermarks, ReconcileError> {
    let c = consumer(brokers)?;
    let w = watermarks(&c, sources);
    close_consumer(&c, Duration::from_secs(5));
    w
}

/// Replays `sources` into `expected`. Fails when no record arrives for `idle_timeout` while
/// records are still due, or when the schema registry stays unreachable that long.
pub async fn replay(
    brokers: &str,
    sources: &[SourceTopic],
    codec: &Codec,
    projection: &dyn Projection,
    expected: &mut dyn Fold,
    progress: &dyn Progress,
    idle_timeout: Duration,
) -> Result<ReplayStats, ReconcileError> {
    let consumer = consumer(brokers)?;
    let result = match watermarks(&consumer, sources) {
        Ok(marks) => {
            read(
                &consumer,
                sources,
                &marks,
                codec,
                projection,
                expected,
                progress,
                idle_timeout,
            )
            .await
        }
        Err(e) => Err(e),
    };
    close_consumer(&consumer, Duration::from_secs(5));
    result
}

/// Replays exactly the `[low, high)` ranges of `marks` (e.g. what was appended since an earlier
/// replay) into `fold`; the returned stats carry `marks` as their watermarks.
#[allow(clippy::too_many_arguments)]
pub async fn replay_ranges(
    brokers: &str,
    sources: &[SourceTopic],
    marks: &Watermarks,
    codec: &Codec,
    projection: &dyn Projection,
    fold: &mut dyn Fold,
    progress: &dyn Progress,
    idle_timeout: Duration,
) -> Result<ReplayStats, ReconcileError> {
    let consumer = consumer(brokers)?;
    let result = read(
        &consumer,
        sources,
        marks,
        codec,
        projection,
        fold,
        progress,
        idle_timeout,
    )
    .await;
    close_consumer(&consumer, Duration::from_secs(5));
    result
}

#[allow(clippy::too_many_arguments)]
async fn read(
    consumer: &BaseConsumer,
    sources: &[SourceTopic],
    marks: &Watermarks,
    codec: &Codec,
    projection: &dyn Projection,
    expected: &mut dyn Fold,
    progress: &dyn Progress,
    idle_timeout: Duration,
) -> Result<ReplayStats, ReconcileError> {
    let mut stats = ReplayStats {
        watermarks: marks.clone(),
        ..ReplayStats::default()
    };
    // Partitions still to read, and the offset where each ends.
    let mut due: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    let mut total = 0u64;
    for ((topic, partition), r) in marks {
        if r.high > r.low {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(r.low))
                .map_err(|source| ReconcileError::Kafka {
                    action: format!("assigning {topic}/{partition}"),
                    source,
                })?;
            due.insert((topic.clone(), *partition), r.high);
            total += u64::try_from(r.high - r.low).unwrap_or(0);
        }
    }
    progress.start("replaying the event topics", total);
    if due.is_empty() {
        return Ok(stats);
    }
    consumer
        .assign(&tpl)
        .map_err(|source| ReconcileError::Kafka {
            action: "assigning the replay's partitions".into(),
            source,
        })?;
    let mut last_progress = Instant::now();
    let mut last_position_check = Instant::now();
    while !due.is_empty() {
        match consumer.poll(Duration::ZERO) {
            Some(Ok(m)) => {
                let id = (m.topic().to_string(), m.partition());
                let Some(&high) = due.get(&id) else { continue };
                let offset = m.offset();
                if offset >= high {
                    // Written after the replay started: not part of this snapshot.
                    due.remove(&id);
                    continue;
                }
                last_progress = Instant::now();
                let Some(source) = sources.iter().find(|s| s.topic == id.0) else {
                    continue;
                };
                // Detached from the consumer before any await.
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let payload = m.payload().map(<[u8]>::to_vec);
                let timestamp_ms = m.timestamp().to_millis().unwrap_or(0);
                drop(m);
                let changes = match payload {
                    None => match key.filter(|k| !k.is_empty()) {
                        Some(key) => projection.tombstone(&Tombstone {
                            stream: source.stream,
                            key,
                            timestamp_ms,
                        }),
                        None => {
                            stats.skipped += 1;
                            Vec::new()
                        }
                    },
                    Some(bytes) => {
                        match decode(codec, source, &bytes, offset, &id, idle_timeout).await? {
                            Some(event) => match projection.project(&event) {
                                Ok(changes) => changes,
                                Err(e) => {
                                    tracing::debug!(topic = %id.0, partition = id.1, offset, error = %e, "record skipped: the sink dead-letters it");
                                    stats.skipped += 1;
                                    Vec::new()
                                }
                            },
                            None => {
                                stats.skipped += 1;
                                Vec::new()
                            }
                        }
                    }
                };
                expected.record(changes).await?;
                // A slow fold (a store write) is not a stalled log.
                last_progress = Instant::now();
                stats.records += 1;
                progress.advance(1);
                if offset + 1 >= high {
                    due.remove(&id);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "replay consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => {
                // The last offsets before the high watermark can be transaction markers, which
                // are never delivered: the consumer's position says when a partition is done.
                if last_position_check.elapsed() >= Duration::from_millis(200) {
                    last_position_check = Instant::now();
                    if let Ok(positions) = consumer.position() {
                        for e in positions.elements() {
                            let id = (e.topic().to_string(), e.partition());
                            if let (Offset::Offset(at), Some(&high)) = (e.offset(), due.get(&id)) {
                                if at >= high {
                                    due.remove(&id);
                                }
                            }
                        }
                    }
                }
                if last_progress.elapsed() > idle_timeout {
                    let ((topic, partition), high) = due
                        .iter()
                        .next()
                        .map(|(k, v)| (k.clone(), *v))
                        .unwrap_or_default();
                    return Err(ReconcileError::Stalled {
                        topic,
                        partition,
                        high,
                        waited: idle_timeout,
                    });
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    Ok(stats)
}

/// The event in `bytes`, or `None` when the sink would dead-letter it. Waits for the schema
/// registry up to `patience`.
async fn decode(
    codec: &Codec,
    source: &SourceTopic,
    bytes: &[u8],
    offset: i64,
    id: &(String, i32),
    patience: Duration,
) -> Result<Option<crate::runner::Event>, ReconcileError> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        match source.stream.decode(codec, bytes).await {
            Ok(event) => return Ok(Some(event)),
            Err(e) if e.retriable() => {
                if started.elapsed() > patience {
                    return Err(ReconcileError::Registry {
                        topic: id.0.clone(),
                        partition: id.1,
                        offset,
                        source: e,
                    });
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::debug!(topic = %id.0, partition = id.1, offset, error = %e, "record skipped: the sink dead-letters it");
                return Ok(None);
            }
        }
    }
}
