//! The processor trait and the context a processor sees.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::record::{Output, Position, Record};
use crate::store::KvStore;

/// The store that keeps each task's timer schedule, so that timers survive restarts and move
/// with the task. The leading underscore keeps it apart from processors' own store names.
pub(crate) const TIMERS_STORE: &str = "_timers";

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    /// Milliseconds since the epoch on this machine's clock: fires even when no input arrives
    /// (saga timeouts).
    WallClock,
    /// The largest input timestamp the task has seen: fires only as data moves forward, so a
    /// replay fires it at the same point of the data (window closing).
    StreamTime,
}

/// A timer that came due, handed to [`Processor::punctuate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub name: String,
    pub kind: TimeKind,
    pub due_ms: i64,
}

impl Timer {
    pub(crate) fn encode(kind: TimeKind, due_ms: i64) -> Vec<u8> {
        let mut v = Vec::with_capacity(9);
        v.push(match kind {
            TimeKind::WallClock => 0,
            TimeKind::StreamTime => 1,
        });
        v.extend_from_slice(&due_ms.to_be_bytes());
        v
    }

    pub(crate) fn decode(name: &[u8], bytes: &[u8]) -> Option<Timer> {
        let kind = match bytes.first()? {
            0 => TimeKind::WallClock,
            1 => TimeKind::StreamTime,
            _ => return None,
        };
        let due_ms = i64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?);
        Some(Timer {
            name: String::from_utf8(name.to_vec()).ok()?,
            kind,
            due_ms,
        })
    }
}

/// A stream processor. Each task (one input partition number) gets its own instance, so a
/// processor keeps per-partition state in plain fields if it wants to, and durable state in the
/// context's stores.
pub trait Processor: Send {
    /// Handles one record. `Err` with [`Error::retriable`] true retries the record after a
    /// back-off; any other `Err` sends it to `<input>.dlq`. Either way, the record's store writes,
    /// outputs and timers are discarded as if it had not run.
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> Result<()>;

    /// Called once when the task is created, after its stores were restored.
    fn init(&mut self, _ctx: &mut Context<'_>) -> Result<()> {
        Ok(())
    }

    /// Called when a timer scheduled with [`Context::schedule`] comes due. The timer is removed
    /// first; schedule it again for a periodic one.
    fn punctuate(&mut self, _ctx: &mut Context<'_>, _timer: &Timer) -> Result<()> {
        Ok(())
    }

    /// Called when the task closes (revoke or shutdown), after its last commit.
    fn close(&mut self) {}
}

/// What a processor can touch while it runs: its task's stores, its outputs and its timers.
pub struct Context<'a> {
    pub(crate) task: i32,
    pub(crate) stores: &'a mut HashMap<String, KvStore>,
    pub(crate) outputs: &'a mut Vec<Output>,
    pub(crate) position: Option<Position>,
    pub(crate) stream_time: i64,
}

impl Context<'_> {
    /// The task's id: the input partition number it owns.
    pub fn task(&self) -> i32 {
        self.task
    }

    /// Where the record being processed came from, as `(topic, partition, offset)`; `None` while
    /// a timer fires.
    pub fn input(&self) -> Option<(&str, i32, i64)> {
        self.position
            .as_ref()
            .map(|p| (p.topic.as_str(), p.partition, p.offset))
    }

    /// The largest input timestamp this task has seen (ms), or `i64::MIN` before any.
    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    fn store_mut(&mut self, store: &str) -> Result<&mut KvStore> {
        self.stores
            .get_mut(store)
            .ok_or_else(|| Error::UnknownStore(store.to_string()))
    }

    pub fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.stores
            .get(store)
            .ok_or_else(|| Error::UnknownStore(store.to_string()))?
            .get(key)
    }

    /// Writes `value`. When the current record is a redelivery whose effect the store already
    /// holds (after a crash under at-least-once), the write is skipped; see `store`.
    pub fn put(&mut self, store: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let pos = self.position.clone();
        self.store_mut(store)?.put(key, value, pos.as_ref())?;
        Ok(())
    }

    /// Whether `key` of `store` already holds the effect of the current record, i.e. the record
    /// is a redelivery after a crash (at-least-once) and its writes reached the changelog before.
    /// `put` skips such writes by itself; a processor whose outputs derive from state checks
    /// this to re-emit the current state instead of computing a new one from it.
    pub fn already_applied(&self, store: &str, key: &[u8]) -> Result<bool> {
        let Some(pos) = &self.position else {
            return Ok(false);
        };
        self.stores
            .get(store)
            .ok_or_else(|| Error::UnknownStore(store.to_string()))?
            .applied(key, pos)
    }

    pub fn delete(&mut self, store: &str, key: &[u8]) -> Result<()> {
        self.store_mut(store)?.delete(key);
        Ok(())
    }

    /// Every key and value of `store`, in key order.
    pub fn scan(&self, store: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.stores
            .get(store)
            .ok_or_else(|| Error::UnknownStore(store.to_string()))?
            .scan()
    }

    /// Sends a record to `topic`; it is produced at the next commit, before input offsets are.
    pub fn forward(&mut self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        self.forward_with_headers(topic, key, value, Vec::new());
    }

    pub fn forward_with_headers(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Vec<(String, Vec<u8>)>,
    ) {
        self.outputs.push(Output {
            topic: topic.to_string(),
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers,
        });
    }

    /// Schedules (or moves) the timer `name` of this task to fire at `due_ms` on `kind`'s clock.
    /// The schedule is kept in a changelogged store, so it survives restarts and rebalances.
    pub fn schedule(&mut self, name: &str, kind: TimeKind, due_ms: i64) -> Result<()> {
        // Timers are not replay-guarded: scheduling is idempotent by name.
        self.store_mut(TIMERS_STORE)?
            .put(name.as_bytes(), &Timer::encode(kind, due_ms), None)?;
        Ok(())
    }

    pub fn cancel(&mut self, name: &str) -> Result<()> {
        self.store_mut(TIMERS_STORE)?.delete(name.as_bytes());
        Ok(())
    }

    /// The timers of this task, pending ones included.
    pub fn timers(&self) -> Result<Vec<Timer>> {
        let all = self
            .stores
            .get(TIMERS_STORE)
            .ok_or_else(|| Error::UnknownStore(TIMERS_STORE.to_string()))?
            .scan()?;
        Ok(all
            .iter()
            .filter_map(|(k, v)| Timer::decode(k, v))
            .collect())
    }
}
