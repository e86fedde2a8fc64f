//! # Layout
//!
//! Reconcile: checks the promise that every store is a view of the log, and repairs it.
//!
//! ```text
//!  event topics ──► replay (low..high watermark) ──► Projection ──► expected (fold) ─┐
//!                                                                                    ├─► diff ──► report / metrics
//!  store ──► LiveStore::read (view, id) → normalized fields ─────────────────────────┘     │
//!                                                                          --repair ◄──────┘
//!                              LiveStore::release + ViewWriter::write (the sink's write path)
//! ```
//!
//! - [`replay`]: a plain consumer, assigned every partition from its low to its high watermark
//!   (as they were when the replay started), never committing. A low watermark above 0 means
//!   the first records are gone, so the replay would not be the whole history:
//!   [`replay::check_whole_log`] refuses it (reconcile and rebuild alike) unless
//!   `allow_truncated_log` is set.
//! - [`expected`]: the fold of the changes with the stores' versioned semantics.
//! - [`diff`]: missing, extra and differing entities per view; the [`Report`] and its metrics.
//! - each store's folder implements [`LiveStore`] in its `live.rs` (e.g.
//!   `crate::postgres::live`): which fields of an entity the store keeps and how it types them,
//!   listing the live entities, and *releasing* entities for a repair. Nothing here names a
//!   store: [`reconcile`] works on whatever [`Parts`] it is given, and the stores come from
//!   [`crate::stores`].
//!
//! Only the fields a projection produces are compared; the stores' bookkeeping (versions,
//! `_id`, `updated_at`, expiry) is not. Both sides go through [`normalize`]: nulls are dropped
//! (a null field and a missing one mean the same to every store) and integral numbers compare
//! as integers.
//!
//! ## Why a repair *releases* before it writes
//!
//! A repair writes through the store's own [`ViewWriter`], which applies a change only when its
//! version is newer than the stored one. A *differing* entity usually holds exactly the expected
//! version (its fields were altered behind the sink's back), so writing the expected entity with
//! that version would be skipped as stale. Deleting it first does not work everywhere: a
//! PostgreSQL delete cascades to the order's items and leaves a tombstone that blocks the
//! rewrite. So each store *releases* the entities to repair: it lowers their stored version to
//! [`RELEASED_VERSION`] (PostgreSQL, MongoDB, Redis), or removes the document (the local
//! Elasticsearch, whose external versions cannot be lowered), and forgets tombstones that would
//! block an entity the log says exists. The ordinary, idempotent write then wins; an extra
//! entity is deleted by an ordinary delete with the version of its last delete in the log (or
//! just above the released version). A sink writing a newer change meanwhile still wins.
//!
//! The run holds the store's lock ([`crate::job`], one per store) for its whole duration,
//! extended while it runs, so two reconciles of one store cannot interleave their repairs. A repair is refused
//! when the log moved after the replay started: the live store may then hold newer entities
//! than the expected view, and "repairing" them would roll them back.

pub mod diff;
pub mod expected;
pub mod replay;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Number, Value};
use tributary_runtime::clock::now_ms;

pub use diff::{ReconcileMetrics, RepairReport, Report, ViewReport};
pub use expected::{Expected, ExpectedView, Rules};

pub use crate::job::{LockConfig, NoProgress, Progress};

use crate::change::{Change, Fields, Op, WriteError};
use crate::job::{JobError, Jobs, Lease};
use crate::runner::SourceTopic;
use crate::store::Store;

/// An entity's identity: its view and its id within the view (for append entries, the id the
/// store gives the entry, `<key>#<version>` by default).
pub type EntityId = (&'static str, String);

/// One entity, expected or live.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// Its version (the stored one, for a live entity; 0 when the store keeps none).
    pub version: i64,
    /// Expected: the fields as the projection made them. Live: as read, normalized.
    pub fields: Fields,
    /// For an append entry, the key it was appended under.
    pub append_key: Option<String>,
    /// Time of the last event that changed it (expected entities; 0 for live ones): a repair
    /// writes it as the sink would have.
    pub event_time_ms: i64,
}

/// Entities by id.
pub type Snapshot = BTreeMap<EntityId, Entity>;

