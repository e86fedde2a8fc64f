//! The engine loop: one consumer-group member on one thread.
//!
//! Each turn of the loop:
//! 1. advances the restores of tasks just assigned (a slice at a time; see `restore.rs`);
//! 2. polls: waits only when there is nothing to do (up to `IDLE_WAIT`), then drains what the
//!    consumer holds without waiting, up to `max_batch` records or `commit_interval`;
//! 3. retries records whose retry time has come (a task with a retrying record has its input
//!    partitions paused and holds later records back, so order per partition is kept while
//!    the member goes on polling, heart-beating and committing its other tasks);
//! 4. fires due timers and runs retention sweeps;
//! 5. asks each task's processor which inputs it admits (backpressure, `Processor::admits`),
//!    pausing the inputs a task refuses and resuming those it admits again;
//! 6. commits (`commit.rs`) every `commit_interval`. At-least-once, a record's outputs are sent
//!    as soon as it succeeds, so the next hop never waits for a commit and a batch may stay
//!    open that long; exactly-once, outputs leave with the transaction, so a drained input
//!    commits once the batch is `min_commit_interval` old.
//!
//! Rebalances arrive as callbacks inside `poll`, on this thread, so they see the engine between
//! records. A revoke commits what is pending (unless the assignment is lost, when it is
//! forgotten) and closes the tasks; an assignment opens tasks not ready yet, pauses their
//! partitions and leaves the restore to the loop. Every assignment checks every store against
//! its changelog, so a task that comes back after another member owned it reads that member's
//! writes. The engine sits behind a mutex only because the consumer's context must be `Sync`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;
use tributary_runtime::kafka::client_config;

use crate::clock::Clock;
use crate::config::{Guarantee, StreamsConfig};
use crate::dlq::{dead_letter, dlq_topic};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::restore::Restore;
use crate::store::KvStore;
use crate::task::{Blocked, Outcome, Task};
use crate::ProcessorFactory;

/// Longest wait in `poll` when there is nothing to do: bounds how late a wall-clock timer fires.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Time given to restores per loop turn before the loop polls again.
const RESTORE_SLICE: Duration = Duration::from_millis(100);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// How often the local copies are made durable on disk (redb's fsync).
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Where a test's kill switch stops the engine, as `kill -9` would at that moment: nothing
/// after it happens (no local write, no flush, no offset commit).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPoint {
    /// Outputs and changelog entries sent, none awaited.
    BeforeAcks,
    /// Outputs and changelog acknowledged; the commit marker not written.
    AfterChangelogAck,
    /// The commit marker acknowledged; local stores and group offsets not written.
    AfterMarker,
}

pub(crate) struct Engine {
    pub cfg: Arc<StreamsConfig>,
    pub factory: ProcessorFactory,
    pub producer: FutureProducer,
    pub restorer: Option<BaseConsumer>,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub tasks: BTreeMap<i32, Task>,
    pub restores: BTreeMap<i32, Restore>,
    /// Set when the app is being killed: nothing may be flushed or committed any more.
    pub aborted: bool,
    /// Set after a fatal transaction error: the producer is unusable, so no commit is tried.
    pub producer_failed: bool,
    /// An error raised inside a rebalance callback, picked up by the loop.
    pub fatal: Option<Error>,
    pub batch_time: Duration,
    pub last_poll: Instant,
    pub kill: Option<(CancellationToken, KillPoint)>,
    /// Commit the group's offsets synchronously (revoke, shutdown).
    pub sync_offsets: bool,
    /// Back-off after a failed commit, and until when every task is paused for it.
    pub commit_backoff: Option<Duration>,
    paused_until: Option<Instant>,
    /// Outputs sent ahead of the commit (at-least-once), awaited by it.
    pub in_flight: Vec<DeliveryFuture>,
    /// Inputs paused by backpressure, as (task, topic): kept paused by every resume until the
    /// task's processor admits them again.
    held: BTreeSet<(i32, String)>,
    /// The first error of such an early send; the commit fails with it.
    pub send_error: Option<Error>,
    lag_updated: Instant,
    flushed: Instant,
    swept: Instant,
}

