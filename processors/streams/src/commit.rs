//! Commit: making a batch's effects durable, and only then marking its input processed.
//!
//! # At-least-once (the local broker has no transactions)
//!
//! One batch of one task is numbered `seq`. Its commit:
//!
//! 1. **produce**: the batch's outputs and dead letters (sent as each record succeeded, so the
//!    next hop starts on them while the batch is open) and its changelog entries (each carrying
//!    `seq` and the key's committed value before the batch, `prev`), all acknowledged;
//! 2. **commit point**: the task's commit marker — `seq` and the next input offset of every
//!    input partition of the task — produced to `<app>-_commits` (compacted, partition = task)
//!    and acknowledged;
//! 3. **store**: the batch written to the local copy with its changelog checkpoint;
//! 4. **offsets**: the consumer group's offsets, asynchronously. They only tell where fetching
//!    resumes; the marker is what says what the state holds.
//!
//! Why every crash point is safe:
//! - *before the marker is acknowledged* (between an output's send and its ack, between the
//!   changelog's ack and the marker): the marker still names batch `seq - 1`, so a restore gives
//!   every key the batch wrote its `prev` back — in every store at once, `seen` ids and timers
//!   included — and the input offsets of the batch were not committed, so its records are read
//!   again and processed against the state they first saw. Outputs already acknowledged are
//!   produced again: at least once, never zero times.
//! - *after the marker, before the local write or the group's offsets*: the restore applies
//!   the batch from the changelog, and records below the marker's offsets that are fetched again
//!   are skipped (`tributary_processor_skipped_records_total`), so nothing is applied twice.
//! - *a failed write or a failed marker* in a running process: the batch is forgotten, its keys
//!   marked dirty (the next batch writes their committed values back into the changelog), its
//!   records re-read, and the next batch takes a new number, so the abandoned entries are never
//!   taken for a committed batch.
//!
//! Fencing: a commit is not started once librdkafka reports the assignment lost, nor after the
//! engine went longer than `max.poll.interval.ms` without polling (the group has moved the
//! partitions by then); the batch is forgotten instead. Without broker transactions a member
//! paused *inside* a commit for longer than the session timeout can still write afterwards;
//! exactly-once mode closes that gap with the transaction's producer fencing.
//!
//! # Exactly-once (brokers with transactions)
//!
//! The same produce step and the input offsets go into one Kafka transaction; the restore reads
//! `read_committed`, so an aborted transaction's entries are never seen and no marker is needed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Guarantee;
use crate::engine::{Engine, KillPoint};
use crate::error::{Error, Result};
use crate::record::Output;

const MARKER_V1: u8 = 1;
const MARKER_KEY: &[u8] = b"commit";

/// A task's commit point: the last committed batch and the input positions it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Marker {
    pub seq: u64,
    /// Per input topic, the next offset to process on the task's partition.
    pub offsets: BTreeMap<String, i64>,
}