/// The version a release gives an entity: below every real sequence, so that any write wins.
/// A power of two, so Redis' Lua (doubles) still tells it from the value one above it.
pub const RELEASED_VERSION: i64 = -(1 << 52);

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kafka: {action}: {source}")]
    Kafka {
        action: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic `{topic}` does not exist")]
    NoSuchTopic { topic: String },
    #[error(
        "replay stalled: no record of {topic}/{partition} (high watermark {high}) for {waited:?}"
    )]
    Stalled {
        topic: String,
        partition: i32,
        high: i64,
        waited: Duration,
    },
    #[error("decoding {topic}/{partition}@{offset} needs the schema registry: {source}")]
    Registry {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: tributary_schemas::CodecError,
    },
    #[error("{store}: {action}: {message}")]
    Store {
        store: &'static str,
        action: String,
        message: String,
    },
    #[error("lock `{key}`: {source}")]
    Lock {
        key: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("another reconcile holds the lock `{key}`")]
    Locked { key: String },
    #[error("the lock `{key}` was lost during the run (its lease ran out)")]
    LockLost { key: String },
    #[error("{topic}/{partition} moved from high watermark {before} to {after} during the run: repair refused, since the store may hold newer entities than the replay; run again (with producers or processors quiet)")]
    LogMoved {
        topic: String,
        partition: i32,
        before: i64,
        after: i64,
    },
    #[error("repair write failed: {0}")]
    Write(#[from] WriteError),
    #[error("{topic}/{partition} starts at offset {log_start}, not 0: the records before it were deleted (retention or DeleteRecords), so a replay would be a view of the retained part of the log only; refused (`--allow-truncated-log` accepts that)")]
    TruncatedLog {
        topic: String,
        partition: i32,
        log_start: i64,
    },
}

impl ReconcileError {
    /// Whether running again can help (the store, the broker or the lock holder may be back).
    pub fn retriable(&self) -> bool {
        match self {
            ReconcileError::Kafka { .. }
            | ReconcileError::Stalled { .. }
            | ReconcileError::Registry { .. }
            | ReconcileError::Store { .. }
            | ReconcileError::Lock { .. }
            | ReconcileError::Locked { .. }
            | ReconcileError::LockLost { .. }
            | ReconcileError::LogMoved { .. } => true,
            ReconcileError::TruncatedLog { .. } => false,
            ReconcileError::NoSuchTopic { .. } => false,
            ReconcileError::Write(e) => e.retriable(),
        }
    }
}

/// An entity a repair releases (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    pub id: &'a EntityId,
    /// The live entity, when the store holds one.
    pub live: Option<&'a Entity>,
    /// The repair writes the entity afterwards (missing or differing); otherwise it deletes it
    /// (extra), and tombstones of it are kept.
    pub rewrite: bool,
}

/// One store as reconcile sees it.
#[async_trait::async_trait]
pub trait LiveStore: Send + Sync {
    /// The views reconcile compares, reported even when empty.
    fn views(&self) -> Vec<&'static str>;

    /// How the store applies changes beyond the common rules.
    fn rules(&self) -> Rules {
        Rules::default()
    }

    /// The normalized fields the store keeps of an expected entity; `None` when it keeps none
    /// (e.g. it expired). `now_ms` is the time the store is read at.
    fn expected_fields(&self, id: &EntityId, entity: &Entity, now_ms: i64) -> Option<Fields>;

    /// Every live entity of [`LiveStore::views`], its fields normalized.
    async fn read(&self) -> Result<Snapshot, ReconcileError>;

