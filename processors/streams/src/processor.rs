//! The processor trait and the context a processor sees.

use std::collections::HashMap;

use crate::clock::Clock;
use crate::dlq::{dead_letter_of, origin_of};
use crate::error::{Error, Result};
use crate::record::{Output, Record};
use crate::store::KvStore;

/// The store that keeps each task's timer schedule, so that timers survive restarts and move
/// with the task. The leading underscore keeps it apart from processors' own store names.
///
/// Two keys per timer, written in the same record so they are committed together:
/// `n/<name>` → kind and due time (to move or cancel a timer by name), and
/// `d/<kind><due, sortable><name>` → empty (so a loop reads only the due timers, in due order,
/// however many are scheduled).
pub(crate) const TIMERS_STORE: &str = "_timers";
const BY_NAME: &[u8] = b"n/";
const BY_DUE: &[u8] = b"d/";

fn kind_byte(kind: TimeKind) -> u8 {
    match kind {
        TimeKind::WallClock => 0,
        TimeKind::StreamTime => 1,
    }
}

/// `d/<kind><due><name>`; the due time is offset so that byte order is numeric order.
pub(crate) fn due_key(kind: TimeKind, due_ms: i64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + name.len());
    k.extend_from_slice(BY_DUE);
    k.push(kind_byte(kind));
    k.extend_from_slice(&((due_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// The range of due keys of `kind` due at or before `now`: `[start, end)`.
pub(crate) fn due_range(kind: TimeKind, now: i64) -> (Vec<u8>, Vec<u8>) {
    let start = due_key(kind, i64::MIN, b"");
    let end = if now == i64::MAX {
        let mut e = BY_DUE.to_vec();
        e.push(kind_byte(kind) + 1);
        e
    } else {
        due_key(kind, now + 1, b"")
    };
    (start, end)
}

/// The timer name inside a due key.
pub(crate) fn name_of_due_key(key: &[u8]) -> Option<&[u8]> {
    key.get(BY_DUE.len() + 9..)
}

fn name_key(name: &[u8]) -> Vec<u8> {
    let mut k = BY_NAME.to_vec();
    k.extend_from_slice(name);
    k
}

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

    /// Backpressure: whether the task takes more records from its input `topic` now. The engine
    /// asks after every batch; an input a task refuses is paused for that task until it is
    /// admitted again, while its other inputs keep flowing. A saga refusing new orders while it
    /// holds many open ones lets the answers to those finish first, instead of queueing them
    /// behind new orders. `load` says what the task holds. Default: always.
    fn admits(&self, _topic: &str, _load: &Load) -> bool {
        true
    }
}

/// What a task holds, for [`Processor::admits`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Timers scheduled and neither fired nor cancelled, as of the last commit.
    pub timers: u64,
    /// Whether the input asked about is paused by backpressure now, for a processor that
    /// resumes below a lower mark than it pauses at (so an input is not paused and resumed on
    /// every batch).
    pub paused: bool,
}

/// A boxed processor is one, so apps chosen at run time (a table of them) can hand the
/// builder a `Box<dyn Processor>`.
impl<P: Processor + ?Sized> Processor for Box<P> {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> Result<()> {
        (**self).process(ctx, record)
    }

    fn init(&mut self, ctx: &mut Context<'_>) -> Result<()> {
        (**self).init(ctx)
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, timer: &Timer) -> Result<()> {
        (**self).punctuate(ctx, timer)
    }

    fn close(&mut self) {
        (**self).close()
    }

    fn admits(&self, topic: &str, load: &Load) -> bool {
        (**self).admits(topic, load)
    }
}

/// What a processor can touch while it runs: its task's stores, its outputs and its timers.
pub struct Context<'a> {
    pub(crate) task: i32,
    pub(crate) stores: &'a mut HashMap<String, KvStore>,
    pub(crate) outputs: &'a mut Vec<Output>,
    /// The record being processed; `None` while a timer fires.
    pub(crate) input: Option<&'a Record>,
    /// The application id: the consumer group named in dead letters.
    pub(crate) group: &'a str,
    pub(crate) stream_time: i64,
    pub(crate) clock: &'a dyn Clock,
}

