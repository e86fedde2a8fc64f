//! Restore: bringing a task's local stores to its last committed batch, from the changelogs.
//!
//! Runs on the engine thread **outside** the rebalance callback, a slice at a time between two
//! polls of the group consumer, so the member keeps polling however long a large store takes;
//! there is no fixed time limit. The task's input partitions stay paused, and the task processes
//! nothing, until every store is restored (`tributary_processor_restore_*` metrics show progress).
//!
//! Steps, per task:
//! 1. Read the task's commit marker (see `commit.rs`): the last committed batch's sequence number
//!    and its input positions. Records below those positions are already in the state.
//! 2. Per store, compare the local checkpoint with the changelog partition: a checkpoint at or
//!    past the partition's end (the topic was deleted and recreated, or truncated) or below its
//!    start (the tail the copy needs is gone) means the local copy is not a copy of this
//!    changelog: it is wiped, with a log line, and the whole partition is read.
//! 3. Read the changelog from the checkpoint. An entry of a batch at or below the committed one
//!    is applied. An entry of a later batch was never committed (the process died, or its commit
//!    failed, between the changelog write and the marker): the key gets the entry's `prev` back,
//!    the first time it is met in the tail (later uncommitted entries of the key are ignored),
//!    and is marked dirty so the task's next commit writes the committed value back into the
//!    changelog. The checkpoint stops before the first uncommitted entry, so a crash before that
//!    next commit finds the same tail again.
//! 4. The task's next batch number is past every number seen, so an abandoned batch's entries
//!    are never mistaken for a later committed batch's.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use redb::Durability;

use crate::commit::Marker;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{Entry, KvStore};
use crate::task::Task;

const CHUNK: usize = 5000;

/// The restore of one task, advanced by [`Restore::step`].
pub(crate) struct Restore {
    marker_topic: String,
    /// Exactly-once: the changelog is read `read_committed`, so every visible entry is committed.
    all_committed: bool,
    marker: Option<Marker>,
    todo: VecDeque<String>,
    current: Option<Current>,
    max_seq: u64,
    started: Instant,
}

struct Current {
    store: String,
    topic: String,
    high: i64,
    start: i64,
    last: i64,
    first_uncommitted: Option<i64>,
    rolled_back: HashSet<Vec<u8>>,
    chunk: Vec<(Vec<u8>, Option<Vec<u8>>, i64)>,
    total: u64,
}

impl Restore {
    pub fn new(task: &Task, marker_topic: String, all_committed: bool) -> Restore {
        let mut todo: Vec<String> = task.stores.keys().cloned().collect();
        todo.sort();
        Restore {
            marker_topic,
            all_committed,
            marker: None,
            todo: todo.into(),
            current: None,
            max_seq: 0,
            started: Instant::now(),
        }
    }

