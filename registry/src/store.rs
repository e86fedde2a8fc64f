//! The Kafka-backed store: loads the schemas topic at start-up and persists every change to it
//! before the change becomes visible. [`Store::in_memory`] is the same store without the topic:
//! changes are applied at once and live as long as the process (for tests and embedding).
//!
//! Writes are serialised by one async mutex held from deciding what to write until the record
//! is applied, and each runs as its own task so that a client hanging up cannot cancel it
//! between "the broker acknowledged the record" and "the state shows it". State is applied only
//! after the broker acknowledges (`acks=all`), so a failed write answers 500 and leaves the state
//! as it was.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Mutex;
use tributary_runtime::kafka::{client_config, ensure_topic, unique_name, TopicSpec};

use crate::avro::ParsedSchema;
use crate::compat::Compatibility;
use crate::error::{ApiError, RegistryError};
use crate::records::{Record, SchemaValue};
use crate::state::{State, VersionSpec};

/// How long start-up waits for the topic's metadata and for reading it to its end.
const LOAD_DEADLINE: Duration = Duration::from_secs(60);
/// Bound on a single write; the client gets a 50002 after it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Store {
    topic: String,
    /// `None` for an in-memory store: changes are applied without being persisted.
    producer: Option<FutureProducer>,
    state: RwLock<State>,
    writes: Mutex<()>,
    default_level: Compatibility,
}

impl Store {
    /// Creates the topic if needed, replays it into a fresh state and readies the producer.
    pub async fn open(
        brokers: &str,
        topic: &str,
        default_level: Compatibility,
    ) -> Result<Store, RegistryError> {
        ensure_topic(
            brokers,
            topic,
            TopicSpec {
                partitions: 1,
                compacted: true,
            },
        )
        .await
        .map_err(|source| RegistryError::CreateTopic {
            topic: topic.to_string(),
            source,
        })?;
        check_compacted(brokers, topic).await?;

        let started = Instant::now();
        let records = {
            let (brokers, topic) = (brokers.to_string(), topic.to_string());
            tokio::task::spawn_blocking(move || read_topic(&brokers, &topic))
                .await
                .map_err(|e| RegistryError::Task(e.to_string()))??
        };
        let mut state = State::default();
        let mut skipped = 0usize;
        let total = records.len();
        for (offset, key, value) in records {
            match Record::decode(key.as_deref(), value.as_deref()) {
                Ok(Some(record)) => state.apply(&record),
                Ok(None) => {}
                Err(reason) => {
                    skipped += 1;
                    tracing::warn!(topic, offset, "skipping an unreadable record: {reason}");
                }
            }
        }
        tracing::info!(
            topic,
            records = total,
            skipped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded the schemas topic"
        );

        let producer: FutureProducer = client_config(brokers)
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", WRITE_TIMEOUT.as_millis().to_string())
            // Writes are serialised and each is awaited before the next is sent, so at most one
            // record is in flight and retries cannot reorder records. A retry may duplicate a
            // record, which is harmless: applying the same record twice is a no-op. That makes
            // the idempotent producer unnecessary, and it is left off so brokers without
            // InitProducerId support work too.
            .set("enable.idempotence", "false")
            .create()
            .map_err(|source| RegistryError::Kafka {
                topic: topic.to_string(),
                source,
            })?;

        Ok(Store {
            topic: topic.to_string(),
            producer: Some(producer),
            state: RwLock::new(state),
            writes: Mutex::new(()),
            default_level,
        })
    }

    /// An empty store that keeps its state in memory only: no topic is read at start and
    /// nothing is written, so nothing survives the process. Every rule (ids, versions,
    /// compatibility, deletes) is the Kafka-backed store's, since both apply the same records.
    pub fn in_memory(default_level: Compatibility) -> Store {
        Store {
            topic: String::new(),
            producer: None,
            state: RwLock::new(State::default()),
            writes: Mutex::new(()),
            default_level,
        }
    }

