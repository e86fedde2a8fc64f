//! A test driver, in the spirit of Kafka Streams' `TopologyTestDriver`: push records into a
//! processor's tasks, move the wall clock and stream time, read outputs and store contents,
//! with no broker. It drives the same task code as the engine (records, timers, retention
//! sweeps, dead letters, panics), and "commits" by writing each batch to the local stores.
//!
//! ```no_run
//! # use tributary_streams::testing::TestDriver;
//! # fn f(p: impl tributary_streams::Processor + Clone + 'static) {
//! let mut d = TestDriver::new(&["counts"], move |_| p.clone());
//! d.pipe("words", 0, Some(b"k"), Some(b"v"), 1_000);
//! let out = d.take_outputs();
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, ManualClock};
use crate::dlq::dlq_topic;
use crate::error::{Error, Result};
use crate::processor::{Processor, TIMERS_STORE};
use crate::record::{Output, Record};
use crate::store::KvStore;
use crate::task::{Outcome, Task};

type Factory = Box<dyn Fn(i32) -> Box<dyn Processor>>;

pub struct TestDriver {
    dir: tempfile::TempDir,
    stores: Vec<String>,
    retention: BTreeMap<String, i64>,
    factory: Factory,
    tasks: BTreeMap<i32, Task>,
    offsets: HashMap<(String, i32), i64>,
    clock: ManualClock,
    outputs: Vec<Output>,
    dlq: Option<String>,
}

impl TestDriver {
    /// A driver for a processor with the given stores; `make(task)` creates a task's instance.
    /// The wall clock starts at 1 000 000 000 000 ms (2001) and moves only when told to.
    pub fn new<P, F>(stores: &[&str], make: F) -> TestDriver
    where
        P: Processor + 'static,
        F: Fn(i32) -> P + 'static,
    {
        TestDriver {
            dir: tempfile::tempdir().expect("a temporary directory for the test driver"),
            stores: stores.iter().map(|s| s.to_string()).collect(),
            retention: BTreeMap::new(),
            factory: Box::new(move |t| Box::new(make(t)) as Box<dyn Processor>),
            tasks: BTreeMap::new(),
            offsets: HashMap::new(),
            clock: ManualClock::new(1_000_000_000_000),
            outputs: Vec::new(),
            dlq: None,
        }
    }

    /// Gives `store` a retention, as `StreamsBuilder::store_with_retention` does.
    pub fn with_retention(mut self, store: &str, retention: Duration) -> TestDriver {
        self.retention.insert(
            store.to_string(),
            i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
        );
        self
    }