    /// Makes the store forget the versions of `items` so that a repair's ordinary write wins.
    async fn release(&self, items: &[Release<'_>]) -> Result<(), ReconcileError>;

    /// True when [`LiveStore::release`] removes the entities themselves, so that an extra one
    /// needs no delete afterwards.
    fn release_removes(&self) -> bool {
        false
    }
}

/// How to reconcile one store.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub brokers: String,
    /// Topics to replay; empty means the production topic of every stream the projection reads.
    pub sources: Vec<SourceTopic>,
    /// Ids shown per view and kind.
    pub samples: usize,
    /// Fix the drift found.
    pub repair: bool,
    /// The store's lock, held for the whole run.
    pub lock: LockConfig,
    /// The replay fails when no record arrives for this long while records are due.
    pub idle_timeout: Duration,
    /// Changes per repair write.
    pub repair_batch: usize,
    /// Replay an event topic whose log start is above 0 anyway (see
    /// [`replay::check_whole_log`]): the expected view is then that of the retained records only.
    pub allow_truncated_log: bool,
}

impl ReconcileConfig {
    /// Defaults for `store`: the local stack's broker (the binary sets `brokers`), the store's
    /// lock ([`LockConfig::of_store`]), 10 samples.
    pub fn new(store: &str) -> Self {
        Self {
            brokers: tributary_runtime::config::KAFKA_BROKERS.default.to_string(),
            sources: Vec::new(),
            samples: 10,
            repair: false,
            lock: LockConfig::of_store(store),
            idle_timeout: Duration::from_secs(30),
            repair_batch: 500,
            allow_truncated_log: false,
        }
    }
}

/// What a reconcile works with: the store as reconcile sees it is its [`LiveStore`].
pub type Parts<'a> = crate::job::Parts<'a, dyn LiveStore + 'a>;

/// Reconciles each of `stores` in turn (connected from `jobs.settings`, replaying the topics of
/// `jobs.topic_prefix`), handing each report to `on_report` as soon as it is made. `configure`
/// adjusts each store's [`ReconcileConfig::new`] (broker, repair, samples...). Stops at the
/// first store that fails.
pub async fn reconcile_stores(
    stores: &[&'static dyn Store],
    jobs: &Jobs<'_>,
    configure: &(dyn Fn(&mut ReconcileConfig) + Send + Sync),
    on_report: &mut (dyn FnMut(&Report) + Send),
) -> Result<Vec<Report>, JobError> {
    let mut reports = Vec::with_capacity(stores.len());
    for &store in stores {
        let report = reconcile_store(store, jobs, configure).await?;
        on_report(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// Connects `store` and reconciles it: [`reconcile`] with the store's parts.
pub async fn reconcile_store(
    store: &'static dyn Store,
    jobs: &Jobs<'_>,
    configure: &(dyn Fn(&mut ReconcileConfig) + Send + Sync),
) -> Result<Report, JobError> {
    let connected = store.config(jobs.settings)?.build().await?;
    let mut config = ReconcileConfig::new(store.name());
    config.sources = crate::stores::sources(connected.projection.as_ref(), jobs.topic_prefix);
    configure(&mut config);
    let progress = (jobs.progress)(store.name());
    let parts = Parts {
        codec: jobs.codec,
        projection: connected.projection.as_ref(),
        writer: connected.writer.as_ref(),
        store: connected.live.as_ref(),
        lock: jobs.lock.clone(),
        progress: progress.as_ref(),
    };
    reconcile(&config, parts)
        .await
        .map_err(|source| JobError::Reconcile {
            store: store.name(),
            source,
        })
}

/// Replays the log, compares it with the store and, if asked, repairs the drift; holding the
/// store's lock throughout.
pub async fn reconcile(
    config: &ReconcileConfig,
    parts: Parts<'_>,
) -> Result<Report, ReconcileError> {
    let lease = Lease::take(parts.lock.clone(), &config.lock).await?;
    let result = run(config, &parts, &lease).await;
    lease.give_back().await;
    parts.progress.finish();
    result
}

async fn run(
    config: &ReconcileConfig,
    parts: &Parts<'_>,
    lease: &Lease,
) -> Result<Report, ReconcileError> {
    let live_store = parts.store;
    let sources: Vec<SourceTopic> = if config.sources.is_empty() {
        parts
            .projection
            .streams()
            .iter()
            .map(|s| SourceTopic::of(*s))
            .collect()
    } else {
        config.sources.clone()
    };
    let mut fold = Expected::new(live_store.rules());
    let marks = replay::current_watermarks(&config.brokers, &sources)?;
    replay::check_whole_log(&marks, config.allow_truncated_log)?;
    let stats = replay::replay_ranges(
        &config.brokers,
        &sources,
        &marks,
        parts.codec,
        parts.projection,
        &mut fold,
        parts.progress,
        config.idle_timeout,
    )
    .await?;
    let expected = fold.finish();
    parts.progress.start("reading the store", 0);
    let live = live_store.read().await?;
    let wanted = expected_fields(live_store, &expected.entities);
    let views = live_store.views();
    let drift = diff::diff(&views, &wanted, &fields_of(&live));
    let mut report = Report {
        store: parts.writer.store(),
        records: stats.records,
        skipped: stats.skipped,
        views: drift
            .iter()
            .map(|d| ViewReport::of(d, config.samples))
            .collect(),
        repair: None,
    };
    if !config.repair || report.drift() == 0 {
        return Ok(report);
    }

    lease.check()?;
    let now = replay::current_watermarks(&config.brokers, &sources)?;
    for (id, before) in &stats.watermarks {
        let after = now.get(id).map(|r| r.high).unwrap_or(before.high);
        if after != before.high {
            return Err(ReconcileError::LogMoved {
                topic: id.0.clone(),
                partition: id.1,
                before: before.high,
                after,
            });
        }
    }
    parts.progress.start("repairing", report.drift() as u64);
    let (written, deleted) = repair(config, parts, &expected, &live, &drift).await?;
    let after = live_store.read().await?;
    let wanted = expected_fields(live_store, &expected.entities);
    let remaining = diff::diff(&views, &wanted, &fields_of(&after));
    report.repair = Some(RepairReport {
        written,
        deleted,
        remaining: remaining
            .iter()
            .map(|d| ViewReport::of(d, config.samples))
            .collect(),
    });
    Ok(report)
}

/// Releases the drifting entities, then writes the missing and differing ones with their
/// expected version and deletes the extra ones, through the sink's writer.
async fn repair(
    config: &ReconcileConfig,
    parts: &Parts<'_>,
    expected: &ExpectedView,
    live: &Snapshot,
    drift: &[diff::ViewDrift],
) -> Result<(usize, usize), ReconcileError> {
    let mut ids: Vec<(EntityId, bool)> = Vec::new();
    for d in drift {
        for key in d.missing.iter().chain(&d.differing) {
            ids.push(((d.view, key.clone()), true));
        }
        for key in &d.extra {
            ids.push(((d.view, key.clone()), false));
        }
    }
    let releases: Vec<Release<'_>> = ids
        .iter()
        .map(|(id, rewrite)| Release {
            id,
            live: live.get(id),
            rewrite: *rewrite,
        })
        .collect();
    parts.store.release(&releases).await?;

    let mut changes: Vec<Change> = Vec::with_capacity(ids.len());
    let (mut written, mut deleted) = (0, 0);
    for (id, rewrite) in &ids {
        if *rewrite {
            let Some(e) = expected.entities.get(id) else {
                continue;
            };
            let (key, op) = match &e.append_key {
                Some(key) => (key.clone(), Op::Append(e.fields.clone())),
                None => (id.1.clone(), Op::Upsert(e.fields.clone())),
            };
            changes.push(Change {
                view: id.0,
                key,
                version: e.version,
                event_time_ms: e.event_time_ms,
                op,
            });
            written += 1;
        } else {
            deleted += 1;
            // An extra append entry is gone with its release.
            if parts.store.release_removes() || live.get(id).is_some_and(|e| e.append_key.is_some())
            {
                continue;
            }
            let version = expected
                .deleted
                .get(id)
                .copied()
                .unwrap_or(RELEASED_VERSION + 1)
                .max(RELEASED_VERSION + 1);
            changes.push(Change {
                view: id.0,
                key: id.1.clone(),
                version,
                event_time_ms: now_ms(),
                op: Op::Delete,
            });
        }
    }
    for chunk in changes.chunks(config.repair_batch.max(1)) {
        parts.writer.write(chunk).await?;
        parts.progress.advance(chunk.len() as u64);
    }
    Ok((written, deleted))
}

fn expected_fields(store: &dyn LiveStore, entities: &Snapshot) -> BTreeMap<EntityId, Fields> {
    let now = now_ms();
    entities
        .iter()
        .filter_map(|(id, e)| Some((id.clone(), store.expected_fields(id, e, now)?)))
        .collect()
}

fn fields_of(live: &Snapshot) -> BTreeMap<EntityId, Fields> {
    live.iter()
        .map(|(id, e)| (id.clone(), e.fields.clone()))
        .collect()
}

/// Drops null fields (at every depth) and turns integral floats into integers, so that a value
/// compares equal whichever way a store typed it.
pub fn normalize(fields: Fields) -> Fields {
    fields
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k, normalize_value(v)))
        .collect()
}

fn normalize_value(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(normalize(map)),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_value).collect()),
        Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                Value::Number(Number::from(f as i64))
            }
            _ => Value::Number(n),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize_drops_nulls_and_unifies_numbers() {
        let f = json!({"a": null, "b": 2.0, "c": {"d": null, "e": [1.0, 1.5]}, "s": "x"});
        let f = normalize(f.as_object().cloned().unwrap_or_default());
        assert_eq!(
            Value::Object(f),
            json!({"b": 2, "c": {"e": [1, 1.5]}, "s": "x"})
        );
    }

    #[test]
    fn released_version_is_exact_as_a_double() {
        assert_eq!(RELEASED_VERSION as f64 as i64, RELEASED_VERSION);
        assert_ne!((RELEASED_VERSION + 1) as f64, RELEASED_VERSION as f64);
    }
}