    /// Works on the restore for about `budget`. `Ok(true)` once the task is restored (its
    /// committed sequence and offsets set); the caller then resumes its partitions.
    pub fn step(
        &mut self,
        task: &mut Task,
        restorer: &BaseConsumer,
        budget: Duration,
        metrics: &Metrics,
        app: &str,
    ) -> Result<bool> {
        let deadline = Instant::now() + budget;
        if self.marker.is_none() && self.all_committed {
            // Exactly-once: the group's offsets are exact and no marker is written.
            self.marker = Some(Marker::default());
        }
        if self.marker.is_none() {
            let marker = read_marker(restorer, &self.marker_topic, task.id)?;
            tracing::debug!(task = task.id, ?marker, "commit marker");
            self.marker = Some(marker.unwrap_or_default());
        }
        let committed = self.marker.as_ref().map_or(0, |m| m.seq);
        loop {
            if self.current.is_none() {
                let Some(name) = self.todo.pop_front() else {
                    let marker = self.marker.take().unwrap_or_default();
                    task.committed_seq = marker.seq;
                    task.next_seq = marker.seq.max(self.max_seq) + 1;
                    task.committed_offsets = marker.offsets;
                    tracing::info!(
                        app,
                        task = task.id,
                        committed_seq = task.committed_seq,
                        elapsed_ms = self.started.elapsed().as_millis() as u64,
                        "task restored"
                    );
                    return Ok(true);
                };
                let store = task
                    .stores
                    .get_mut(&name)
                    .ok_or_else(|| Error::UnknownStore(name.clone()))?;
                match begin_store(store, task.id, restorer, metrics, app)? {
                    None => continue,
                    Some((start, high)) => {
                        metrics
                            .restore_remaining
                            .with_label_values(&[app, &name])
                            .set(high - start);
                        self.current = Some(Current {
                            store: name,
                            topic: store.changelog.clone(),
                            high,
                            start,
                            last: start - 1,
                            first_uncommitted: None,
                            rolled_back: HashSet::new(),
                            chunk: Vec::new(),
                            total: 0,
                        });
                    }
                }
            }
            let cur = self.current.as_mut().expect("set above");
            let store = task
                .stores
                .get_mut(&cur.store)
                .ok_or_else(|| Error::UnknownStore(cur.store.clone()))?;
            let mut finished = cur.last >= cur.high - 1;
            while !finished && Instant::now() < deadline {
                match restorer.poll(Duration::from_millis(50)) {
                    None => {}
                    Some(Err(KafkaError::PartitionEOF(p))) if p == task.id => finished = true,
                    Some(Err(e)) => tracing::warn!(error = %e, "restore consumer error"),
                    Some(Ok(m)) => {
                        if m.topic() != cur.topic || m.partition() != task.id {
                            continue;
                        }
                        cur.last = m.offset();
                        let Some(k) = m.key() else { continue };
                        match m.payload() {
                            None => cur.chunk.push((k.to_vec(), None, 0)),
                            Some(v) => {
                                let e =
                                    Entry::decode(v).ok_or_else(|| Error::CorruptChangelog {
                                        topic: cur.topic.clone(),
                                        partition: task.id,
                                        offset: m.offset(),
                                        message: "value is not a store entry".into(),
                                    })?;
                                self.max_seq = self.max_seq.max(e.seq);
                                if self.all_committed || e.seq <= committed {
                                    cur.rolled_back.remove(k);
                                    cur.chunk.push((k.to_vec(), e.value, e.written_ms));
                                } else {
                                    cur.first_uncommitted.get_or_insert(m.offset());
                                    if cur.rolled_back.insert(k.to_vec()) {
                                        cur.chunk.push((k.to_vec(), e.prev, e.written_ms));
                                        store.mark_dirty(k.to_vec());
                                    }
                                }
                            }
                        }
                        cur.total += 1;
                        if cur.chunk.len() >= CHUNK {
                            flush_chunk(store, cur)?;
                        }
                        finished = cur.last >= cur.high - 1;
                    }
                }
            }
            flush_chunk(store, cur)?;
            metrics
                .restore_remaining
                .with_label_values(&[app, &cur.store])
                .set((cur.high - 1 - cur.last).max(0));
            if !finished {
                return Ok(false);
            }
            let _ = restorer.unassign();
            metrics
                .restore_records
                .with_label_values(&[app, &cur.store])
                .inc_by(cur.total);
            tracing::info!(app, task = task.id, store = %cur.store, records = cur.total,
                rolled_back = cur.rolled_back.len(), from = cur.start, to = cur.high, "store restored");
            self.current = None;
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }
}

fn flush_chunk(store: &KvStore, cur: &mut Current) -> Result<()> {
    let checkpoint = match cur.first_uncommitted {
        Some(f) => f - 1,
        None => cur.last,
    };
    if cur.chunk.is_empty() && checkpoint < cur.start {
        return Ok(());
    }
    let chunk = std::mem::take(&mut cur.chunk);
    store.apply(
        chunk
            .iter()
            .map(|(k, v, t)| (k.as_slice(), v.as_deref(), *t)),
        (checkpoint >= cur.start).then_some(checkpoint),
        Durability::None,
    )
}

/// Decides where `store`'s restore starts; `None` when the local copy is up to date.
fn begin_store(
    store: &mut KvStore,
    partition: i32,
    restorer: &BaseConsumer,
    metrics: &Metrics,
    app: &str,
) -> Result<Option<(i64, i64)>> {
    let topic = store.changelog.clone();
    let (low, high) = restorer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
    let checkpoint = store.checkpoint()?;
    let start = match checkpoint {
        Some(c) if c >= high || c + 1 < low => {
            tracing::warn!(store = %store.name, partition, checkpoint = c, low, high, local = ?store.path(),
                "local store does not match its changelog (topic recreated or truncated?): wiping it and restoring the whole changelog");
            metrics
                .stale_stores
                .with_label_values(&[app, &store.name])
                .inc();
            store.wipe()?;
            low
        }
        Some(c) => c + 1,
        None => low,
    };
    if start >= high {
        return Ok(None);
    }
    tracing::info!(store = %store.name, partition, start, high, local = ?store.path(), "restoring");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, Offset::Offset(start))?;
    restorer.assign(&tpl)?;
    Ok(Some((start, high)))
}

/// The last commit marker of `task`, `None` when it never committed.
pub(crate) fn read_marker(
    restorer: &BaseConsumer,
    topic: &str,
    task: i32,
) -> Result<Option<Marker>> {
    let (low, high) = restorer.fetch_watermarks(topic, task, Duration::from_secs(10))?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, task, Offset::Offset(high - 1))?;
    restorer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = loop {
        if Instant::now() > deadline {
            break Err(Error::transient(format!(
                "reading the commit marker {topic}/{task} at offset {} timed out",
                high - 1
            )));
        }
        match restorer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => tracing::warn!(error = %e, "marker read error"),
            Some(Ok(m))
                if m.topic() == topic && m.partition() == task && m.offset() >= high - 1 =>
            {
                break match m.payload().map(Marker::decode) {
                    Some(Some(marker)) => Ok(Some(marker)),
                    None => Ok(None),
                    Some(None) => Err(Error::CorruptChangelog {
                        topic: topic.to_string(),
                        partition: task,
                        offset: m.offset(),
                        message: "value is not a commit marker".into(),
                    }),
                };
            }
            Some(Ok(_)) => {}
        }
    };
    let _ = restorer.unassign();
    result
}