impl Context<'_> {
    /// The task's id: the input partition number it owns.
    pub fn task(&self) -> i32 {
        self.task
    }

    /// Where the record being processed came from, as `(topic, partition, offset)`; `None` while
    /// a timer fires.
    pub fn input(&self) -> Option<(&str, i32, i64)> {
        self.input
            .map(|r| (r.topic.as_str(), r.partition, r.offset))
    }

    /// The record its producer wrote, of the record being processed: the one named by its
    /// `tributary.origin` header when it came through an internal hop, else itself; `None`
    /// while a timer fires.
    pub fn input_origin(&self) -> Option<tributary_runtime::dlq::Origin> {
        self.input.map(origin_of)
    }

    /// The application id (the consumer group its dead letters name).
    pub fn application_id(&self) -> &str {
        self.group
    }

    /// The largest input timestamp this task has seen (ms), or `i64::MIN` before any.
    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// The runtime's wall clock (ms since the epoch). Use it instead of the system clock, so
    /// that the test driver can move time.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn store_ref(&self, store: &str) -> Result<&KvStore> {
        self.stores
            .get(store)
            .ok_or_else(|| Error::UnknownStore(store.to_string()))
    }

    fn store_mut(&mut self, store: &str) -> Result<&mut KvStore> {
        self.stores
            .get_mut(store)
            .ok_or_else(|| Error::UnknownStore(store.to_string()))
    }

    pub fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.store_ref(store)?.get(key)
    }

    /// Writes `value`. The write becomes visible to later records at once and durable with the
    /// batch's commit, atomically with every other write, output and input offset of the batch.
    pub fn put(&mut self, store: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let now = self.clock.now_ms();
        self.store_mut(store)?.put(key, value, now);
        Ok(())
    }

    pub fn delete(&mut self, store: &str, key: &[u8]) -> Result<()> {
        let now = self.clock.now_ms();
        self.store_mut(store)?.delete(key, now);
        Ok(())
    }

    /// Every key and value of `store`, in key order. Reads the whole store: prefer
    /// [`range`](Self::range) on large ones.
    pub fn scan(&self, store: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.store_ref(store)?.scan()
    }

    /// Keys and values with `start <= key < end` (`end` `None`: to the last key), in key
    /// order, at most `limit`.
    pub fn range(
        &self,
        store: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.store_ref(store)?.range(start, end, limit)
    }

    /// Sends a record to `topic`: at-least-once as soon as the current record succeeds,
    /// exactly-once in the next commit's transaction; acknowledged before input offsets are
    /// committed either way. Dropped if the current record fails.
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

    /// Forwards onto an internal topic (a re-keying hop) with the current input's headers and
    /// the coordinates of the record its producer wrote (one `tributary.origin` header; the
    /// input's own origin when it came through a hop itself), so that a dead letter further on
    /// names the producer's record. Outside a record (a timer), a plain forward.
    pub fn repartition(&mut self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        let headers = match self.input {
            None => Vec::new(),
            Some(r) => {
                let origin = origin_of(r);
                let mut h: Vec<(String, Vec<u8>)> = r
                    .headers
                    .iter()
                    .filter(|(k, _)| k != tributary_runtime::dlq::ORIGIN)
                    .cloned()
                    .collect();
                h.push(origin.header(key));
                h
            }
        };
        self.forward_with_headers(topic, key, value, headers);
    }

    /// Sends the current input, bytes untouched, to the dead-letter topic of the record its
    /// producer wrote, with the runtime's `dlq.*` headers (class `class`, `message`) and
    /// `extra` ones, while the record itself succeeds: for a processor that answers a command
    /// (a `CommandRejected`) and also wants it where operators look for refused inputs. Like
    /// any output, dropped if the record fails. False outside a record (a timer): nothing sent.
    pub fn dead_letter(
        &mut self,
        class: &str,
        message: &str,
        extra: Vec<(String, Vec<u8>)>,
    ) -> bool {
        let Some(record) = self.input else {
            return false;
        };
        let out = dead_letter_of(record, self.group, class, message, extra);
        self.outputs.push(out);
        true
    }

    /// Schedules (or moves) the timer `name` of this task to fire at `due_ms` on `kind`'s clock.
    /// The schedule is kept in a changelogged store, so it survives restarts and rebalances.
    pub fn schedule(&mut self, name: &str, kind: TimeKind, due_ms: i64) -> Result<()> {
        self.cancel(name)?;
        let now = self.clock.now_ms();
        let timers = self.store_mut(TIMERS_STORE)?;
        timers.put(
            &name_key(name.as_bytes()),
            &Timer::encode(kind, due_ms),
            now,
        );
        timers.put(&due_key(kind, due_ms, name.as_bytes()), &[], now);
        Ok(())
    }

    /// Removes the timer `name`, if scheduled.
    pub fn cancel(&mut self, name: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let nk = name_key(name.as_bytes());
        let timers = self.store_mut(TIMERS_STORE)?;
        if let Some(v) = timers.get(&nk)? {
            if let Some(t) = Timer::decode(name.as_bytes(), &v) {
                timers.delete(&due_key(t.kind, t.due_ms, name.as_bytes()), now);
            }
            timers.delete(&nk, now);
        }
        Ok(())
    }

    /// The timer `name`, if scheduled.
    pub fn timer(&self, name: &str) -> Result<Option<Timer>> {
        Ok(self
            .store_ref(TIMERS_STORE)?
            .get(&name_key(name.as_bytes()))?
            .and_then(|v| Timer::decode(name.as_bytes(), &v)))
    }

    /// The timers of this task, pending ones included.
    pub fn timers(&self) -> Result<Vec<Timer>> {
        let mut end = BY_NAME.to_vec();
        *end.last_mut().expect("non-empty") += 1;
        let all = self
            .store_ref(TIMERS_STORE)?
            .range(BY_NAME, Some(&end), usize::MAX)?;
        Ok(all
            .iter()
            .filter_map(|(k, v)| Timer::decode(&k[BY_NAME.len()..], v))
            .collect())
    }
}
