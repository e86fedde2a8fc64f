//! Settings of a streams application.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tributary_runtime::config::KAFKA_BROKERS;

use crate::processor::TIMERS_STORE;

/// Settings of one streams application. Instances with the same `application_id` form one
/// consumer group and share the changelog topics.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// Consumer group id and prefix of the changelog topics (`<app>-<store>-changelog`).
    pub application_id: String,
    /// Label of the metrics; defaults to the application id.
    pub processor_name: String,
    pub brokers: String,
    /// Input topics; co-partitioned ones (same partition count, same keying) share tasks.
    pub inputs: Vec<String>,
    /// Names of the key-value stores every task gets.
    pub stores: Vec<String>,
    /// Root of the local stores: `<state_dir>/<app>/task-<partition>/<store>.redb`.
    pub state_dir: PathBuf,
    /// Longest time between two commits while records flow. At-least-once, a batch stays open
    /// this long even when the input is drained: its outputs are sent as they are made, so the
    /// interval costs the next hop nothing, and longer batches mean fewer commits and fewer
    /// changelog records (a key written several times in a batch is logged once).
    pub commit_interval: Duration,
    /// Exactly-once only (outputs leave with the commit there): a drained input commits at once
    /// only once the batch is this old (fewer, larger commits under load, for at most this
    /// much latency per hop). 20 ms by default; zero commits as soon as the input is drained.
    pub min_commit_interval: Duration,
    /// Most records per commit.
    pub max_batch: usize,
    /// How long the group waits for a silent member before moving its tasks.
    pub session_timeout: Duration,
    /// Bound on closing the consumer at shutdown.
    pub close_timeout: Duration,
    /// Longest back-off between retries of a record that failed with a retriable error.
    pub max_retry_backoff: Duration,
    pub guarantee: Guarantee,
    /// Create changelog and dead-letter topics at start. Off for brokers without CreateTopics
    /// (librdkafka's mock cluster), where the caller creates them.
    pub create_topics: bool,
    /// How long the broker may hold a fetch when no data is there. Each hop of a pipeline waits
    /// up to this long, so it is short; the local broker holds every fetch about half of it.
    pub fetch_wait: Duration,
    /// How long the producer gathers outputs into one request (librdkafka's `linger.ms`).
    /// Outputs are sent as records succeed, so a short linger means many small produce
    /// requests; where the broker's CPU is the bound, a few ms buy larger requests for that
    /// much latency per hop.
    pub linger: Duration,
    /// Longest time between two polls before the group evicts the member. The engine polls
    /// between records, while restoring and while a record is retrying, so only a stuck
    /// processor call reaches it.
    pub max_poll_interval: Duration,
    /// How long a record may keep failing with retriable errors before it is dead-lettered;
    /// `None` (the default): retried as long as it takes, its partitions paused meanwhile.
    pub retry_timeout: Option<Duration>,
    /// Per store, how long an entry lives after its last write (processed-id sets, finished
    /// sagas); entries past it are deleted, with tombstones in the changelog.
    pub retention: BTreeMap<String, Duration>,
    /// Use librdkafka's idempotent producer (ordered, up to 5 requests in flight) instead of one
    /// request in flight per connection. Needs a broker with InitProducerId.
    pub idempotent_producer: bool,
}

/// The processing guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Outputs and changelog writes acknowledged before input offsets are committed; redelivered
    /// records are guarded per key by the stores. The only mode the local broker supports.
    AtLeastOnce,
    /// Outputs, changelog writes and input offsets in one Kafka transaction per commit; a failed
    /// transaction is aborted and its input read again. Needs a broker with transactions.
    ExactlyOnce,
}

impl StreamsConfig {
    pub fn new(application_id: &str) -> StreamsConfig {
        StreamsConfig {
            application_id: application_id.to_string(),
            processor_name: application_id.to_string(),
            // The local stack's broker; the binary passes `--brokers` (libraries never read
            // the environment: `tributary_runtime::config`).
            brokers: KAFKA_BROKERS.default.to_string(),
            inputs: Vec::new(),
            stores: Vec::new(),
            state_dir: std::env::temp_dir().join("tributary-streams"),
            commit_interval: Duration::from_millis(100),
            min_commit_interval: Duration::from_millis(20),
            max_batch: 2000,
            session_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            max_retry_backoff: Duration::from_secs(5),
            guarantee: Guarantee::AtLeastOnce,
            create_topics: true,
            fetch_wait: Duration::from_millis(10),
            linger: Duration::from_millis(1),
            max_poll_interval: Duration::from_secs(300),
            retry_timeout: None,
            retention: BTreeMap::new(),
            idempotent_producer: false,
        }
    }

    /// The compacted topic of the tasks' commit markers (`commit.rs`): one partition per task.
    pub fn commits_topic(&self) -> String {
        format!("{}-_commits", self.application_id)
    }

    /// The compacted topic that keeps `store`'s writes.
    pub fn changelog_topic(&self, store: &str) -> String {
        format!("{}-{store}-changelog", self.application_id)
    }

    /// The local directory of one task's stores.
    pub fn task_dir(&self, task: i32) -> PathBuf {
        self.state_dir
            .join(&self.application_id)
            .join(format!("task-{task}"))
    }

    pub(crate) fn all_stores(&self) -> impl Iterator<Item = &str> {
        self.stores
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(TIMERS_STORE))
    }
}
