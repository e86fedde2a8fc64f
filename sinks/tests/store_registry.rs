//! "A new store is one folder and one line in the list", checked without scaffolding a file.
//!
//! `mod noop` below is a fifth store written the way a folder `src/noop/` would be: its list
//! entry (name, options, projection), its config type whose `build()` returns its parts, and
//! those parts (writer, live view for reconcile, rebuild target, growth sampler). It keeps its
//! views in memory and counts what the machinery asked of it. `with_noop()` is the list of
//! stores plus one line. The generic reconcile, rebuild and growth paths then run over that
//! list, selected by name as the CLI selects (`stores::select`), against real event topics:
//! if any of them named the four stores instead of taking what the list gives, the fifth
//! store would not be reached and the assertions below would fail.
//!
//! Needs the broker, the schema registry and Redis (the store's lock) of the local stack; the
//! four real stores are only sampled (read-only), and an unreachable one is reported, not fatal.

mod runner_common;

use std::time::Duration;

use runner_common::*;
use tributary_runtime::config::{
    DATABASE_URL, ELASTICSEARCH_URL, KAFKA_BROKERS, MONGODB_URL, REDIS_URL,
};
use tributary_runtime::kafka::{ensure_topic, unique_name, TopicSpec};
use tributary_sinks::growth;
use tributary_sinks::job::{self, Jobs, NoProgress, Progress};
use tributary_sinks::rebuild;
use tributary_sinks::reconcile;
use tributary_sinks::runner::EventStream;
use tributary_sinks::store::{Settings, Store};
use tributary_sinks::stores;