    /// Runs `f` on the current state. The lock is a plain one because no reader awaits while
    /// holding it.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        f(&state)
    }

    pub fn default_level(&self) -> Compatibility {
        self.default_level
    }

    /// Releases the producer. librdkafka's destroy can block, so it runs off the async threads.
    pub async fn close(self: Arc<Self>) {
        if let Some(store) = Arc::into_inner(self) {
            let dropped = tokio::task::spawn_blocking(move || drop(store));
            if let Err(e) = dropped.await {
                tracing::warn!("closing the schemas producer failed: {e}");
            }
        }
    }

    // ---- writes ------------------------------------------------------------------------

    /// Registers `schema` under `subject` and returns its global id. An equal live schema in
    /// the subject returns its id without a new version.
    pub async fn register(
        self: &Arc<Self>,
        subject: String,
        schema: ParsedSchema,
        text: String,
    ) -> Result<u32, ApiError> {
        self.write_task(move |store| async move {
            let _writing = store.writes.lock().await;
            // The id to answer with, and the record to write unless the schema is already live
            // in the subject.
            let (id, record) = store.read(|st| {
                if let Some((_, existing)) = st.find(&subject, &schema, false) {
                    return Ok((existing.id, None));
                }
                let level = st.effective_level(&subject, store.default_level);
                let details = st.check_compatibility(&subject, &schema, level, None);
                if !details.is_empty() {
                    return Err(ApiError::Incompatible {
                        subject: subject.clone(),
                        details,
                    });
                }
                let id = st.id_for(&schema);
                let version = st.next_version(&subject);
                // An id that exists keeps the text it was first registered with.
                let text = st.schema(id).map_or(text, |e| e.text.clone());
                let record = Record::Schema {
                    subject: subject.clone(),
                    version,
                    value: Some(SchemaValue {
                        subject: subject.clone(),
                        version,
                        id,
                        schema_type: None,
                        schema: text,
                        deleted: false,
                    }),
                };
                Ok((id, Some(record)))
            })?;
            if let Some(record) = record {
                store.persist(record).await?;
            }
            Ok(id)
        })
        .await
    }

    /// Soft-deletes (or, after that, permanently deletes) one version; returns its number.
    pub async fn delete_version(
        self: &Arc<Self>,
        subject: String,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<u32, ApiError> {
        self.write_task(move |store| async move {
            let _writing = store.writes.lock().await;
            let (version, record) = store.read(|st| {
                // A numbered version is found even when soft-deleted, so that deleting it again
                // answers 40406 and a permanent delete can find it. `latest` means the latest
                // live version, except for a permanent delete, which targets deleted ones.
                let include_deleted = permanent || matches!(spec, VersionSpec::Number(_));
                let (version, entry) = st.version(&subject, spec, include_deleted)?;
                let value = match (permanent, entry.deleted) {
                    (false, true) => {
                        return Err(ApiError::VersionSoftDeleted {
                            subject: subject.clone(),
                            version,
                        })
                    }
                    (true, false) => {
                        return Err(ApiError::VersionNotSoftDeleted {
                            subject: subject.clone(),
                            version,
                        })
                    }
                    (true, true) => None,
                    (false, false) => Some(SchemaValue {
                        subject: subject.clone(),
                        version,
                        id: entry.id,
                        schema_type: None,
                        schema: st
                            .schema(entry.id)
                            .map(|e| e.text.clone())
                            .unwrap_or_default(),
                        deleted: true,
                    }),
                };
                let record = Record::Schema {
                    subject: subject.clone(),
                    version,
                    value,
                };
                Ok((version, record))
            })?;
            store.persist(record).await?;
            Ok(version)
        })
        .await
    }

    /// Soft-deletes every live version of `subject`, or permanently deletes a subject whose
    /// versions are all soft-deleted. Returns the versions deleted.
    ///
    /// Like Confluent, a soft delete also removes the subject's own compatibility level, so a
    /// subject created again under the same name starts from the global level.
    pub async fn delete_subject(
        self: &Arc<Self>,
        subject: String,
        permanent: bool,
    ) -> Result<Vec<u32>, ApiError> {
        self.write_task(move |store| async move {
            let _writing = store.writes.lock().await;
            let records = store.read(|st| {
                let all = st.versions(&subject, true)?;
                let any_live = all.iter().any(|(_, v)| !v.deleted);
                match (permanent, any_live) {
                    (false, false) => Err(ApiError::SubjectSoftDeleted(subject.clone())),
                    (true, true) => Err(ApiError::SubjectNotSoftDeleted(subject.clone())),
                    (true, false) => Ok(all
                        .iter()
                        .map(|(version, _)| Record::Schema {
                            subject: subject.clone(),
                            version: *version,
                            value: None,
                        })
                        .collect::<Vec<_>>()),
                    (false, true) => {
                        let mut records: Vec<Record> = all
                            .iter()
                            .filter(|(_, v)| !v.deleted)
                            .map(|(version, v)| Record::Schema {
                                subject: subject.clone(),
                                version: *version,
                                value: Some(SchemaValue {
                                    subject: subject.clone(),
                                    version: *version,
                                    id: v.id,
                                    schema_type: None,
                                    schema: st
                                        .schema(v.id)
                                        .map(|e| e.text.clone())
                                        .unwrap_or_default(),
                                    deleted: true,
                                }),
                            })
                            .collect();
                        if st.subject_level(&subject).is_some() {
                            records.push(Record::Config {
                                subject: Some(subject.clone()),
                                level: None,
                            });
                        }
                        Ok(records)
                    }
                }
            })?;
            let mut deleted = Vec::with_capacity(records.len());
            // One record per version, each applied once acknowledged: if a later one fails,
            // state still matches the topic exactly.
            for record in records {
                if let Record::Schema { version, .. } = &record {
                    deleted.push(*version);
                }
                store.persist(record).await?;
            }
            Ok(deleted)
        })
        .await
    }

    /// Sets the level of `subject`, or the global one for `None`.
    pub async fn set_level(
        self: &Arc<Self>,
        subject: Option<String>,
        level: Compatibility,
    ) -> Result<(), ApiError> {
        self.write_task(move |store| async move {
            let _writing = store.writes.lock().await;
            store
                .persist(Record::Config {
                    subject,
                    level: Some(level),
                })
                .await
        })
        .await
    }

    /// Removes the level of `subject` (40408 when it has none), or resets the global level to
    /// the configured default. Returns the level in force before.
    pub async fn delete_level(
        self: &Arc<Self>,
        subject: Option<String>,
    ) -> Result<Compatibility, ApiError> {
        self.write_task(move |store| async move {
            let _writing = store.writes.lock().await;
            let previous = store.read(|st| match &subject {
                Some(s) => st
                    .subject_level(s)
                    .ok_or_else(|| ApiError::SubjectCompatibilityNotConfigured(s.clone())),
                None => Ok(st.global_level().unwrap_or(store.default_level)),
            })?;
            store
                .persist(Record::Config {
                    subject,
                    level: None,
                })
                .await?;
            Ok(previous)
        })
        .await
    }

    /// Runs a write on its own task so that it completes even if the request is dropped.
    async fn write_task<T, F, Fut>(self: &Arc<Self>, op: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        tokio::spawn(op(Arc::clone(self)))
            .await
            .map_err(|e| ApiError::Internal(format!("the write task failed: {e}")))?
    }

    /// Produces `record`, waits for the broker's acknowledgement and only then applies it (an
    /// in-memory store applies it at once). The caller holds `writes`.
    async fn persist(&self, record: Record) -> Result<(), ApiError> {
        let Some(producer) = &self.producer else {
            self.state
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .apply(&record);
            return Ok(());
        };
        let key = record.key_bytes();
        let value = record.value_bytes();
        let mut produced = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .partition(0)
            .key(&key);
        if let Some(value) = &value {
            produced = produced.payload(value);
        }
        match producer.send(produced, Timeout::After(WRITE_TIMEOUT)).await {
            Ok(_) => {
                self.state
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .apply(&record);
                Ok(())
            }
            Err((source, _)) => {
                // The record may have landed even though delivery was not confirmed (a
                // timeout). Never hand its id to another schema, or a replay could pair it with
                // the wrong text.
                if let Record::Schema { value: Some(v), .. } = &record {
                    self.state
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .reserve_id(v.id);
                }
                Err(ApiError::Store(RegistryError::Write {
                    topic: self.topic.clone(),
                    source,
                }))
            }
        }
    }
}