impl Marker {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MARKER_V1];
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&(self.offsets.len() as u16).to_be_bytes());
        for (topic, off) in &self.offsets {
            out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            out.extend_from_slice(topic.as_bytes());
            out.extend_from_slice(&off.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Marker> {
        let (&v, rest) = bytes.split_first()?;
        if v != MARKER_V1 {
            return None;
        }
        let seq = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let n = u16::from_be_bytes(rest.get(8..10)?.try_into().ok()?);
        let mut rest = rest.get(10..)?;
        let mut offsets = BTreeMap::new();
        for _ in 0..n {
            let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let topic = std::str::from_utf8(rest.get(2..2 + len)?).ok()?.to_string();
            let off = i64::from_be_bytes(rest.get(2 + len..10 + len)?.try_into().ok()?);
            offsets.insert(topic, off);
            rest = rest.get(10 + len..)?;
        }
        rest.is_empty().then_some(Marker { seq, offsets })
    }
}

/// Where a failed commit leaves the batch.
enum Failed {
    /// Forget the batch and read its records again.
    Abort(Error),
    /// The producer is unusable (fenced, fatal): stop the app.
    Fatal(Error),
}

impl Engine {
    /// Commits every task's pending batch: at-least-once or in a transaction, as configured.
    pub(crate) fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<()> {
        if self.aborted || self.producer_failed {
            return Ok(());
        }
        if !self.tasks.values().any(|t| t.ready && t.has_pending()) {
            return Ok(());
        }
        if consumer.assignment_lost() || self.last_poll.elapsed() > self.cfg.max_poll_interval {
            tracing::warn!(app = %self.cfg.application_id, "the group moved our partitions (assignment lost or poll interval exceeded): forgetting the batch");
            self.abort_all(consumer);
            return Ok(());
        }
        let res = match self.cfg.guarantee {
            Guarantee::AtLeastOnce => self.commit_at_least_once(consumer),
            Guarantee::ExactlyOnce => self.commit_transaction(consumer),
        };
        match res {
            Ok(()) => {
                self.count_commit("ok");
                self.commit_backoff = None;
                Ok(())
            }
            Err(Failed::Abort(e)) => {
                if self.aborted {
                    return Ok(());
                }
                self.count_commit("aborted");
                if too_large(&e) {
                    // Retrying cannot help, and skipping would lose the record's effects: stop
                    // with an error naming the cause, for an operator to raise the limit.
                    tracing::error!(error = %e, "an output or changelog record is larger than the broker accepts; stopping");
                    self.abort_all(consumer);
                    return Err(e);
                }
                // Infrastructure (broker down, timeouts, authorization, a missing topic): the
                // batch is read again after a back-off, the member polling meanwhile.
                let backoff = self.commit_backoff.map_or(Duration::from_millis(100), |b| {
                    (b * 2).min(self.cfg.max_retry_backoff)
                });
                tracing::warn!(error = %e, ?backoff, "committing the batch failed; reading it again after a back-off");
                self.abort_all(consumer);
                self.commit_backoff = Some(backoff);
                self.pause_all(consumer, Instant::now() + backoff);
                Ok(())
            }
            Err(Failed::Fatal(e)) => {
                self.count_commit("aborted");
                self.producer_failed = true;
                Err(e)
            }
        }
    }

    fn commit_at_least_once<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> std::result::Result<(), Failed> {
        let t0 = Instant::now();
        let changelog = self.produce_batch().map_err(Failed::Abort)?;
        if self.kill_at(KillPoint::BeforeAcks) {
            return Err(Failed::Abort(Error::transient("killed")));
        }
        let offsets = self.await_batch(changelog).map_err(Failed::Abort)?;
        let t1 = Instant::now();
        if self.kill_at(KillPoint::AfterChangelogAck) {
            return Err(Failed::Abort(Error::transient("killed")));
        }
        self.write_markers().map_err(Failed::Abort)?;
        let t2 = Instant::now();
        if self.kill_at(KillPoint::AfterMarker) {
            return Err(Failed::Abort(Error::transient("killed")));
        }
        let tpl = self.finish_batch(&offsets).map_err(Failed::Fatal)?;
        let t3 = Instant::now();
        if tpl.count() > 0 {
            // Synchronous when the partitions are about to go (revoke, shutdown), so the next
            // owner starts where we stopped instead of skipping records below the marker.
            let mode = if self.sync_offsets {
                CommitMode::Sync
            } else {
                CommitMode::Async
            };
            if let Err(e) = consumer.commit(&tpl, mode) {
                // The marker is the commit point; the group's offsets only save re-reading.
                tracing::debug!(error = %e, "group offset commit failed");
            }
        }
        self.observe_phases(&[
            ("produce", t1 - t0),
            ("marker", t2 - t1),
            ("store", t3 - t2),
            ("offsets", t3.elapsed()),
        ]);
        Ok(())
    }

    fn commit_transaction<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> std::result::Result<(), Failed> {
        let t0 = Instant::now();
        let txn_timeout = Duration::from_secs(30);
        let attempt = (|| -> Result<HashMap<(i32, String), i64>> {
            self.producer.begin_transaction()?;
            let changelog = self.produce_batch()?;
            let offsets = self.await_batch(changelog)?;
            let tpl = self.pending_offsets()?;
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
                let t1 = Instant::now();
                self.finish_batch(&offsets).map_err(Failed::Fatal)?;
                self.observe_phases(&[("produce", t1 - t0), ("store", t1.elapsed())]);
                Ok(())
            }
            Err(e) => {
                if txn_fatal(&e) {
                    tracing::error!(error = %e, "transaction failed fatally (fenced?); stopping");
                    return Err(Failed::Fatal(e));
                }
                tracing::warn!(error = %e, "transaction failed; aborting it");
                // A failed batch can leave records queued or in flight; the abort would wait
                // for them, so drop them first: the transaction is being thrown away anyway.
                self.producer
                    .purge(PurgeConfig::default().queue().inflight());
                let mut tries = 0;
                while let Err(abort) = self.producer.abort_transaction(txn_timeout) {
                    tries += 1;
                    let retriable =
                        matches!(&abort, KafkaError::Transaction(t) if t.is_retriable());
                    if !retriable || tries >= 3 {
                        tracing::error!(error = %abort, "abort failed; stopping");
                        return Err(Failed::Fatal(abort.into()));
                    }
                    tracing::warn!(error = %abort, "abort failed; trying again");
                }
                // Aborted: nothing of the batch is visible; read it again.
                Err(Failed::Abort(Error::transient(format!(
                    "transaction aborted: {e}"
                ))))
            }
        }
    }

    /// Sends the outputs, dead letters and changelog entries of every ready task's batch.
    fn produce_batch(&mut self) -> Result<PendingBatch> {
        // An output sent early failed at once (too large, say): the batch cannot commit.
        if let Some(e) = self.send_error.take() {
            return Err(e);
        }
        let now = self.clock.now_ms();
        // Outputs already sent as their records succeeded are awaited with the rest.
        let mut outputs = std::mem::take(&mut self.in_flight);
        let mut changelog = Vec::new();
        for task in self.tasks.values().filter(|t| t.ready && t.has_pending()) {
            for o in &task.outputs {
                outputs.push(send(&self.producer, output_record(o))?);
            }
            for store in task.stores.values() {
                for r in store.changelog_records(task.next_seq, now)? {
                    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&store.changelog)
                        .partition(task.id)
                        .key(r.key.as_slice());
                    if let Some(v) = &r.value {
                        rec = rec.payload(v.as_slice());
                    }
                    changelog.push(((task.id, store.name.clone()), send(&self.producer, rec)?));
                }
            }
        }
        Ok(PendingBatch { outputs, changelog })
    }

    /// Waits for every acknowledgement; the highest changelog offset per (task, store).
    fn await_batch(&self, batch: PendingBatch) -> Result<HashMap<(i32, String), i64>> {
        let mut first_err = None;
        for r in futures::executor::block_on(join_all(batch.outputs)) {
            if let Err(e) = delivered(r) {
                first_err.get_or_insert(e);
            }
        }
        let (keys, futs): (Vec<_>, Vec<_>) = batch.changelog.into_iter().unzip();
        let results = futures::executor::block_on(join_all(futs));
        let mut offsets: HashMap<(i32, String), i64> = HashMap::new();
        for (key, r) in keys.into_iter().zip(results) {
            match delivered(r) {
                Ok(off) => {
                    let e = offsets.entry(key).or_insert(off);
                    *e = (*e).max(off);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(offsets),
        }
    }

    /// Produces every ready task's commit marker and waits for the acknowledgements.
    fn write_markers(&mut self) -> Result<()> {
        let topic = self.cfg.commits_topic();
        let mut futs = Vec::new();
        for task in self.tasks.values().filter(|t| t.ready && t.has_pending()) {
            let mut offsets = task.committed_offsets.clone();
            for (t, (_, next)) in &task.consumed {
                let e = offsets.entry(t.clone()).or_insert(*next);
                *e = (*e).max(*next);
            }
            let marker = Marker {
                seq: task.next_seq,
                offsets,
            }
            .encode();
            let rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
                .partition(task.id)
                .key(MARKER_KEY)
                .payload(marker.as_slice());
            futs.push(send(&self.producer, rec)?);
        }
        for r in futures::executor::block_on(join_all(futs)) {
            delivered(r)?;
        }
        Ok(())
    }

    /// The next offset of every input partition processed in this batch.
    fn pending_offsets(&self) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for task in self.tasks.values().filter(|t| t.ready) {
            for (topic, (_, next)) in &task.consumed {
                tpl.add_partition_offset(topic, task.id, Offset::Offset(*next))?;
            }
        }
        Ok(tpl)
    }

    /// The batch passed its commit point: write the stores locally, move the tasks on, count
    /// it. Returns the group offsets to commit.
    fn finish_batch(
        &mut self,
        changelog_offsets: &HashMap<(i32, String), i64>,
    ) -> Result<TopicPartitionList> {
        let tpl = self.pending_offsets()?;
        let mut out = 0u64;
        let mut dlq = 0u64;
        let mut input = 0u64;
        for task in self
            .tasks
            .values_mut()
            .filter(|t| t.ready && t.has_pending())
        {
            out += task.sent + task.outputs.len() as u64 - task.dead_letters;
            dlq += task.dead_letters;
            input += task.batch_in;
            task.outputs.clear();
            task.sent = 0;
            task.dead_letters = 0;
            task.batch_in = 0;
            for (t, (_, next)) in std::mem::take(&mut task.consumed) {
                let e = task.committed_offsets.entry(t).or_insert(next);
                *e = (*e).max(next);
            }
            for store in task.stores.values_mut() {
                let off = changelog_offsets
                    .get(&(task.id, store.name.clone()))
                    .copied();
                store.commit_batch(off)?;
            }
            task.committed_seq = task.next_seq;
            task.next_seq += 1;
        }
        let app = self.cfg.application_id.as_str();
        let labels = [app, self.cfg.processor_name.as_str()];
        let m = &self.metrics;
        m.records_in.with_label_values(&labels).inc_by(input);
        m.records_out.with_label_values(&labels).inc_by(out);
        m.dlq_records.with_label_values(&labels).inc_by(dlq);
        m.records_per_commit
            .with_label_values(&[app])
            .observe(input as f64);
        if input > 0 {
            m.process_duration
                .with_label_values(&labels)
                .observe(self.batch_time.as_secs_f64());
        }
        self.batch_time = Duration::ZERO;
        Ok(tpl)
    }

    fn observe_phases(&self, phases: &[(&str, Duration)]) {
        for (phase, d) in phases {
            self.metrics
                .commit_duration
                .with_label_values(&[self.cfg.application_id.as_str(), phase])
                .observe(d.as_secs_f64());
        }
    }

    pub(crate) fn count_commit(&self, outcome: &str) {
        self.metrics
            .commits
            .with_label_values(&[self.cfg.application_id.as_str(), outcome])
            .inc();
    }
}

pub(crate) struct PendingBatch {
    outputs: Vec<DeliveryFuture>,
    changelog: Vec<((i32, String), DeliveryFuture)>,
}

/// Whether a produce failed because a record is larger than the broker or client accepts.
fn too_large(e: &Error) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e,
        Error::Kafka(k) if matches!(
            k.rdkafka_error_code(),
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge)
        )
    )
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