/// What `src/noop/` would hold.
mod noop {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, MutexGuard};

    use serde_json::json;
    use tributary_sinks::change::{Change, Fields, Op, ViewWriter, WriteError, WriteOutcome};
    use tributary_sinks::growth::{GrowthError, Sampler, ViewSize};
    use tributary_sinks::rebuild::{RebuildError, Target};
    use tributary_sinks::reconcile::{
        normalize, Entity, EntityId, LiveStore, ReconcileError, Release, Snapshot, RELEASED_VERSION,
    };
    use tributary_sinks::runner::projection::build;
    use tributary_sinks::runner::{Event, EventStream, ProjectError, Projection};
    use tributary_sinks::store::{
        Settings, Store, StoreConfig, StoreError, StoreOption, StoreParts,
    };

    pub const STORE: &str = "noop";
    /// Its one view: a thing per user.
    pub const THINGS: &str = "things";
    const URL: &str = "noop-url";

    type View = BTreeMap<String, (i64, Fields)>;

    /// The store's memory: the live view, a rebuild's copy, and every call the machinery made.
    pub struct Memory {
        pub live: View,
        copy: Option<View>,
        calls: BTreeMap<&'static str, usize>,
    }

    /// The list entry; the one instance is [`super::NOOP`].
    pub struct Noop {
        memory: Mutex<Memory>,
    }

    impl Noop {
        pub const fn new() -> Self {
            Self {
                memory: Mutex::new(Memory {
                    live: BTreeMap::new(),
                    copy: None,
                    calls: BTreeMap::new(),
                }),
            }
        }

        pub fn memory(&self) -> MutexGuard<'_, Memory> {
            self.memory.lock().unwrap_or_else(|p| p.into_inner())
        }

        fn called(&self, what: &'static str) {
            *self.memory().calls.entry(what).or_default() += 1;
        }

        pub fn calls(&self, what: &str) -> usize {
            self.memory().calls.get(what).copied().unwrap_or(0)
        }
    }

    const OPTIONS: &[StoreOption] = &[StoreOption {
        name: URL,
        env: None,
        default: Some("memory://"),
        help: "Where the no-op store keeps its views",
        value_name: "URL",
        address: true,
    }];

    impl Store for Noop {
        fn name(&self) -> &'static str {
            STORE
        }

        fn options(&self) -> &'static [StoreOption] {
            OPTIONS
        }

        fn projection(&self) -> Arc<dyn Projection> {
            Arc::new(NoopProjection)
        }

        fn config(&self, settings: &Settings) -> Result<Box<dyn StoreConfig>, StoreError> {
            self.called("config");
            Ok(Box::new(NoopConfig {
                url: settings.require(STORE, URL)?.to_string(),
            }))
        }
    }

    /// The store's config type.
    pub struct NoopConfig {
        url: String,
    }

    #[async_trait::async_trait]
    impl StoreConfig for NoopConfig {
        async fn build(&self) -> Result<StoreParts, StoreError> {
            if self.url != "memory://" {
                return Err(StoreError::Invalid {
                    store: STORE,
                    message: format!("unknown address {}", self.url),
                });
            }
            super::NOOP.called("build");
            Ok(StoreParts {
                projection: Arc::new(NoopProjection),
                writer: Arc::new(NoopWriter { copy: false }),
                live: Arc::new(NoopLive),
                target: Arc::new(NoopTarget),
                sampler: Arc::new(NoopSampler),
            })
        }
    }

    /// Users → things.
    pub struct NoopProjection;

    impl Projection for NoopProjection {
        fn streams(&self) -> &[EventStream] {
            &[EventStream::Users]
        }

        fn project(&self, event: &Event) -> Result<Vec<Change>, ProjectError> {
            Ok(match event {
                Event::User(e) => vec![build::change(
                    e,
                    THINGS,
                    &e.aggregate_id,
                    Op::Upsert(build::fields(json!({ "user": e.aggregate_id }))),
                )],
                _ => Vec::new(),
            })
        }
    }

    /// Writes the live view, or the copy of a rebuild; newer versions only.
    pub struct NoopWriter {
        copy: bool,
    }

    #[async_trait::async_trait]
    impl ViewWriter for NoopWriter {
        fn store(&self) -> &'static str {
            STORE
        }

        async fn write(&self, batch: &[Change]) -> Result<WriteOutcome, WriteError> {
            let noop = &super::NOOP;
            noop.called(if self.copy { "write copy" } else { "write" });
            let mut memory = noop.memory();
            let Memory { live, copy, .. } = &mut *memory;
            let view = match (self.copy, copy.as_mut()) {
                (false, _) => live,
                (true, Some(copy)) => copy,
                (true, None) => {
                    return Err(WriteError::Unavailable {
                        store: STORE,
                        message: "no copy prepared".into(),
                    })
                }
            };
            let mut outcome = WriteOutcome::default();
            for c in batch {
                if view.get(&c.key).is_some_and(|(v, _)| *v >= c.version) {
                    outcome.stale += 1;
                    continue;
                }
                match &c.op {
                    Op::Upsert(f) | Op::Patch(f) | Op::Append(f) => {
                        view.insert(c.key.clone(), (c.version, f.clone()));
                    }
                    Op::Delete => {
                        view.remove(&c.key);
                    }
                }
                outcome.applied += 1;
            }
            Ok(outcome)
        }
    }

    /// The live view as reconcile reads it.
    pub struct NoopLive;

    #[async_trait::async_trait]
    impl LiveStore for NoopLive {
        fn views(&self) -> Vec<&'static str> {
            vec![THINGS]
        }

        fn expected_fields(&self, _id: &EntityId, entity: &Entity, _now_ms: i64) -> Option<Fields> {
            Some(normalize(entity.fields.clone()))
        }

        async fn read(&self) -> Result<Snapshot, ReconcileError> {
            super::NOOP.called("read");
            Ok(super::NOOP
                .memory()
                .live
                .iter()
                .map(|(key, (version, fields))| {
                    (
                        (THINGS, key.clone()),
                        Entity {
                            version: *version,
                            fields: normalize(fields.clone()),
                            append_key: None,
                            event_time_ms: 0,
                        },
                    )
                })
                .collect())
        }

        async fn release(&self, items: &[Release<'_>]) -> Result<(), ReconcileError> {
            super::NOOP.called("release");
            let mut memory = super::NOOP.memory();
            for item in items {
                if let Some(entry) = memory.live.get_mut(&item.id.1) {
                    entry.0 = RELEASED_VERSION;
                }
            }
            Ok(())
        }
    }

    /// A rebuild's copy, swapped in by replacing the live view.
    pub struct NoopTarget;

    #[async_trait::async_trait]
    impl Target for NoopTarget {
        fn copy(&self) -> String {
            "a copy in memory".into()
        }

        async fn prepare(&self) -> Result<Arc<dyn ViewWriter>, RebuildError> {
            super::NOOP.called("prepare");
            super::NOOP.memory().copy = Some(View::new());
            Ok(Arc::new(NoopWriter { copy: true }))
        }

        async fn swap(&self) -> Result<(), RebuildError> {
            super::NOOP.called("swap");
            let mut memory = super::NOOP.memory();
            let copy = memory.copy.take().unwrap_or_default();
            memory.live = copy;
            Ok(())
        }

        async fn drop_old(&self) -> Result<(), RebuildError> {
            super::NOOP.called("drop_old");
            Ok(())
        }

        async fn discard(&self) -> Result<(), RebuildError> {
            super::NOOP.called("discard");
            super::NOOP.memory().copy = None;
            Ok(())
        }
    }

    /// Things in the live view.
    pub struct NoopSampler;

    #[async_trait::async_trait]
    impl Sampler for NoopSampler {
        async fn sample(&self, _exact: bool) -> Result<Vec<ViewSize>, GrowthError> {
            super::NOOP.called("sample");
            let n = super::NOOP.memory().live.len();
            Ok(vec![ViewSize {
                store: STORE,
                view: THINGS.to_string(),
                entities: Some(i64::try_from(n).unwrap_or(i64::MAX)),
                bytes: None,
            }])
        }
    }
}

static NOOP: noop::Noop = noop::Noop::new();

/// The list of stores, plus the one line a fifth store adds.
fn with_noop() -> Vec<&'static dyn Store> {
    let mut list = stores::all().to_vec();
    list.push(&NOOP);
    list
}