pub(crate) fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // Processor panics are caught inside the task, so a poisoned lock only follows a panic of
    // the engine itself; its state is still coherent (nothing half-committed is kept).
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(
        cfg: Arc<StreamsConfig>,
        factory: ProcessorFactory,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        kill: Option<(CancellationToken, KillPoint)>,
    ) -> Result<Engine> {
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
        pcfg.set("linger.ms", cfg.linger.as_millis().to_string())
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "500000")
            // Java's partitioner, so outputs land where other clients would put the same key.
            .set("partitioner", "murmur2_random");
        if cfg.idempotent_producer || cfg.guarantee == Guarantee::ExactlyOnce {
            // Ordered per partition across retries with several requests in flight.
            pcfg.set("enable.idempotence", "true");
        } else {
            // Keeps each partition in write order across retries without broker support.
            pcfg.set("max.in.flight.requests.per.connection", "1");
        }
        let producer: FutureProducer = pcfg.create()?;
        if cfg.guarantee == Guarantee::ExactlyOnce {
            producer.init_transactions(Duration::from_secs(30))?;
        }
        let restorer: BaseConsumer = client_config(&cfg.brokers)
            .set("group.id", format!("{}-restore", cfg.application_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", cfg.fetch_wait.as_millis().to_string())
            .create()?;
        let long_ago = Instant::now()
            .checked_sub(LAG_INTERVAL)
            .unwrap_or_else(Instant::now);
        Ok(Engine {
            cfg,
            factory,
            producer,
            restorer: Some(restorer),
            metrics,
            clock,
            tasks: BTreeMap::new(),
            restores: BTreeMap::new(),
            aborted: false,
            producer_failed: false,
            fatal: None,
            batch_time: Duration::ZERO,
            last_poll: Instant::now(),
            kill,
            sync_offsets: false,
            commit_backoff: None,
            paused_until: None,
            in_flight: Vec::new(),
            held: BTreeSet::new(),
            send_error: None,
            lag_updated: long_ago,
            flushed: Instant::now(),
            swept: Instant::now(),
        })
    }

    /// Whether the kill switch is set for `point`; if so the engine is dead from here on.
    pub fn kill_at(&mut self, point: KillPoint) -> bool {
        match &self.kill {
            Some((token, at)) if token.is_cancelled() && *at == point => {
                tracing::warn!(?point, "killed by the test switch");
                self.aborted = true;
                true
            }
            _ => false,
        }
    }

    fn app(&self) -> &str {
        &self.cfg.application_id
    }

    /// The assigned input partitions of `task`.
    fn task_partitions<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        task: i32,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        if let Ok(assigned) = consumer.assignment() {
            for e in assigned.elements() {
                if e.partition() == task {
                    tpl.add_partition(e.topic(), task);
                }
            }
        }
        tpl
    }

    fn pause<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, task: i32) {
        let tpl = self.task_partitions(consumer, task);
        if tpl.count() > 0 {
            if let Err(e) = consumer.pause(&tpl) {
                tracing::warn!(task, error = %e, "pause failed");
            }
        }
    }

    fn resume<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, task: i32) {
        let mut tpl = TopicPartitionList::new();
        for e in self.task_partitions(consumer, task).elements() {
            // An input held back by backpressure stays paused until its task admits it.
            if !self.held.contains(&(task, e.topic().to_string())) {
                tpl.add_partition(e.topic(), task);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(task, error = %e, "resume failed");
            }
        }
    }

    /// Pauses every task's inputs until `until` (a back-off after a failed commit); the loop
    /// keeps polling, so the member stays in the group.
    pub fn pause_all<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, until: Instant) {
        let ids: Vec<i32> = self.tasks.keys().copied().collect();
        for id in ids {
            self.pause(consumer, id);
        }
        self.paused_until = Some(until);
    }

    /// Ends a back-off that has run out: resumes the tasks that are ready and not retrying.
    pub fn resume_after_backoff<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        match self.paused_until {
            Some(t) if t <= Instant::now() => {}
            _ => return,
        }
        self.paused_until = None;
        let ids: Vec<i32> = self
            .tasks
            .values()
            .filter(|t| t.ready && t.blocked.is_none() && t.backlog.is_empty())
            .map(|t| t.id)
            .collect();
        for id in ids {
            self.resume(consumer, id);
        }
    }

    /// Hands one polled record to its task, or holds it back while the task restores or
    /// retries an earlier record.
    pub fn dispatch<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        record: crate::Record,
    ) {
        let Some(task) = self.tasks.get_mut(&record.partition) else {
            // librdkafka can still hand out a record fetched before its partition was revoked.
            return;
        };
        if !task.ready || task.blocked.is_some() || !task.backlog.is_empty() {
            task.backlog.push_back(record);
            return;
        }
        let id = task.id;
        let blocked = self.run_record(id, record);
        self.send_outputs(id);
        if blocked {
            self.pause(consumer, id);
        }
    }

    /// Processes `record` in task `id`; true when it failed retriably and the task is now
    /// blocked on it.
    fn run_record(&mut self, id: i32, record: crate::Record) -> bool {
        let app = self.cfg.application_id.clone();
        let clock = self.clock.clone();
        let Some(task) = self.tasks.get_mut(&id) else {
            return false;
        };
        if let Some(&committed) = task.committed_offsets.get(&record.topic) {
            if record.offset < committed {
                // Already in the state (the marker covers it); fetched again because the
                // group's offsets lagged the marker.
                self.metrics.skipped.with_label_values(&[&app]).inc();
                // Counted into the batch's offsets all the same, so the group's offsets catch
                // up with the marker (lag and the next owner's start depend on them).
                task.skip_consumed(&record);
                return false;
            }
        }
        let started = Instant::now();
        let outcome = task.process(&record, clock.as_ref());
        let took = started.elapsed();
        self.batch_time += took;
        self.metrics
            .record_duration
            .with_label_values(&[&app])
            .observe(took.as_secs_f64());
        match outcome {
            Outcome::Done => false,
            Outcome::Retry(e) => {
                tracing::warn!(app, task = id, record = %record.id(), error = %e, "retriable failure; pausing the task's partitions and retrying");
                self.metrics.retries.with_label_values(&[&app]).inc();
                let now = Instant::now();
                task.blocked = Some(Blocked {
                    record,
                    next_try: now + FIRST_BACKOFF,
                    backoff: FIRST_BACKOFF,
                    since: now,
                    error: e.to_string(),
                });
                true
            }
        }
    }

    /// Retries blocked records whose time has come, then lets their tasks catch up on the
    /// records held back meanwhile.
    pub fn retry_due<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let now = Instant::now();
        let app = self.cfg.application_id.clone();
        let ids: Vec<i32> = self.tasks.keys().copied().collect();
        for id in ids {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            if !task.ready {
                continue;
            }
            if let Some(b) = &task.blocked {
                self.metrics
                    .retrying_seconds
                    .with_label_values(&[&app, &id.to_string()])
                    .set(b.since.elapsed().as_secs() as i64);
                if b.next_try > now {
                    continue;
                }
                let b = task.blocked.take().expect("checked");
                if let Some(limit) = self.cfg.retry_timeout {
                    if b.since.elapsed() >= limit {
                        tracing::error!(app, task = id, record = %b.record.id(), error = %b.error, "retries exhausted; record sent to the dead-letter topic");
                        let e = Error::rejected("retries-exhausted", b.error.clone());
                        task.outputs.push(dead_letter(&b.record, &task.group, &e));
                        task.dead_letters += 1;
                        task.mark_consumed(&b.record);
                        self.after_unblock(consumer, id);
                        continue;
                    }
                }
                let (record, backoff, since) = (b.record, b.backoff, b.since);
                if self.run_record(id, record) {
                    let max = self.cfg.max_retry_backoff;
                    if let Some(b) = self.tasks.get_mut(&id).and_then(|t| t.blocked.as_mut()) {
                        b.backoff = (backoff * 2).min(max);
                        b.next_try = Instant::now() + b.backoff;
                        b.since = since;
                    }
                    continue;
                }
                self.after_unblock(consumer, id);
            } else if !task.backlog.is_empty() {
                self.after_unblock(consumer, id);
            }
        }
    }

    /// The task's blocking record is done: run what was held back, resume when caught up.
    fn after_unblock<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, id: i32) {
        let app = self.cfg.application_id.clone();
        loop {
            let Some(task) = self.tasks.get_mut(&id) else {
                return;
            };
            let Some(record) = task.backlog.pop_front() else {
                break;
            };
            if self.run_record(id, record) {
                return;
            }
        }
        self.metrics
            .retrying_seconds
            .with_label_values(&[&app, &id.to_string()])
            .set(0);
        self.resume(consumer, id);
    }

    /// Fires due timers and, now and then, retention sweeps.
    pub fn punctuate(&mut self) {
        let dlq = dlq_topic(&self.cfg.inputs[0]);
        let clock = self.clock.clone();
        let sweep = self.swept.elapsed() >= SWEEP_INTERVAL;
        if sweep {
            self.swept = Instant::now();
        }
        for task in self.tasks.values_mut().filter(|t| t.ready) {
            if let Some(e) = task.fire_timers(clock.as_ref(), &dlq) {
                tracing::debug!(task = task.id, error = %e, "timers wait for a retriable error");
            }
            if sweep {
                match task.sweep(clock.as_ref()) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(task = task.id, n, "retention sweep"),
                    Err(e) => tracing::warn!(task = task.id, error = %e, "retention sweep failed"),
                }
            }
        }
    }

    /// Backpressure: asks every ready task's processor whether it admits each of its inputs;
    /// pauses the inputs it refuses and resumes those it admits again (unless the task is
    /// retrying or backing off, whose own resume then takes them along).
    pub fn apply_backpressure<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let mut changes: Vec<(i32, String, bool, bool)> = Vec::new();
        for task in self.tasks.values().filter(|t| t.ready) {
            for topic in &self.cfg.inputs {
                let paused = self.held.contains(&(task.id, topic.clone()));
                let admit = task.processor.admits(topic, &task.load(paused));
                if admit == paused {
                    let quiet = task.blocked.is_none() && task.backlog.is_empty();
                    changes.push((task.id, topic.clone(), admit, quiet));
                }
            }
        }
        let app = self.cfg.application_id.clone();
        for (id, topic, admit, quiet) in changes {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, id);
            if admit {
                self.held.remove(&(id, topic.clone()));
                if quiet && self.paused_until.is_none() {
                    if let Err(e) = consumer.resume(&tpl) {
                        tracing::warn!(task = id, topic, error = %e, "resume failed");
                    }
                }
                tracing::debug!(task = id, topic, "input admitted again");
            } else {
                if let Err(e) = consumer.pause(&tpl) {
                    tracing::warn!(task = id, topic, error = %e, "pause failed");
                    continue;
                }
                self.held.insert((id, topic.clone()));
                self.metrics
                    .backpressure_pauses
                    .with_label_values(&[&app, &topic])
                    .inc();
                tracing::debug!(task = id, topic, "input held back (backpressure)");
            }
        }
        let held = self.held.len() as i64;
        self.metrics
            .inputs_held
            .with_label_values(&[&app])
            .set(held);
    }

    /// Advances the restores of assigned tasks; resumes a task once restored.
    pub fn restore_some<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<()> {
        let ids: Vec<i32> = self.restores.keys().copied().collect();
        let app = self.cfg.application_id.clone();
        for id in ids {
            let (Some(task), Some(restore), Some(restorer)) = (
                self.tasks.get_mut(&id),
                self.restores.get_mut(&id),
                self.restorer.as_ref(),
            ) else {
                self.restores.remove(&id);
                continue;
            };
            let done = match restore.step(task, restorer, RESTORE_SLICE, &self.metrics, &app) {
                Ok(done) => done,
                Err(e) if e.retriable() => {
                    tracing::warn!(task = id, error = %e, "restore will be tried again");
                    false
                }
                Err(e) => return Err(e),
            };
            if !done {
                return Ok(());
            }
            self.restores.remove(&id);
            let clock = self.clock.clone();
            let task = self.tasks.get_mut(&id).expect("present");
            task.ready = true;
            task.attempt(None, clock.as_ref(), |p, ctx| p.init(ctx))?;
            // Before its inputs resume: an input the task refuses stays paused from the start.
            self.apply_backpressure(consumer);
            self.after_unblock(consumer, id);
        }
        Ok(())
    }

    pub fn restoring(&self) -> bool {
        !self.restores.is_empty()
    }

    pub fn has_pending(&self) -> bool {
        self.tasks.values().any(|t| t.ready && t.has_pending())
    }

    /// Time until the earliest retry is due (`None`: no retry waits).
    pub fn next_retry_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.tasks
            .values()
            .filter_map(|t| t.blocked.as_ref())
            .map(|b| b.next_try.saturating_duration_since(now))
            .min()
    }

    /// Forgets every task's uncommitted batch and seeks its inputs back to the first record
    /// not committed (the batch's, a held-back one's, or the retrying one's).
    pub fn abort_all<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let ids: Vec<i32> = self.tasks.keys().copied().collect();
        for id in ids {
            let mut seeks: BTreeMap<String, i64> = BTreeMap::new();
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            if !task.ready {
                // Restoring: no batch yet, and its held-back records stay held back.
                continue;
            }
            let mut earliest = |topic: &str, off: i64| {
                let e = seeks.entry(topic.to_string()).or_insert(off);
                *e = (*e).min(off);
            };
            for (topic, (first, _)) in &task.consumed {
                earliest(topic, *first);
            }
            if let Some(b) = &task.blocked {
                earliest(&b.record.topic, b.record.offset);
            }
            for r in &task.backlog {
                earliest(&r.topic, r.offset);
            }
            let had_pending = task.has_pending();
            task.abort_batch();
            task.blocked = None;
            task.backlog.clear();
            if had_pending {
                // A new number: the abandoned entries must never look committed.
                task.next_seq += 1;
            }
            for (topic, off) in seeks {
                if let Err(e) =
                    consumer.seek(&topic, id, Offset::Offset(off), Duration::from_secs(5))
                {
                    tracing::warn!(topic, partition = id, error = %e, "seek failed");
                }
            }
            self.resume(consumer, id);
        }
        // Sent outputs stay sent (their records are read again: at least once); their
        // acknowledgements no longer matter.
        self.in_flight.clear();
        self.send_error = None;
        self.batch_time = Duration::ZERO;
    }

    pub fn on_revoke<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.aborted {
            return;
        }
        if consumer.assignment_lost() {
            tracing::warn!(app = %self.app(), "assignment lost: forgetting the uncommitted batch");
            self.abort_all(consumer);
        } else {
            self.sync_offsets = true;
            if let Err(e) = self.commit(consumer) {
                tracing::error!(error = %e, "commit before revoke failed");
                self.fatal = Some(e);
            }
            self.sync_offsets = false;
        }
        // Every task closes; the next assignment reopens what it hands back, checking each
        // store against its changelog (another member may have written to it meanwhile).
        self.restores.clear();
        self.held.clear();
        for (_, task) in std::mem::take(&mut self.tasks) {
            task.close(true);
        }
    }

    pub fn on_assign<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        assigned: BTreeSet<i32>,
    ) -> Result<()> {
        let gone: Vec<i32> = self
            .tasks
            .keys()
            .filter(|id| !assigned.contains(id))
            .copied()
            .collect();
        self.held.retain(|(id, _)| assigned.contains(id));
        for id in gone {
            self.restores.remove(&id);
            if let Some(task) = self.tasks.remove(&id) {
                task.close(!self.aborted);
            }
        }
        for id in assigned {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let task = self.open_task(id)?;
            let restore = Restore::new(
                &task,
                self.cfg.commits_topic(),
                self.cfg.guarantee == Guarantee::ExactlyOnce,
            );
            self.tasks.insert(id, task);
            self.restores.insert(id, restore);
            self.pause(consumer, id);
        }
        Ok(())
    }

    fn open_task(&mut self, id: i32) -> Result<Task> {
        let dir = self.cfg.task_dir(id);
        let mut stores = HashMap::new();
        for name in self.cfg.all_stores() {
            let retention = self
                .cfg
                .retention
                .get(name)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let store = KvStore::open(&dir, name, &self.cfg.changelog_topic(name), retention)?;
            stores.insert(name.to_string(), store);
        }
        Ok(Task::new(
            id,
            Arc::from(self.cfg.application_id.as_str()),
            (self.factory)(id),
            stores,
        ))
    }

    /// Makes the local copies durable now and then (their tail is otherwise re-read from the
    /// changelog after a power cut).
    pub fn maybe_flush(&mut self) {
        if self.flushed.elapsed() < FLUSH_INTERVAL || self.aborted {
            return;
        }
        self.flushed = Instant::now();
        for task in self.tasks.values() {
            for store in task.stores.values() {
                if let Err(e) = store.flush() {
                    tracing::warn!(task = task.id, store = %store.name, error = %e, "flush failed");
                }
            }
        }
    }

    pub fn update_lag<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        // Lag needs a round trip per partition, so it is refreshed every few seconds only
        // (and as soon as a first committed position is known).
        if self.lag_updated.elapsed() < LAG_INTERVAL {
            return;
        }
        let Some(r) = &self.restorer else { return };
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        let mut set = false;
        for e in assigned.elements() {
            let Some(task) = self.tasks.get(&e.partition()) else {
                continue;
            };
            let Some(&next) = task.committed_offsets.get(e.topic()) else {
                continue;
            };
            if let Ok((_, high)) =
                r.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1))
            {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[
                        self.cfg.application_id.as_str(),
                        e.topic(),
                        &e.partition().to_string(),
                    ])
                    .set((high - next).max(0));
                set = true;
            }
        }
        if set {
            self.lag_updated = Instant::now();
        }
    }

    pub fn close_all(&mut self, flush: bool) {
        self.restores.clear();
        for (_, task) in std::mem::take(&mut self.tasks) {
            task.close(flush);
        }
    }

    pub fn restorer_close(&mut self, timeout: Duration) {
        if let Some(r) = self.restorer.take() {
            tributary_runtime::kafka::close_consumer(&r, timeout);
        }
    }
}

