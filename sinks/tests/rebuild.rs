//! `rebuild` against the real broker, registry and stores: a sink applies a fixed event log and
//! keeps running; the live view is corrupted behind its back; while more events arrive and a
//! reader polls the view, a rebuild builds a copy from the log and swaps it in. Afterwards the
//! reader never saw the view empty or missing, reconcile finds no drift (the corruption is
//! gone, the events produced during the rebuild are there), and the old copy is gone. Each
//! test uses its own topics, consumer group, lock key and store namespace.

mod runner_common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::Method;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use runner_common::*;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tributary_runtime::config::{ELASTICSEARCH_URL, KAFKA_BROKERS, MONGODB_URL, REDIS_URL};
use tributary_runtime::kafka::unique_name;
use tributary_sinks::change::ViewWriter;
use tributary_sinks::rebuild::{rebuild, Parts, RebuildConfig, RebuildReport, Target};
use tributary_sinks::reconcile::{self, LiveStore, NoProgress, ReconcileConfig};
use tributary_sinks::runner::{EventStream, Projection, SourceTopic};

const WAIT: Duration = Duration::from_secs(90);

async fn lock_conn() -> ConnectionManager {
    let client = redis::Client::open(REDIS_URL.get()).expect("redis url");
    ConnectionManager::new(client)
        .await
        .expect("redis reachable")
}

fn tombstone(stream: EventStream, key: &str) -> Rec {
    Rec {
        stream,
        key: key.into(),
        value: None,
    }
}

/// A task polling a view until stopped; it records every poll that found fewer than `min`
/// entities or failed (a missing table, collection or alias).
struct Reader {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(u64, Vec<String>)>,
}

impl Reader {
    fn start<F, Fut>(min: i64, mut probe: F) -> Reader
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<i64, String>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut polls, mut bad) = (0u64, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                polls += 1;
                match probe().await {
                    Ok(n) if n >= min => {}
                    Ok(n) => bad.push(format!("poll {polls}: {n} entities")),
                    Err(e) => bad.push(format!("poll {polls}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (polls, bad)
        });
        Reader { stop, task }
    }

    /// Stops the reader and asserts it polled and never saw the view empty or missing.
    async fn check(self) {
        self.stop.store(true, Ordering::SeqCst);
        let (polls, bad) = self.task.await.expect("reader did not panic");
        assert!(polls > 5, "the reader polled during the rebuild ({polls})");
        assert!(
            bad.is_empty(),
            "the reader saw an empty or missing view: {bad:?}"
        );
    }
}