/// The producer record of one output or dead letter.
fn output_record(o: &Output) -> FutureRecord<'_, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
    for (k, v) in &o.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&o.topic).headers(headers);
    if let Some(k) = &o.key {
        rec = rec.key(k.as_slice());
    }
    if let Some(v) = &o.value {
        rec = rec.payload(v.as_slice());
    }
    rec
}

impl Engine {
    /// At-least-once: sends the outputs and dead letters of task `id` now, without waiting for
    /// the commit, so the next hop can start on them while this batch is still open. The
    /// commit awaits their acknowledgements with the changelog's, before its marker, so the
    /// protocol's order (every effect acknowledged before the commit point) is unchanged; a
    /// batch that does not commit sends them again when its records are re-read (at least
    /// once). Exactly-once keeps them for the transaction.
    pub(crate) fn send_outputs(&mut self, id: i32) {
        if self.cfg.guarantee != Guarantee::AtLeastOnce || self.aborted {
            return;
        }
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        for o in task.outputs.drain(..) {
            match send(&self.producer, output_record(&o)) {
                Ok(f) => self.in_flight.push(f),
                Err(e) => {
                    self.send_error.get_or_insert(e);
                }
            }
            task.sent += 1;
        }
    }

    /// [`send_outputs`](Self::send_outputs) for every task.
    pub(crate) fn send_all_outputs(&mut self) {
        let ids: Vec<i32> = self
            .tasks
            .values()
            .filter(|t| !t.outputs.is_empty())
            .map(|t| t.id)
            .collect();
        for id in ids {
            self.send_outputs(id);
        }
    }
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
                std::thread::sleep(Duration::from_millis(2));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_roundtrip_and_garbage() {
        let m = Marker {
            seq: 42,
            offsets: [("a".to_string(), 7), ("commands.orders".to_string(), -1)].into(),
        };
        assert_eq!(Marker::decode(&m.encode()), Some(m.clone()));
        assert_eq!(
            Marker::decode(&Marker::default().encode()),
            Some(Marker::default())
        );
        let mut long = m.encode();
        long.push(0);
        assert!(Marker::decode(&long).is_none());
        assert!(Marker::decode(&[1, 0]).is_none());
        assert!(Marker::decode(b"").is_none());
    }
}