fn no_progress(_store: &'static str) -> Box<dyn Progress> {
    Box::new(NoProgress)
}

#[tokio::test]
async fn a_fifth_store_is_one_module_and_one_list_entry_and_every_job_reaches_it() {
    // The list lives in one place, and a store added to it is found, selected and configured
    // like the others.
    assert_eq!(
        stores::names(stores::all()),
        ["postgres", "mongodb", "redis", "elasticsearch"]
    );
    let list = with_noop();
    assert!(stores::find(stores::all(), noop::STORE).is_none());
    assert_eq!(
        stores::find(&list, noop::STORE).map(|s| s.name()),
        Some(noop::STORE)
    );
    let every = stores::select(&list, stores::ALL).expect("all");
    assert_eq!(stores::names(&every).last(), Some(&noop::STORE));
    assert!(stores::options(&list).iter().any(|o| o.name == "noop-url"));
    assert_eq!(
        stores::of_sink_group(&list, "t.", "t.tributary-sink-noop").map(|s| s.name()),
        Some(noop::STORE)
    );
    let mut settings = Settings::defaults(list.iter().copied());
    assert_eq!(settings.get("noop-url"), Some("memory://"));
    settings
        .set("database-url", DATABASE_URL.get())
        .set("mongodb-url", MONGODB_URL.get())
        .set("redis-url", REDIS_URL.get())
        .set("elasticsearch-url", ELASTICSEARCH_URL.get());

    // Three users on the store's topic, in a pipeline of the test's own topic prefix.
    let prefix = format!("{}.", unique_name("test-store-registry"));
    let sources = stores::sources(NOOP.projection().as_ref(), &prefix);
    assert_eq!(sources.len(), 1);
    for s in &sources {
        ensure_topic(
            &KAFKA_BROKERS.get(),
            &s.topic,
            TopicSpec {
                partitions: 1,
                compacted: false,
            },
        )
        .await
        .expect("topic created");
    }
    let codec = codec();
    let mut records = Vec::new();
    for user in ["u1", "u2", "u3"] {
        records.push(encode(&codec, EventStream::Users, user, &user_registered(user, 1)).await);
    }
    produce(&sources, &records).await;

    let selected = stores::select(&list, noop::STORE).expect("the new store is a choice");
    let jobs = Jobs {
        settings: &settings,
        topic_prefix: &prefix,
        codec: &codec,
        lock: job::lock_connection(&settings)
            .await
            .expect("redis reachable"),
        progress: &no_progress,
    };

    // Reconcile: replays the store's topics through its projection, reads its live view, and
    // repairs it through its writer.
    let lock_key = unique_name("test-store-registry-lock");
    let mut seen = Vec::new();
    let reports = reconcile::reconcile_stores(
        &selected,
        &jobs,
        &|c| {
            c.brokers = KAFKA_BROKERS.get();
            c.lock.key = lock_key.clone();
            c.repair = true;
            c.samples = 10;
        },
        &mut |r| seen.push(r.store),
    )
    .await
    .expect("reconcile runs over the new store");
    assert_eq!(seen, [noop::STORE]);
    let report = &reports[0];
    assert_eq!(report.store, noop::STORE);
    assert_eq!(report.records, 3, "{report}");
    assert_eq!(report.drift(), 3, "three things missing: {report}");
    assert_eq!(report.remaining(), Some(0), "repaired: {report}");
    assert_eq!(NOOP.memory().live.len(), 3);
    assert!(NOOP.calls("read") >= 2 && NOOP.calls("release") == 1);

    // Rebuild: fills a copy through the target's writer and swaps it in.
    NOOP.memory().live.clear();
    let reports = rebuild::rebuild_stores(
        &selected,
        &jobs,
        &|c| {
            c.brokers = KAFKA_BROKERS.get();
            c.lock.key = lock_key.clone();
        },
        &mut |_| {},
    )
    .await
    .expect("rebuild runs over the new store");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].store, noop::STORE);
    assert_eq!(reports[0].records, 3, "{}", reports[0]);
    assert_eq!(
        (
            NOOP.calls("prepare"),
            NOOP.calls("swap"),
            NOOP.calls("drop_old")
        ),
        (1, 1, 1)
    );
    assert_eq!(NOOP.memory().live.len(), 3, "the copy is live");

    // Growth (the summary's and each sink's): every store of the list is sampled, the new one
    // included, in the list's order.
    let sizes = tokio::time::timeout(
        Duration::from_secs(120),
        growth::view_sizes(&list, &settings),
    )
    .await
    .expect("sampling ends");
    let names: Vec<&str> = sizes.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, stores::names(&list));
    let (_, noop_sizes) = sizes.last().expect("the new store is sampled");
    let things = noop_sizes
        .as_ref()
        .expect("sampled")
        .iter()
        .find(|s| s.view == noop::THINGS)
        .and_then(|s| s.entities);
    assert_eq!(things, Some(3));
    assert!(NOOP.calls("build") >= 3, "built once per job");
}