/// Produces `records` one by one with a pause between them, in the background.
fn trickle(sources: &[SourceTopic], records: Vec<Rec>) -> JoinHandle<()> {
    let sources = sources.to_vec();
    tokio::spawn(async move {
        for r in records {
            produce(&sources, std::slice::from_ref(&r)).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    })
}

async fn run_rebuild(
    sources: &[SourceTopic],
    projection: &dyn Projection,
    target: &dyn Target,
    live: &dyn ViewWriter,
) -> RebuildReport {
    let mut config = RebuildConfig::new("test");
    config.brokers = KAFKA_BROKERS.get();
    config.sources = sources.to_vec();
    config.lock.key = unique_name("test-rebuild-lock");
    // Small batches: the copy is written in several of them, as a long log would be.
    config.batch_records = 4;
    let codec = codec();
    let report = rebuild(
        &config,
        Parts {
            codec: &codec,
            projection,
            store: target,
            writer: live,
            lock: lock_conn().await,
            progress: &NoProgress,
        },
    )
    .await
    .expect("rebuild runs");
    eprint!("{report}");
    report
}

async fn assert_no_drift(
    sources: &[SourceTopic],
    projection: &dyn Projection,
    live: &dyn LiveStore,
    writer: &dyn ViewWriter,
) {
    let mut config = ReconcileConfig::new("test");
    config.brokers = KAFKA_BROKERS.get();
    config.sources = sources.to_vec();
    config.samples = 100;
    config.lock.key = unique_name("test-reconcile-lock");
    let codec = codec();
    let report = reconcile::reconcile(
        &config,
        reconcile::Parts {
            codec: &codec,
            projection,
            store: live,
            writer,
            lock: lock_conn().await,
            progress: &NoProgress,
        },
    )
    .await
    .expect("reconcile runs");
    assert_eq!(report.drift(), 0, "the rebuilt view is the log's: {report}");
}

// ---- Elasticsearch ----

async fn es(
    client: &elasticsearch::Elasticsearch,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let response = client
        .send(
            method,
            path,
            HeaderMap::new(),
            Option::<&()>::None,
            body.map(|b| b.to_string()),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status_code().as_u16();
    Ok((
        status,
        response.json::<Value>().await.unwrap_or(Value::Null),
    ))
}

#[tokio::test]
async fn elasticsearch_rebuild_swaps_in_a_complete_index_behind_the_alias() {
    use tributary_sinks::elasticsearch::indices::{alias_target, drop_all, INDICES};
    use tributary_sinks::elasticsearch::live::EsLive;
    use tributary_sinks::elasticsearch::projection::{EsProjection, ORDERS, PRODUCTS};
    use tributary_sinks::elasticsearch::rebuild::EsTarget;
    use tributary_sinks::elasticsearch::{migrate, EsWriter};
    let prefix = format!("{}-", unique_name("tributary-test"));
    let writer = EsWriter::connect(&ELASTICSEARCH_URL.get(), prefix.clone()).expect("client");
    migrate(writer.client(), &prefix).await.expect("migrate");
    let client = writer.client().clone();
    let streams = [
        EventStream::Inventory,
        EventStream::Orders,
        EventStream::Analytics,
    ];
    let sources = topics("rebuild-es", &streams, 2).await;
    let codec = codec();
    let (i, o, a) = (
        EventStream::Inventory,
        EventStream::Orders,
        EventStream::Analytics,
    );
    let log = vec![
        encode(&codec, i, "p1", &product_added("p1", 1, 10)).await,
        encode(&codec, i, "p2", &product_added("p2", 1, 4)).await,
        encode(&codec, i, "p1", &product_restocked("p1", 2, 15)).await,
        encode(&codec, o, "o1", &order_placed("o1", "u1", 1, 2500)).await,
        encode(&codec, o, "o1", &order_confirmed("o1", "u1", 2, 2500)).await,
        encode(&codec, o, "o2", &order_placed("o2", "u2", 1, 900)).await,
        encode(&codec, o, "o2", &order_cancelled("o2", "u2", 2)).await,
        encode(&codec, o, "o3", &order_placed("o3", "u1", 1, 100)).await,
        tombstone(o, "o3"),
        encode(&codec, a, "revenue-EUR", &revenue_window(1, 2, 3400)).await,
    ];
    produce(&sources, &log).await;
    let cfg = sink_config("es-rebuild", &sources);
    let group = cfg.group_id.clone();
    let running = Running::start(cfg, Arc::new(EsProjection), Arc::new(writer.clone()));
    wait_caught_up(&group, &sources, WAIT).await;

    // Corrupt the live view: a removed document and an extra one.
    let doc = |view: &str, id: &str| format!("/{prefix}{view}/_doc/{id}");
    es(
        &client,
        Method::Delete,
        &format!("{}?refresh=true", doc(ORDERS, "o2")),
        None,
    )
    .await
    .expect("delete o2");
    es(
        &client,
        Method::Put,
        &format!("{}?refresh=true", doc(PRODUCTS, "p9")),
        Some(json!({ "sku": "SKU-p9", "name": "ghost", "price_cents": 1, "currency": "EUR", "stock": 1 })),
    )
    .await
    .expect("extra p9");
    let old: Vec<String> = {
        let mut old = Vec::new();
        for spec in INDICES {
            old.push(
                alias_target(&client, &spec.alias(&prefix))
                    .await
                    .expect("alias")
                    .expect("alias exists"),
            );
        }
        old
    };

    let reader = {
        let (client, path) = (client.clone(), format!("/{prefix}{PRODUCTS}/_count"));
        Reader::start(1, move || {
            let (client, path) = (client.clone(), path.clone());
            async move {
                match es(&client, Method::Get, &path, None).await? {
                    (200, body) => body["count"].as_i64().ok_or(format!("no count: {body}")),
                    (status, body) => Err(format!("HTTP {status}: {body}")),
                }
            }
        })
    };
    let more = trickle(
        &sources,
        vec![
            encode(&codec, i, "p4", &product_added("p4", 1, 7)).await,
            encode(&codec, o, "o4", &order_placed("o4", "u4", 1, 300)).await,
            encode(&codec, i, "p4", &product_restocked("p4", 2, 9)).await,
        ],
    );
    let target = EsTarget::new(client.clone(), prefix.clone());
    let report = run_rebuild(&sources, &EsProjection, &target, &writer).await;
    more.await.expect("produced");
    wait_caught_up(&group, &sources, WAIT).await;
    reader.check().await;
    running.stop().await;
    assert!(report.records >= log.len() as u64, "{report}");

    let live = EsLive::new(client.clone(), prefix.clone());
    assert_no_drift(&sources, &EsProjection, &live, &writer).await;
    let (status, _) = es(&client, Method::Get, &doc(PRODUCTS, "p9"), None)
        .await
        .expect("get p9");
    assert_eq!(status, 404, "the extra document is gone");
    let (status, o2) = es(&client, Method::Get, &doc(ORDERS, "o2"), None)
        .await
        .expect("get o2");
    assert_eq!(
        (status, &o2["_source"]["status"]),
        (200, &json!("CANCELLED"))
    );
    for (spec, old) in INDICES.iter().zip(&old) {
        let now = alias_target(&client, &spec.alias(&prefix))
            .await
            .expect("alias")
            .expect("alias exists");
        assert_eq!(now, target.copy_index(spec));
        let (status, _) = es(&client, Method::Get, &format!("/{old}"), None)
            .await
            .expect("get old index");
        assert_eq!(status, 404, "the old index {old} is deleted");
        let scratch = spec.alias(&target.scratch_prefix());
        let (status, _) = es(&client, Method::Get, &format!("/_alias/{scratch}"), None)
            .await
            .expect("get scratch alias");
        assert_eq!(status, 404, "the scratch alias {scratch} is gone");
    }
    let _ = drop_all(&client, &prefix).await;
}

// ---- PostgreSQL ----

#[tokio::test]
async fn postgres_rebuild_swaps_in_a_complete_schema() {
    use tributary_sinks::postgres::live::PostgresLive;
    use tributary_sinks::postgres::rebuild::PostgresTarget;
    use tributary_sinks::postgres::{PostgresConfig, PostgresProjection, PostgresWriter};
    let pg_config = PostgresConfig {
        schema: Some(unique_name("t").replace('-', "_")),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    let writer = PostgresWriter::connect(&pg_config)
        .await
        .expect("postgres reachable and migrated");
    let pool = writer.pool().clone();
    let streams = [
        EventStream::Users,
        EventStream::Orders,
        EventStream::Payments,
        EventStream::Analytics,
    ];
    let sources = topics("rebuild-pg", &streams, 2).await;
    let codec = codec();
    let (u, o, p, a) = (
        EventStream::Users,
        EventStream::Orders,
        EventStream::Payments,
        EventStream::Analytics,
    );
    let log = vec![
        encode(&codec, u, "u1", &user_registered("u1", 1)).await,
        encode(&codec, u, "u2", &user_registered("u2", 1)).await,
        encode(&codec, u, "u1", &profile_updated("u1", 2, "Ada")).await,
        encode(&codec, o, "o1", &order_placed("o1", "u1", 1, 2500)).await,
        encode(&codec, o, "o2", &order_placed("o2", "u2", 1, 900)).await,
        encode(&codec, o, "o3", &order_placed("o3", "u1", 1, 100)).await,
        encode(&codec, o, "o1", &order_confirmed("o1", "u1", 2, 2500)).await,
        encode(&codec, o, "o2", &order_cancelled("o2", "u2", 2)).await,
        tombstone(o, "o3"),
        encode(
            &codec,
            p,
            "pay1",
            &payment_authorized("pay1", "o1", 1, 2500),
        )
        .await,
        encode(&codec, p, "pay1", &payment_captured("pay1", "o1", 2, 2500)).await,
        encode(&codec, a, "revenue-EUR", &revenue_window(1, 2, 3400)).await,
    ];
    produce(&sources, &log).await;
    let cfg = sink_config("pg-rebuild", &sources);
    let group = cfg.group_id.clone();
    let projection = PostgresProjection;
    let running = Running::start(cfg, Arc::new(projection.clone()), Arc::new(writer.clone()));
    wait_caught_up(&group, &sources, WAIT).await;

    for sql in [
        "DELETE FROM users WHERE id = 'u2'",
        "UPDATE orders SET status = 'SHIPPED' WHERE id = 'o1'",
        "INSERT INTO payments (id, status, amount_cents, version, updated_at) \
         VALUES ('pay-x', 'AUTHORIZED', 5, 1, now())",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }

    let reader = {
        let readers = pg_config.pool().expect("reader pool");
        Reader::start(1, move || {
            let readers = readers.clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users")
                    .fetch_one(&readers)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
    };
    let more = trickle(
        &sources,
        vec![
            encode(&codec, u, "u5", &user_registered("u5", 1)).await,
            encode(&codec, o, "o5", &order_placed("o5", "u5", 1, 700)).await,
            encode(&codec, u, "u5", &profile_updated("u5", 2, "Grace")).await,
        ],
    );
    let target = PostgresTarget::new(&pg_config).await.expect("target");
    let report = run_rebuild(&sources, &projection, &target, &writer).await;
    more.await.expect("produced");
    wait_caught_up(&group, &sources, WAIT).await;
    reader.check().await;
    running.stop().await;
    assert!(report.records >= log.len() as u64, "{report}");

    let live = PostgresLive::new(pool.clone());
    assert_no_drift(&sources, &projection, &live, &writer).await;
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = 'o1'")
        .fetch_one(&pool)
        .await
        .expect("o1");
    assert_eq!(status, "CONFIRMED");
    let u2: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id IN ('u2', 'u5')")
        .fetch_one(&pool)
        .await
        .expect("users");
    assert_eq!(
        u2, 2,
        "u2 is back and u5 (produced during the rebuild) is there"
    );
    let extra: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE id = 'pay-x'")
        .fetch_one(&pool)
        .await
        .expect("payments");
    assert_eq!(extra, 0);
    let leftovers: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = ANY($1)")
            .bind(vec![
                target.old_schema().to_string(),
                target.scratch_schema().to_string(),
            ])
            .fetch_all(&pool)
            .await
            .expect("schemas");
    assert!(leftovers.is_empty(), "old copy left: {leftovers:?}");
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("the live schema keeps its migration history");
    assert!(migrations >= 2);

    if let Some(s) = &pg_config.schema {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
            .execute(&pool)
            .await;
    }
}

// ---- MongoDB ----

#[tokio::test]
async fn mongodb_rebuild_renames_complete_collections_over_the_live_ones() {
    use mongodb::bson::{doc, Document};
    use tributary_sinks::mongodb::live::MongoLive;
    use tributary_sinks::mongodb::projection::{MongoProjection, PRODUCTS};
    use tributary_sinks::mongodb::rebuild::MongoTarget;
    use tributary_sinks::mongodb::{migrate, MongoWriter};
    let writer = MongoWriter::connect(&MONGODB_URL.get(), &unique_name("tributary-test"))
        .await
        .expect("client");
    migrate(writer.database()).await.expect("migrate");
    let db = writer.database().clone();
    let sources = topics(
        "rebuild-mongo",
        &[EventStream::Inventory, EventStream::Notifications],
        2,
    )
    .await;
    let codec = codec();
    let inv = EventStream::Inventory;
    let log = vec![
        encode(&codec, inv, "p1", &product_added("p1", 1, 10)).await,
        encode(&codec, inv, "p2", &product_added("p2", 1, 4)).await,
        encode(&codec, inv, "p3", &product_added("p3", 1, 3)).await,
        encode(&codec, inv, "p1", &product_restocked("p1", 2, 15)).await,
        tombstone(inv, "p3"),
    ];
    produce(&sources, &log).await;
    let cfg = sink_config("mongo-rebuild", &sources);
    let group = cfg.group_id.clone();
    let running = Running::start(cfg, Arc::new(MongoProjection), Arc::new(writer.clone()));
    wait_caught_up(&group, &sources, WAIT).await;

    let products = db.collection::<Document>(PRODUCTS);
    products
        .delete_one(doc! { "_id": "p2" })
        .await
        .expect("delete p2");
    products
        .update_one(doc! { "_id": "p1" }, doc! { "$set": { "name": "altered" } })
        .await
        .expect("alter p1");

    let reader = {
        let products = products.clone();
        Reader::start(1, move || {
            let products = products.clone();
            async move {
                products
                    .count_documents(doc! {})
                    .await
                    .map(|n| n as i64)
                    .map_err(|e| e.to_string())
            }
        })
    };
    let more = trickle(
        &sources,
        vec![
            encode(&codec, inv, "p4", &product_added("p4", 1, 7)).await,
            encode(&codec, inv, "p4", &product_restocked("p4", 2, 9)).await,
        ],
    );
    let target = MongoTarget::new(&db);
    let report = run_rebuild(&sources, &MongoProjection, &target, &writer).await;
    more.await.expect("produced");
    wait_caught_up(&group, &sources, WAIT).await;
    reader.check().await;
    running.stop().await;
    assert!(report.records >= log.len() as u64, "{report}");

    let live = MongoLive::new(db.clone());
    assert_no_drift(&sources, &MongoProjection, &live, &writer).await;
    let ids: Vec<String> = products
        .distinct("_id", doc! {})
        .await
        .expect("ids")
        .into_iter()
        .filter_map(|b| b.as_str().map(str::to_string))
        .collect();
    let mut ids = ids;
    ids.sort();
    assert_eq!(ids, vec!["p1", "p2", "p4"]);
    let indexes = products.list_index_names().await.expect("indexes");
    assert!(
        indexes.iter().any(|n| n == "sku_unique"),
        "the renamed collection keeps its indexes: {indexes:?}"
    );
    let names = db.client().list_database_names().await.expect("databases");
    assert!(
        !names.iter().any(|n| n == target.scratch_database()),
        "the scratch database is dropped: {names:?}"
    );
    let _ = db.drop().await;
}

// ---- Redis ----

#[tokio::test]
async fn redis_rebuild_swaps_the_key_prefix_in_one_script() {
    use tributary_sinks::redis::live::RedisLive;
    use tributary_sinks::redis::rebuild::RedisTarget;
    use tributary_sinks::redis::{RedisConfig, RedisProjection, RedisWriter};
    let prefix = unique_name("test-rebuild");
    let redis_config = RedisConfig {
        url: REDIS_URL.get(),
        prefix: prefix.clone(),
        ..RedisConfig::default()
    };
    let writer = RedisWriter::connect(redis_config.clone())
        .await
        .expect("redis reachable");
    let projection = RedisProjection {
        session_ttl: Duration::from_secs(30 * 60),
        rate_window: Duration::from_secs(600),
    };
    let sources = topics(
        "rebuild-redis",
        &[EventStream::Inventory, EventStream::Orders],
        2,
    )
    .await;
    let codec = codec();
    let (i, o) = (EventStream::Inventory, EventStream::Orders);
    let log = vec![
        encode(&codec, o, "o1", &order_placed("o1", "u1", 1, 2500)).await,
        encode(&codec, o, "o1", &order_confirmed("o1", "u1", 2, 2500)).await,
        encode(&codec, o, "o2", &order_placed("o2", "u2", 1, 900)).await,
        encode(&codec, o, "o3", &order_placed("o3", "u1", 1, 100)).await,
        tombstone(o, "o3"),
        encode(&codec, i, "p1", &product_added("p1", 1, 10)).await,
        encode(&codec, i, "p1", &product_restocked("p1", 2, 15)).await,
    ];
    produce(&sources, &log).await;
    let cfg = sink_config("redis-rebuild", &sources);
    let group = cfg.group_id.clone();
    let running = Running::start(cfg, Arc::new(projection.clone()), Arc::new(writer.clone()));
    wait_caught_up(&group, &sources, WAIT).await;

    let mut conn = lock_conn().await;
    let key = |view: &str, id: &str| format!("{prefix}:{view}:{id}");
    let _: () = conn.del(key("order", "o1")).await.expect("del o1");
    let _: () = conn
        .hset_multiple(
            key("order", "o9"),
            &[("status", "PLACED"), ("_version", "1")],
        )
        .await
        .expect("extra o9");

    let reader = {
        let (conn, p1, o2) = (conn.clone(), key("product", "p1"), key("order", "o2"));
        Reader::start(2, move || {
            let (mut conn, p1, o2) = (conn.clone(), p1.clone(), o2.clone());
            async move {
                conn.exists::<_, i64>(&[p1, o2])
                    .await
                    .map_err(|e| e.to_string())
            }
        })
    };
    let more = trickle(
        &sources,
        vec![
            encode(&codec, o, "o4", &order_placed("o4", "u4", 1, 300)).await,
            encode(&codec, i, "p1", &product_restocked("p1", 3, 20)).await,
        ],
    );
    let target = RedisTarget::new(redis_config.clone(), conn.clone());
    let report = run_rebuild(&sources, &projection, &target, &writer).await;
    more.await.expect("produced");
    wait_caught_up(&group, &sources, WAIT).await;
    reader.check().await;
    running.stop().await;
    assert!(report.records >= log.len() as u64, "{report}");

    let live = RedisLive::new(writer.connection(), prefix.clone());
    assert_no_drift(&sources, &projection, &live, &writer).await;
    let o1: std::collections::BTreeMap<String, String> =
        conn.hgetall(key("order", "o1")).await.expect("o1");
    assert_eq!(o1.get("status").map(String::as_str), Some("CONFIRMED"));
    let o9: bool = conn.exists(key("order", "o9")).await.expect("o9");
    assert!(!o9, "the extra key is gone");
    let o4: bool = conn.exists(key("order", "o4")).await.expect("o4");
    assert!(o4, "the order produced during the rebuild is there");
    let scratch: Vec<String> = conn
        .keys(format!("{}:*", target.scratch_prefix()))
        .await
        .expect("keys");
    assert!(scratch.is_empty(), "the copy's keys all moved: {scratch:?}");

    let keys: Vec<String> = conn.keys(format!("{prefix}:*")).await.expect("keys");
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.expect("cleanup");
    }
}