    /// The driver's wall clock (share it with the processor if it keeps one of its own).
    pub fn clock(&self) -> ManualClock {
        self.clock.clone()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn task(&mut self, id: i32) -> Result<&mut Task> {
        if !self.tasks.contains_key(&id) {
            let dir = self.dir.path().join(format!("task-{id}"));
            let mut stores = HashMap::new();
            for name in self.stores.iter().map(String::as_str).chain([TIMERS_STORE]) {
                let retention = self.retention.get(name).copied();
                stores.insert(
                    name.to_string(),
                    KvStore::open(&dir, name, &format!("test-{name}-changelog"), retention)?,
                );
            }
            let mut task = Task::new(id, Arc::from("test"), (self.factory)(id), stores);
            task.ready = true;
            task.attempt(None, &self.clock, |p, ctx| p.init(ctx))?;
            self.tasks.insert(id, task);
        }
        Ok(self.tasks.get_mut(&id).expect("inserted"))
    }

    /// Hands one record to task `partition` and commits it. `Err` when the processor failed
    /// with a retriable error (nothing of it is kept; call again to retry). A non-retriable
    /// failure or a panic produces a dead letter, readable with [`take_outputs`](Self::take_outputs).
    pub fn pipe(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<()> {
        self.pipe_with_headers(topic, partition, key, value, timestamp_ms, Vec::new())
    }

    pub fn pipe_with_headers(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        self.pipe_record(topic, partition, key, value, timestamp_ms, headers)?;
        self.commit()
    }

    /// Like [`pipe`](Self::pipe) without the commit: the record's effects join the task's
    /// batch (visible to later records), committed by [`commit`](Self::commit) or
    /// [`punctuate`](Self::punctuate). For tests that push many records.
    pub fn pipe_uncommitted(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<()> {
        self.pipe_record(topic, partition, key, value, timestamp_ms, Vec::new())
    }

    fn pipe_record(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        self.dlq.get_or_insert_with(|| dlq_topic(topic));
        let offset = {
            let o = self
                .offsets
                .entry((topic.to_string(), partition))
                .or_insert(0);
            let cur = *o;
            *o += 1;
            cur
        };
        let record = Record {
            topic: topic.to_string(),
            partition,
            offset,
            timestamp: Some(timestamp_ms),
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers,
        };
        let clock = self.clock.clone();
        let task = self.task(partition)?;
        match task.process(&record, &clock) {
            Outcome::Done => {}
            Outcome::Retry(e) => {
                // The record was not consumed: it gets the same offset when piped again.
                if let Some(o) = self.offsets.get_mut(&(topic.to_string(), partition)) {
                    *o -= 1;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Moves the wall clock by `ms`, then fires due timers (and retention sweeps) and commits.
    pub fn advance_wall_clock(&mut self, ms: i64) -> Result<()> {
        self.clock.advance(ms);
        self.punctuate()
    }

    /// Fires the due timers and retention sweeps of every task, and commits.
    pub fn punctuate(&mut self) -> Result<()> {
        let clock = self.clock.clone();
        let dlq = self.dlq.clone().unwrap_or_else(|| "test.dlq".into());
        for task in self.tasks.values_mut() {
            // Loop: a callback may schedule a timer that is due at once.
            for _ in 0..100 {
                if let Some(e) = task.fire_timers(&clock, &dlq) {
                    // What fired before the failing timer is kept, as the engine commits it.
                    commit_task(task, &mut self.outputs)?;
                    return Err(e);
                }
                task.sweep(&clock)?;
                if !task.has_pending() {
                    break;
                }
                commit_task(task, &mut self.outputs)?;
            }
        }
        self.commit()
    }

    /// Commits every task's batch: its outputs become readable, its writes committed.
    pub fn commit(&mut self) -> Result<()> {
        for task in self.tasks.values_mut() {
            commit_task(task, &mut self.outputs)?;
        }
        Ok(())
    }

    /// Outputs (dead letters included) produced so far, oldest first; the driver forgets them.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Outputs to `topic`, oldest first, without removing any.
    pub fn outputs_to(&self, topic: &str) -> Vec<&Output> {
        self.outputs.iter().filter(|o| o.topic == topic).collect()
    }

    /// The value of `key` in task `task`'s store `store`.
    pub fn get(&mut self, task: i32, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.task(task)?
            .stores
            .get(store)
            .ok_or_else(|| Error::UnknownStore(store.to_string()))?
            .get(key)
    }

    /// Every key and value of a task's store.
    pub fn scan(&mut self, task: i32, store: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.task(task)?
            .stores
            .get(store)
            .ok_or_else(|| Error::UnknownStore(store.to_string()))?
            .scan()
    }

    /// Number of committed keys in a task's store.
    pub fn len(&mut self, task: i32, store: &str) -> Result<u64> {
        self.task(task)?
            .stores
            .get(store)
            .ok_or_else(|| Error::UnknownStore(store.to_string()))?
            .len()
    }

    /// The names of a task's scheduled timers.
    pub fn timers(&mut self, task: i32) -> Result<Vec<crate::Timer>> {
        let clock = self.clock.clone();
        let task = self.task(task)?;
        let mut out = Vec::new();
        task.attempt(None, &clock, |_, ctx| {
            out = ctx.timers()?;
            Err(Error::transient("read only"))
        })
        .ok();
        Ok(out)
    }

    /// Whether task `task`'s processor admits more records of `topic` (backpressure), given
    /// its committed timers and whether the input is `paused` now, as the engine asks after
    /// every batch.
    pub fn admits(&mut self, task: i32, topic: &str, paused: bool) -> Result<bool> {
        let task = self.task(task)?;
        Ok(task.processor.admits(topic, &task.load(paused)))
    }

    /// Closes every task and opens it again from its local stores, as a restart would.
    pub fn restart(&mut self) -> Result<()> {
        for (_, task) in std::mem::take(&mut self.tasks) {
            task.close(true);
        }
        Ok(())
    }
}

fn commit_task(task: &mut Task, outputs: &mut Vec<Output>) -> Result<()> {
    outputs.append(&mut task.outputs);
    task.dead_letters = 0;
    task.consumed.clear();
    task.batch_in = 0;
    for store in task.stores.values_mut() {
        store.commit_batch(None)?;
    }
    task.committed_seq = task.next_seq;
    task.next_seq += 1;
    Ok(())
}
