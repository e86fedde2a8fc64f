//! A task: the processor instance and stores of one input partition number, and what happens to
//! one record or one timer inside it. The engine (`engine.rs`) and the test driver
//! (`testing.rs`) both drive tasks through this module, so the driver tests the same code.
//!
//! Guarantees:
//! - a record's (or timer's) store writes, outputs and timer changes are kept only if it
//!   succeeds: a failure or a panic leaves the task as if it had not run;
//! - a record that fails for good, or panics, becomes a dead letter in the same batch, so its
//!   offset is committed only with its dead letter;
//! - a timer is removed in the batch that carries its callback's effects (or its dead letter),
//!   never before; a retriable failure leaves it due, to fire again on a later loop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::dlq::{dead_letter, dead_timer};
use crate::error::{Error, Result};
use crate::processor::{
    due_range, name_of_due_key, Context, Load, Processor, TimeKind, Timer, TIMERS_STORE,
};
use crate::record::{Output, Record};
use crate::store::KvStore;

/// Most timers fired per task and loop: keeps one loop's work bounded when many come due at once.
pub(crate) const MAX_PER_LOOP: usize = 1000;
/// Most keys one retention sweep deletes per store (the engine sweeps once a second).
pub(crate) const MAX_SWEEP: usize = 10_000;

/// A record waiting to be retried after a retriable failure.
pub(crate) struct Blocked {
    pub record: Record,
    pub next_try: Instant,
    pub backoff: Duration,
    pub since: Instant,
    pub error: String,
}

pub(crate) struct Task {
    pub id: i32,
    /// The application id, named in dead letters as the consumer group that failed them.
    pub group: Arc<str>,
    pub processor: Box<dyn Processor>,
    pub stores: HashMap<String, KvStore>,
    /// Outputs and dead letters of the batch not sent yet: at-least-once, the engine sends them
    /// as soon as the record that made them succeeded; exactly-once, at commit, in the
    /// transaction.
    pub outputs: Vec<Output>,
    /// Outputs and dead letters of the batch already sent (at-least-once), for metrics.
    pub sent: u64,
    pub dead_letters: u64,
    /// Per input topic: (first offset of the batch, next offset to commit).
    pub consumed: BTreeMap<String, (i64, i64)>,
    pub stream_time: i64,
    /// The last batch of this task that reached its commit point, and the next one's number.
    pub committed_seq: u64,
    pub next_seq: u64,
    /// Per input topic, the committed next offset (known from the group or our commits):
    /// where a commit without new input of that topic puts it again.
    pub committed_offsets: BTreeMap<String, i64>,
    /// Records held back while the task restores or retries, in arrival order.
    pub backlog: VecDeque<Record>,
    pub blocked: Option<Blocked>,
    /// Whether the task's stores are restored and `init` ran.
    pub ready: bool,
    /// Records the batch handled (for metrics).
    pub batch_in: u64,
}

/// What became of one record.
pub(crate) enum Outcome {
    Done,
    /// Failed with a retriable error: nothing of the attempt is kept.
    Retry(Error),
}