/// Refuses a topic whose records expire. `ensure_topic` creates the topic compacted, but one
/// created beforehand by hand may use the default `delete` policy, which would silently drop
/// schemas after the retention period; Confluent refuses to start on such a topic too. A broker
/// that cannot describe configurations only earns a warning.
async fn check_compacted(brokers: &str, topic: &str) -> Result<(), RegistryError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers)
            .create()
            .map_err(|source| RegistryError::Kafka {
                topic: topic.to_string(),
                source,
            })?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await;
    let policy = match described.as_deref() {
        // A policy left at the default may be omitted from the answer (nisshi reports only
        // what was set explicitly); the default is Kafka's `delete`.
        Ok([Ok(resource)]) => resource
            .get("cleanup.policy")
            .and_then(|entry| entry.value.clone())
            .unwrap_or_else(|| "delete".to_string()),
        Ok(other) => {
            tracing::warn!(topic, "unexpected answer describing the topic: {other:?}");
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(topic, "could not check the topic's cleanup.policy: {e}");
            return Ok(());
        }
    };
    if policy.split(',').any(|p| p.trim() == "compact") {
        Ok(())
    } else {
        Err(RegistryError::Topic {
            topic: topic.to_string(),
            reason: format!(
                "its cleanup.policy is `{policy}`; it must be `compact` so that schemas never expire"
            ),
        })
    }
}