/// The engine loop; returns when `shutdown` fires, a fatal error occurs, or the kill switch hit.
pub(crate) fn run_loop(
    cfg: &StreamsConfig,
    engine: &Mutex<Engine>,
    consumer: &BaseConsumer<Rebalancer>,
    shutdown: &CancellationToken,
) -> Result<()> {
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        {
            let mut e = lock(engine);
            if e.aborted {
                return Ok(());
            }
            if let Some(err) = e.fatal.take() {
                return Err(err);
            }
            e.restore_some(consumer)?;
        }
        let wait = {
            let e = lock(engine);
            if e.has_pending() || e.restoring() {
                Duration::ZERO
            } else {
                e.next_retry_in().map_or(IDLE_WAIT, |d| d.min(IDLE_WAIT))
            }
        };
        let batch_span = match cfg.guarantee {
            Guarantee::AtLeastOnce => cfg.commit_interval,
            Guarantee::ExactlyOnce => cfg.min_commit_interval,
        };
        let started = Instant::now();
        let mut n = 0;
        let mut wait = wait;
        while n < cfg.max_batch && started.elapsed() < cfg.commit_interval {
            let polled = consumer.poll(wait);
            lock(engine).last_poll = Instant::now();
            match polled {
                // Drained, with a batch open. At-least-once, its outputs are already on their
                // way, so nothing downstream waits for the commit: keep the batch open for the
                // whole commit interval (fewer, larger commits; a key written several times in
                // it reaches the changelog once). Exactly-once, the outputs leave with the
                // commit, so commit once the batch is `min_commit_interval` old.
                None if (n > 0 || lock(engine).has_pending()) && started.elapsed() < batch_span => {
                    wait = batch_span.saturating_sub(started.elapsed()).min(IDLE_WAIT);
                }
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Some(Ok(m)) => {
                    let record = crate::Record::from_message(&m);
                    drop(m);
                    lock(engine).dispatch(consumer, record);
                    n += 1;
                    wait = Duration::ZERO;
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        let mut e = lock(engine);
        if let Some(err) = e.fatal.take() {
            return Err(err);
        }
        e.resume_after_backoff(consumer);
        e.retry_due(consumer);
        e.punctuate();
        e.send_all_outputs();
        e.commit(consumer)?;
        e.apply_backpressure(consumer);
        e.maybe_flush();
        e.update_lag(consumer);
    }
}

pub(crate) fn consumer_config(cfg: &StreamsConfig) -> rdkafka::config::ClientConfig {
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
        )
        .set(
            "max.poll.interval.ms",
            cfg.max_poll_interval.as_millis().max(1).to_string(),
        )
        // Low latency per hop: the broker answers a fetch after at most this long.
        .set("fetch.wait.max.ms", cfg.fetch_wait.as_millis().to_string())
        // Bounded prefetch, so a reply is not queued behind megabytes of new orders.
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.max.bytes", "4194304");
    c
}

/// The consumer context: forwards rebalances to the engine.
pub(crate) struct Rebalancer {
    pub engine: Arc<Mutex<Engine>>,
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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut e = lock(&self.engine);
            let parts = task_ids(tpl);
            tracing::info!(app = %e.cfg.application_id, tasks = ?parts, "partitions assigned");
            if let Err(err) = e.on_assign(consumer, parts) {
                tracing::error!(error = %err, "creating tasks failed");
                e.fatal = Some(err);
            }
        }
    }
}

fn task_ids(tpl: &TopicPartitionList) -> BTreeSet<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}