impl Task {
    pub fn new(
        id: i32,
        group: Arc<str>,
        processor: Box<dyn Processor>,
        stores: HashMap<String, KvStore>,
    ) -> Task {
        Task {
            id,
            group,
            processor,
            stores,
            outputs: Vec::new(),
            sent: 0,
            dead_letters: 0,
            consumed: BTreeMap::new(),
            stream_time: i64::MIN,
            committed_seq: 0,
            next_seq: 1,
            committed_offsets: BTreeMap::new(),
            backlog: VecDeque::new(),
            blocked: None,
            ready: false,
            batch_in: 0,
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.outputs.is_empty()
            || self.sent > 0
            || !self.consumed.is_empty()
            || self.stores.values().any(KvStore::has_pending)
    }

    /// What the task holds, for backpressure ([`Processor::admits`](crate::Processor::admits)):
    /// its committed timers (two keys each, see `processor.rs`).
    pub fn load(&self, paused: bool) -> Load {
        let timers = self
            .stores
            .get(TIMERS_STORE)
            .and_then(|s| s.len().ok())
            .map_or(0, |n| n / 2);
        Load { timers, paused }
    }

    /// Runs `f` with a context whose effects are kept only if it succeeds. A panic is caught and
    /// returned as [`Error::Panic`].
    pub fn attempt(
        &mut self,
        input: Option<&Record>,
        clock: &dyn Clock,
        f: impl FnOnce(&mut dyn Processor, &mut Context<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut staged = Vec::new();
        let res = {
            let mut ctx = Context {
                task: self.id,
                stores: &mut self.stores,
                outputs: &mut staged,
                input,
                group: &self.group,
                stream_time: self.stream_time,
                clock,
            };
            let processor = self.processor.as_mut();
            // The processor's own fields may be half-updated after a panic; its stores are not
            // (the attempt's writes are dropped below), and those are what later records see.
            match catch_unwind(AssertUnwindSafe(|| f(processor, &mut ctx))) {
                Ok(r) => r,
                Err(payload) => Err(Error::Panic(panic_message(payload.as_ref()))),
            }
        };
        match res {
            Ok(()) => {
                self.stores.values_mut().for_each(KvStore::keep_record);
                self.outputs.extend(staged);
                Ok(())
            }
            Err(e) => {
                self.stores.values_mut().for_each(KvStore::drop_record);
                Err(e)
            }
        }
    }

    /// Runs the processor on `record`. A non-retriable failure or a panic dead-letters it; a
    /// retriable one is returned and the record is not marked consumed.
    pub fn process(&mut self, record: &Record, clock: &dyn Clock) -> Outcome {
        if let Some(ts) = record.timestamp {
            self.stream_time = self.stream_time.max(ts);
        }
        let input = record.clone();
        match self.attempt(Some(record), clock, |p, ctx| p.process(ctx, input)) {
            Ok(()) => {}
            Err(e) if e.retriable() => return Outcome::Retry(e),
            Err(e) => {
                tracing::warn!(record = %record.id(), class = e.class(), error = %e, "record sent to the dead-letter topic");
                self.outputs.push(dead_letter(record, &self.group, &e));
                self.dead_letters += 1;
            }
        }
        self.mark_consumed(record);
        Outcome::Done
    }

    /// Counts `record` into the batch's offsets and its input count.
    pub fn mark_consumed(&mut self, record: &Record) {
        self.skip_consumed(record);
        self.batch_in += 1;
    }

    /// Counts `record` into the batch's offsets without running it: a record below the
    /// committed position (the marker's), fetched again because the group's offsets lagged.
    pub fn skip_consumed(&mut self, record: &Record) {
        let entry = self
            .consumed
            .entry(record.topic.clone())
            .or_insert((record.offset, record.offset + 1));
        entry.1 = entry.1.max(record.offset + 1);
    }

    /// Fires the due timers, by wall clock and by stream time, in due order, at most
    /// [`MAX_PER_LOOP`]. Returns the retriable error that stopped it, if any (the timer stays
    /// due and fires again on a later call).
    pub fn fire_timers(&mut self, clock: &dyn Clock, dlq: &str) -> Option<Error> {
        let now = clock.now_ms();
        let mut due: Vec<(i64, Timer)> = Vec::new();
        for (kind, upto) in [
            (TimeKind::WallClock, now),
            (TimeKind::StreamTime, self.stream_time),
        ] {
            if upto == i64::MIN {
                continue;
            }
            let (start, end) = due_range(kind, upto);
            let keys = match self
                .stores
                .get(TIMERS_STORE)
                .map(|s| s.range(&start, Some(&end), MAX_PER_LOOP))
            {
                Some(Ok(k)) => k,
                Some(Err(e)) => {
                    tracing::warn!(task = self.id, error = %e, "reading timers failed");
                    return Some(e);
                }
                None => return None,
            };
            for (k, _) in keys {
                let name = name_of_due_key(&k).unwrap_or_default();
                let due_ms = i64::from_be_bytes(
                    k.get(3..11)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or([0; 8]),
                ) ^ i64::MIN;
                due.push((
                    due_ms,
                    Timer {
                        name: String::from_utf8_lossy(name).into_owned(),
                        kind,
                        due_ms,
                    },
                ));
            }
        }
        due.sort_by_key(|(d, _)| *d);
        for (_, timer) in due.into_iter().take(MAX_PER_LOOP) {
            let res = self.attempt(None, clock, |p, ctx| {
                // Removed in the same attempt as the callback, so in the same commit as its
                // effects; the callback may schedule it again.
                ctx.cancel(&timer.name)?;
                p.punctuate(ctx, &timer)
            });
            match res {
                Ok(()) => {}
                Err(e) if e.retriable() => {
                    tracing::warn!(task = self.id, timer = %timer.name, error = %e, "timer will fire again");
                    return Some(e);
                }
                Err(e) => {
                    tracing::error!(task = self.id, timer = %timer.name, class = e.class(), error = %e, "timer failed; sent to the dead-letter topic");
                    let out = dead_timer(dlq, &self.group, self.id, &timer, &e);
                    let removed = self.attempt(None, clock, |_, ctx| {
                        ctx.cancel(&timer.name)?;
                        ctx.forward_with_headers(
                            &out.topic,
                            out.key.as_deref(),
                            None,
                            out.headers.clone(),
                        );
                        Ok(())
                    });
                    if let Err(e) = removed {
                        return Some(e);
                    }
                    self.dead_letters += 1;
                }
            }
        }
        None
    }

    /// Deletes entries older than their store's retention (at most [`MAX_SWEEP`] per store).
    /// The deletions are ordinary writes of the batch, so the changelog gets tombstones and a
    /// restore shrinks too. Returns how many were deleted.
    pub fn sweep(&mut self, clock: &dyn Clock) -> Result<usize> {
        let now = clock.now_ms();
        let mut n = 0;
        for store in self.stores.values_mut() {
            let Some(retention) = store.retention_ms else {
                continue;
            };
            let expired = store.expired(now.saturating_sub(retention), MAX_SWEEP)?;
            for k in &expired {
                store.delete(k, now);
            }
            store.keep_record();
            n += expired.len();
        }
        Ok(n)
    }

    /// Forgets the uncommitted batch: outputs, consumed offsets, store writes (which become
    /// dirty: the changelog may hold them).
    pub fn abort_batch(&mut self) {
        self.outputs.clear();
        self.sent = 0;
        self.dead_letters = 0;
        self.consumed.clear();
        self.batch_in = 0;
        self.stores.values_mut().for_each(KvStore::abort_batch);
    }

    pub fn close(mut self, flush: bool) {
        if flush {
            for store in self.stores.values() {
                if let Err(e) = store.flush() {
                    tracing::warn!(task = self.id, store = %store.name, error = %e, "flush failed");
                }
            }
        }
        self.processor.close();
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