/// A record of the topic: offset, key, value.
type RawRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Reads partition 0 of `topic` from its start to the high watermark taken before reading.
/// Blocking; runs on a blocking thread.
fn read_topic(brokers: &str, topic: &str) -> Result<Vec<RawRecord>, RegistryError> {
    let kafka = |source: RdKafkaError| RegistryError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let deadline = Instant::now() + LOAD_DEADLINE;
    // `assign` needs a group id; the group is never joined and no offsets are committed, so a
    // throwaway name leaves nothing behind.
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", unique_name("tributary-registry-load"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // Keep each fetch short, so that no long-polling fetch is outstanding at the broker
        // when the consumer is closed (see the end of this function).
        .set("fetch.wait.max.ms", "100")
        .create()
        .map_err(kafka)?;

    wait_for_single_partition(&consumer, topic, deadline)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_err(kafka)?;
    let mut records = Vec::new();
    if high <= low {
        // Empty topic: nothing to read, and no assignment to undo.
        return Ok(records);
    }

    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(kafka)?;
    consumer.assign(&assignment).map_err(kafka)?;
    let outcome = loop {
        if Instant::now() > deadline {
            break Err(RegistryError::Load {
                topic: topic.to_string(),
                reason: format!(
                    "did not reach offset {high} within {}s (read {} records)",
                    LOAD_DEADLINE.as_secs(),
                    records.len()
                ),
            });
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(message)) => {
                let offset = message.offset();
                records.push((
                    offset,
                    message.key().map(<[u8]>::to_vec),
                    message.payload().map(<[u8]>::to_vec),
                ));
                if offset + 1 >= high {
                    break Ok(());
                }
            }
            // Compaction leaves gaps in the offsets, so the end of the partition is also
            // recognised by the EOF event rather than by reaching `high - 1` alone.
            Some(Err(RdKafkaError::PartitionEOF(_))) => break Ok(()),
            Some(Err(e)) => {
                tracing::warn!(topic, "while reading the schemas topic: {e}");
            }
        }
    };
    // Closing a consumer part way through a topic has been seen to block rd_kafka_destroy for
    // 27–100 s against nisshi, waiting on fetches still outstanding. Three precautions keep
    // start-up fast: fetches are short (`fetch.wait.max.ms` above), fetching is stopped
    // (`unassign`) before the close, and the close runs on a detached thread, so that should it
    // block anyway it delays nothing: the consumer holds nothing the registry needs. (Against
    // nisshi 0.8.1 with memory and sqlite storage the close measured about 0.1 s, read to the
    // end or not; the thread is insurance.)
    if let Err(e) = consumer.unassign() {
        tracing::debug!(topic, "unassigning the loader failed: {e}");
    }
    let dropper = std::thread::Builder::new()
        .name("registry-loader-close".to_string())
        .spawn(move || drop(consumer));
    if let Err(e) = dropper {
        tracing::warn!("could not close the loader consumer in the background: {e}");
    }
    outcome.map(|()| records)
}

/// Waits until the topic's metadata shows it with a leader, and checks it has one partition:
/// ids are global and ordered, which only a single partition guarantees.
fn wait_for_single_partition(
    consumer: &BaseConsumer,
    topic: &str,
    deadline: Instant,
) -> Result<(), RegistryError> {
    let mut last_problem = String::from("no metadata yet");
    while Instant::now() < deadline {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    let partitions = t.partitions().len();
                    if partitions != 1 {
                        return Err(RegistryError::Topic {
                            topic: topic.to_string(),
                            reason: format!(
                                "it has {partitions} partitions; the schemas topic must have exactly 1"
                            ),
                        });
                    }
                    if t.partitions()[0].leader() >= 0 {
                        return Ok(());
                    }
                    last_problem = "partition 0 has no leader".to_string();
                }
                Some(t) => last_problem = format!("metadata error {:?}", t.error()),
                None => last_problem = "topic missing from metadata".to_string(),
            },
            Err(e) => last_problem = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(RegistryError::Topic {
        topic: topic.to_string(),
        reason: format!("not available: {last_problem}"),
    })
}
