//! `reconcile` against the real broker, registry and stores: a sink applies a fixed event log,
//! reconcile finds no drift; the store is then corrupted behind the sink's back, reconcile
//! reports exactly the corrupted entities, a repair removes the drift and a second reconcile
//! agrees. Each test uses its own topics, consumer group, lock key and store namespace.

mod runner_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::Method;
use mongodb::bson::{doc, Bson, Document};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use runner_common::*;
use serde_json::{json, Value};
use tributary_runtime::config::{ELASTICSEARCH_URL, KAFKA_BROKERS, MONGODB_URL, REDIS_URL};
use tributary_runtime::kafka::unique_name;
use tributary_schemas::types::*;
use tributary_sinks::change::ViewWriter;
use tributary_sinks::elasticsearch::live::EsLive;
use tributary_sinks::mongodb::live::MongoLive;
use tributary_sinks::postgres::live::PostgresLive;
use tributary_sinks::reconcile::{
    reconcile, LiveStore, NoProgress, Parts, ReconcileConfig, ReconcileError, ReconcileMetrics,
    Report,
};
use tributary_sinks::redis::live::RedisLive;
use tributary_sinks::runner::{EventStream, Projection, SourceTopic};

const WAIT: Duration = Duration::from_secs(90);

async fn lock_conn() -> ConnectionManager {
    let client = redis::Client::open(REDIS_URL.get()).expect("redis url");
    ConnectionManager::new(client)
        .await
        .expect("redis reachable")
}

fn config(sources: &[SourceTopic], repair: bool) -> ReconcileConfig {
    let mut c = ReconcileConfig::new("test");
    c.brokers = KAFKA_BROKERS.get();
    c.sources = sources.to_vec();
    c.samples = 100;
    c.repair = repair;
    c.lock.key = unique_name("test-reconcile-lock");
    c
}

async fn run(
    sources: &[SourceTopic],
    projection: &dyn Projection,
    live: &dyn LiveStore,
    writer: &dyn ViewWriter,
    repair: bool,
) -> Report {
    let codec = codec();
    reconcile(
        &config(sources, repair),
        Parts {
            codec: &codec,
            projection,
            store: live,
            writer,
            lock: lock_conn().await,
            progress: &NoProgress,
        },
    )
    .await
    .expect("reconcile runs")
}

/// `view → (kind → ids)` of every drifting entity of a report.
fn drift(report: &Report) -> BTreeMap<String, BTreeMap<&'static str, Vec<String>>> {
    let mut out = BTreeMap::new();
    for v in &report.views {
        for (kind, s) in [
            ("missing", &v.missing),
            ("extra", &v.extra),
            ("differing", &v.differing),
        ] {
            assert_eq!(s.count, s.samples.len(), "all ids sampled");
            if s.count > 0 {
                out.entry(v.view.to_string())
                    .or_insert_with(BTreeMap::new)
                    .insert(kind, s.samples.clone());
            }
        }
    }
    out
}

fn expect(
    entries: &[(&str, &'static str, &[&str])],
) -> BTreeMap<String, BTreeMap<&'static str, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<&'static str, Vec<String>>> = BTreeMap::new();
    for (view, kind, ids) in entries {
        out.entry(view.to_string())
            .or_default()
            .insert(kind, ids.iter().map(|s| s.to_string()).collect());
    }
    out
}

fn counts(report: &Report) -> BTreeMap<&'static str, (usize, usize)> {
    report
        .views
        .iter()
        .map(|v| (v.view, (v.expected, v.live)))
        .collect()
}

/// Corrupts, reconciles, repairs, and reconciles again.
async fn corrupt_and_repair(
    sources: &[SourceTopic],
    projection: &dyn Projection,
    live: &dyn LiveStore,
    writer: &dyn ViewWriter,
    corrupted: BTreeMap<String, BTreeMap<&'static str, Vec<String>>>,
) {
    let found = run(sources, projection, live, writer, false).await;
    assert_eq!(drift(&found), corrupted, "{found}");
    assert!(found.repair.is_none());

    let repaired = run(sources, projection, live, writer, true).await;
    assert_eq!(drift(&repaired), corrupted, "{repaired}");
    let r = repaired.repair.as_ref().expect("a repair ran");
    assert_eq!(repaired.remaining(), Some(0), "{repaired}");
    assert_eq!(r.written + r.deleted, repaired.drift());

    let again = run(sources, projection, live, writer, false).await;
    assert_eq!(again.drift(), 0, "{again}");
}

fn tombstone(stream: EventStream, key: &str) -> Rec {
    Rec {
        stream,
        key: key.into(),
        value: None,
    }
}

// ---- PostgreSQL ----

#[tokio::test]
async fn postgres_reconcile_finds_and_repairs_exactly_the_drift() {
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
    let sources = topics("reconcile-pg", &streams, 2).await;
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
        encode(&codec, u, "u1", &preferences_updated("u1", 3)).await,
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
        encode(&codec, p, "pay2", &payment_authorized("pay2", "o2", 1, 900)).await,
        encode(&codec, p, "pay1", &payment_captured("pay1", "o1", 2, 2500)).await,
        encode(&codec, p, "pay2", &payment_refunded("pay2", "o2", 2, 900)).await,
        encode(&codec, a, "revenue-EUR", &revenue_window(1, 2, 3400)).await,
    ];
    produce(&sources, &log).await;
    let cfg = sink_config("pg-reconcile", &sources);
    let group = cfg.group_id.clone();
    let projection = PostgresProjection;
    let running = Running::start(cfg, Arc::new(projection.clone()), Arc::new(writer.clone()));
    wait_caught_up(&group, &sources, WAIT).await;
    running.stop().await;

    let live = PostgresLive::new(pool.clone());
    let clean = run(&sources, &projection, &live, &writer, false).await;
    assert_eq!(clean.drift(), 0, "a clean store has no drift: {clean}");
    assert_eq!((clean.records, clean.skipped), (15, 0));
    let c = counts(&clean);
    assert_eq!(c["users"], (2, 2));
    assert_eq!(c["orders"], (2, 2), "o3 was deleted by its tombstone");
    assert_eq!(c["order_items"], (4, 4), "o3's items went with it");
    assert_eq!(c["order_events"], (5, 5));
    assert_eq!(c["payments"], (2, 2));
    assert_eq!(c["refunds"], (1, 1));
    assert_eq!(c["revenue_windows"], (1, 1));

    let registry = prometheus::Registry::new();
    let metrics = ReconcileMetrics::new(&registry).expect("metrics register");
    metrics.observe(&clean);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    assert!(text.contains(
        "tributary_reconcile_drift_entities{component_id=\"postgres\",component_kind=\"reconcile\",kind=\"missing\",view=\"users\"} 0"
    ));
    let json = serde_json::to_value(&clean).expect("report serializes");
    assert_eq!(json["store"], "postgres");
    assert_eq!(json["views"][0]["missing"]["count"], 0);

    for sql in [
        // A deleted row, an altered row and child row, a changed key, an extra row, and a lost
        // event store entry.
        "DELETE FROM users WHERE id = 'u2'",
        "UPDATE orders SET status = 'SHIPPED' WHERE id = 'o1'",
        "UPDATE order_items SET quantity = 7 WHERE id = 'o1/1'",
        "UPDATE refunds SET id = 'pay2/99' WHERE id = 'pay2/2'",
        "INSERT INTO payments (id, status, amount_cents, version, updated_at) \
         VALUES ('pay-x', 'AUTHORIZED', 5, 1, now())",
        "DELETE FROM order_events WHERE aggregate_id = 'o2' AND sequence = 2",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    corrupt_and_repair(
        &sources,
        &projection,
        &live,
        &writer,
        expect(&[
            ("users", "missing", &["u2"]),
            ("orders", "differing", &["o1"]),
            ("order_items", "differing", &["o1/1"]),
            ("refunds", "missing", &["pay2/2"]),
            ("refunds", "extra", &["pay2/99"]),
            ("payments", "extra", &["pay-x"]),
            ("order_events", "missing", &["o2#2"]),
        ]),
    )
    .await;
    // The repaired rows carry their expected versions, and o1 kept its items.
    let (status, version): (String, i64) =
        sqlx::query_as("SELECT status, version FROM orders WHERE id = 'o1'")
            .fetch_one(&pool)
            .await
            .expect("o1");
    assert_eq!((status.as_str(), version), ("CONFIRMED", 2));
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM order_items WHERE order_id = 'o1'")
        .fetch_one(&pool)
        .await
        .expect("items");
    assert_eq!(items, 2);

    if let Some(s) = &pg_config.schema {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
            .execute(&pool)
            .await;
    }
}

#[tokio::test]
async fn a_second_reconcile_of_a_store_is_refused_while_the_first_holds_the_lock() {
    use tributary_sinks::postgres::{PostgresConfig, PostgresProjection, PostgresWriter};
    let pg_config = PostgresConfig {
        schema: Some(unique_name("t").replace('-', "_")),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    let writer = PostgresWriter::connect(&pg_config)
        .await
        .expect("postgres reachable and migrated");
    let sources = topics("reconcile-lock", &[EventStream::Users], 1).await;
    let config = config(&sources, false);
    let mut conn = lock_conn().await;
    let held = tributary_sinks::redis::RedisLock::try_acquire(
        &mut conn,
        &config.lock.key,
        Duration::from_secs(30),
    )
    .await
    .expect("redis")
    .expect("lock free");
    let codec = codec();
    let live = PostgresLive::new(writer.pool().clone());
    let lock = conn.clone();
    let parts = || Parts {
        codec: &codec,
        projection: &PostgresProjection,
        store: &live,
        writer: &writer,
        lock: lock.clone(),
        progress: &NoProgress,
    };
    let refused = reconcile(&config, parts()).await;
    assert!(
        matches!(refused, Err(ReconcileError::Locked { .. })),
        "{refused:?}"
    );
    held.release(&mut conn).await.expect("released");
    let report = reconcile(&config, parts()).await.expect("runs once free");
    assert_eq!(report.drift(), 0);
    if let Some(s) = &pg_config.schema {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
            .execute(writer.pool())
            .await;
    }
}

// ---- MongoDB ----

#[tokio::test]
async fn mongodb_reconcile_finds_and_repairs_exactly_the_drift() {
    use tributary_sinks::mongodb::projection::{
        MongoProjection, NOTIFICATIONS, PRODUCTS, STOCK_RESERVATIONS,
    };
    use tributary_sinks::mongodb::{migrate, MongoWriter};
    let writer = MongoWriter::connect(&MONGODB_URL.get(), &unique_name("tributary-test"))
        .await
        .expect("client");
    migrate(writer.database()).await.expect("migrate");
    let db = writer.database().clone();
    let sources = topics(
        "reconcile-mongo",
        &[EventStream::Inventory, EventStream::Notifications],
        2,
    )
    .await;
    let codec = codec();
    let inv = EventStream::Inventory;
    let reserved = env::<InventoryEvent>(
        "o1",
        1,
        StockReserved {
            order_id: "o1".into(),
            reserved_items: vec![
                StockItem {
                    product_id: "p1".into(),
                    quantity: 2,
                },
                StockItem {
                    product_id: "p2".into(),
                    quantity: 1,
                },
            ],
        },
    );
    let notification = |id: &str, seq| {
        env::<NotificationEvent>(
            "u1",
            seq,
            NotificationSent {
                notification_id: id.into(),
                user_id: "u1".into(),
                template_id: "welcome".into(),
                channel: NotificationChannel::Email,
                rendered_text: "Welcome!".into(),
            },
        )
    };
    let log = vec![
        encode(&codec, inv, "p1", &product_added("p1", 1, 10)).await,
        encode(&codec, inv, "p2", &product_added("p2", 1, 4)).await,
        encode(&codec, inv, "p3", &product_added("p3", 1, 3)).await,
        encode(&codec, inv, "o1", &reserved).await,
        encode(&codec, inv, "p1", &product_restocked("p1", 2, 15)).await,
        tombstone(inv, "p3"),
        encode(
            &codec,
            EventStream::Notifications,
            "u1",
            &notification("n1", 1),
        )
        .await,
        encode(
            &codec,
            EventStream::Notifications,
            "u1",
            &notification("n2", 2),
        )
        .await,
    ];
    produce(&sources, &log).await;
    let cfg = sink_config("mongo-reconcile", &sources);
    let group = cfg.group_id.clone();
    let running = Running::start(cfg, Arc::new(MongoProjection), Arc::new(writer.clone()));
    wait_caught_up(&group, &sources, WAIT).await;
    running.stop().await;

    let live = MongoLive::new(db.clone());
    let clean = run(&sources, &MongoProjection, &live, &writer, false).await;
    assert_eq!(clean.drift(), 0, "a clean store has no drift: {clean}");
    let c = counts(&clean);
    assert_eq!(c[PRODUCTS], (2, 2));
    assert_eq!(c[STOCK_RESERVATIONS], (2, 2));
    assert_eq!(c[NOTIFICATIONS], (2, 2));

    let products = db.collection::<Document>(PRODUCTS);
    let holds = db.collection::<Document>(STOCK_RESERVATIONS);
    let notes = db.collection::<Document>(NOTIFICATIONS);
    products
        .delete_one(doc! { "_id": "p2" })
        .await
        .expect("delete p2");
    holds
        .update_one(
            doc! { "_id": "o1:p1" },
            doc! { "$set": { "quantity": Bson::Int64(9) } },
        )
        .await
        .expect("alter o1:p1");
    products
        .insert_one(doc! {
            "_id": "p9", "version": Bson::Int64(1), "event_time_ms": Bson::Int64(0),
            "sku": "SKU-p9", "name": "ghost", "unit_price_cents": Bson::Int64(1),
            "currency": "EUR", "available": Bson::Int64(1), "reserved": Bson::Int64(0),
        })
        .await
        .expect("extra p9");
    // A changed key: n2's document moves to another id.
    let mut n2 = notes
        .find_one(doc! { "_id": "n2" })
        .await
        .expect("read n2")
        .expect("n2 exists");
    notes
        .delete_one(doc! { "_id": "n2" })
        .await
        .expect("delete n2");
    n2.insert("_id", "n2-moved");
    notes.insert_one(n2).await.expect("insert moved n2");

    corrupt_and_repair(
        &sources,
        &MongoProjection,
        &live,
        &writer,
        expect(&[
            (PRODUCTS, "missing", &["p2"]),
            (PRODUCTS, "extra", &["p9"]),
            (STOCK_RESERVATIONS, "differing", &["o1:p1"]),
            (NOTIFICATIONS, "missing", &["n2"]),
            (NOTIFICATIONS, "extra", &["n2-moved"]),
        ]),
    )
    .await;
    let hold = holds
        .find_one(doc! { "_id": "o1:p1" })
        .await
        .expect("read")
        .expect("o1:p1");
    assert_eq!(hold.get_i64("quantity").ok(), Some(2));
    assert_eq!(hold.get_i64("version").ok(), Some(1));
    let _ = db.drop().await;
}

// ---- Redis ----

#[tokio::test]
async fn redis_reconcile_finds_and_repairs_exactly_the_drift() {
    use tributary_sinks::redis::{RedisConfig, RedisProjection, RedisWriter};
    let prefix = unique_name("test-reconcile");
    let writer = RedisWriter::connect(RedisConfig {
        url: REDIS_URL.get(),
        prefix: prefix.clone(),
        ..RedisConfig::default()
    })
    .await
    .expect("redis reachable");
    let projection = RedisProjection {
        session_ttl: Duration::from_secs(30 * 60),
        rate_window: Duration::from_secs(600),
    };
    let streams = [
        EventStream::Users,
        EventStream::Inventory,
        EventStream::Orders,
    ];
    let sources = topics("reconcile-redis", &streams, 2).await;
    let codec = codec();
    let now = tributary_runtime::clock::now_ms();
    // Sessions and the rate window of o2 are recent, so they live; o1's window is long gone.
    let recent = |mut e: UserEventEnvelope| {
        e.timestamp = now;
        e
    };
    let mut o2 = order_placed("o2", "u2", 1, 900);
    o2.timestamp = now;
    let window = 600_000;
    let o2_window = now.div_euclid(window) * window;
    let (u, i, o) = (
        EventStream::Users,
        EventStream::Inventory,
        EventStream::Orders,
    );
    let log = vec![
        encode(&codec, o, "o1", &order_placed("o1", "u1", 1, 2500)).await,
        encode(&codec, o, "o1", &order_confirmed("o1", "u1", 2, 2500)).await,
        encode(&codec, o, "o2", &o2).await,
        encode(&codec, o, "o3", &order_placed("o3", "u1", 1, 100)).await,
        tombstone(o, "o3"),
        encode(&codec, i, "p1", &product_added("p1", 1, 10)).await,
        encode(&codec, i, "p1", &product_restocked("p1", 2, 15)).await,
        encode(&codec, u, "u1", &recent(session_started("u1", "s1", 1))).await,
        encode(&codec, u, "u1", &recent(session_started("u1", "s2", 2))).await,
        encode(&codec, u, "u1", &recent(session_ended("u1", "s2", 3))).await,
        encode(&codec, u, "u3", &session_started("u3", "s-old", 1)).await,
    ];
    produce(&sources, &log).await;
    let cfg = sink_config("redis-reconcile", &sources);
    let group = cfg.group_id.clone();
    let running = Running::start(cfg, Arc::new(projection.clone()), Arc::new(writer.clone()));
    wait_caught_up(&group, &sources, WAIT).await;
    running.stop().await;

    let live = RedisLive::new(writer.connection(), prefix.clone());
    let clean = run(&sources, &projection, &live, &writer, false).await;
    assert_eq!(clean.drift(), 0, "a clean store has no drift: {clean}");
    let c = counts(&clean);
    assert_eq!(c["order"], (2, 2), "o3 deleted by its tombstone");
    assert_eq!(c["product"], (1, 1));
    assert_eq!(c["session"], (1, 1), "s2 ended, s-old expired");
    assert_eq!(c["ratelimit:orders"], (1, 1), "only o2's window lives");

    let mut conn = lock_conn().await;
    let key = |view: &str, id: &str| format!("{prefix}:{view}:{id}");
    let _: () = conn.del(key("order", "o1")).await.expect("del o1");
    let _: () = conn
        .hset(key("product", "p1"), "available", "999")
        .await
        .expect("alter p1");
    let _: () = conn
        .rename(key("session", "s1"), key("session", "s1-moved"))
        .await
        .expect("rename s1");
    let _: () = conn
        .hset_multiple(
            key("order", "o9"),
            &[("status", "PLACED"), ("_version", "1")],
        )
        .await
        .expect("extra o9");
    let rate = key("ratelimit:orders", &format!("u2:{o2_window}"));
    let _: () = conn
        .hset(&rate, "o-ghost", "1")
        .await
        .expect("extra member");

    corrupt_and_repair(
        &sources,
        &projection,
        &live,
        &writer,
        expect(&[
            ("order", "missing", &["o1"]),
            ("order", "extra", &["o9"]),
            ("product", "differing", &["p1"]),
            ("session", "missing", &["s1"]),
            ("session", "extra", &["s1-moved"]),
            (
                "ratelimit:orders",
                "extra",
                &[format!("u2:{o2_window}#o-ghost").as_str()],
            ),
        ]),
    )
    .await;
    let o1: BTreeMap<String, String> = conn.hgetall(key("order", "o1")).await.expect("o1");
    assert_eq!(o1.get("status").map(String::as_str), Some("CONFIRMED"));
    assert_eq!(o1.get("_version").map(String::as_str), Some("2"));
    let ttl: i64 = conn.pttl(key("session", "s1")).await.expect("ttl");
    assert!(ttl > 0, "the repaired session expires again: {ttl}");

    let keys: Vec<String> = conn.keys(format!("{prefix}:*")).await.expect("keys");
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.expect("cleanup");
    }
}

// ---- Elasticsearch ----

async fn es(
    client: &elasticsearch::Elasticsearch,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Value {
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
        .expect("elasticsearch reachable");
    assert!(
        response.status_code().is_success(),
        "{path}: {}",
        response.status_code()
    );
    response.json::<Value>().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn elasticsearch_reconcile_finds_and_repairs_exactly_the_drift() {
    use tributary_sinks::elasticsearch::indices::drop_all;
    use tributary_sinks::elasticsearch::projection::{EsProjection, ANALYTICS, ORDERS, PRODUCTS};
    use tributary_sinks::elasticsearch::{migrate, EsWriter};
    let prefix = format!("{}-", unique_name("tributary-test"));
    let writer = EsWriter::connect(&ELASTICSEARCH_URL.get(), prefix.clone()).expect("client");
    migrate(writer.client(), &prefix).await.expect("migrate");
    let streams = [
        EventStream::Inventory,
        EventStream::Orders,
        EventStream::Analytics,
    ];
    let sources = topics("reconcile-es", &streams, 2).await;
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
    let cfg = sink_config("es-reconcile", &sources);
    let group = cfg.group_id.clone();
    let running = Running::start(cfg, Arc::new(EsProjection), Arc::new(writer.clone()));
    wait_caught_up(&group, &sources, WAIT).await;
    running.stop().await;

    let live = EsLive::new(writer.client().clone(), prefix.clone());
    let clean = run(&sources, &EsProjection, &live, &writer, false).await;
    assert_eq!(clean.drift(), 0, "a clean store has no drift: {clean}");
    let c = counts(&clean);
    assert_eq!(c[PRODUCTS], (2, 2));
    assert_eq!(c[ORDERS], (2, 2), "o3 deleted by its tombstone");
    assert_eq!(c[ANALYTICS], (1, 1));

    let client = writer.client();
    let doc_path = |view: &str, id: &str| format!("/{prefix}{view}/_doc/{id}?refresh=true");
    // A removed document, an altered one, an extra one, and a changed key.
    es(client, Method::Delete, &doc_path(ORDERS, "o2"), None).await;
    let mut p1 = es(
        client,
        Method::Get,
        &format!("/{prefix}{PRODUCTS}/_doc/p1"),
        None,
    )
    .await["_source"]
        .clone();
    p1["stock"] = json!(0);
    es(client, Method::Put, &doc_path(PRODUCTS, "p1"), Some(p1)).await;
    es(
        client,
        Method::Put,
        &doc_path(PRODUCTS, "p9"),
        Some(json!({ "sku": "SKU-p9", "name": "ghost", "price_cents": 1, "currency": "EUR", "stock": 1 })),
    )
    .await;
    let revenue_id = format!("revenue:EUR:{T0}");
    let revenue = es(
        client,
        Method::Get,
        &format!("/{prefix}{ANALYTICS}/_doc/{revenue_id}"),
        None,
    )
    .await["_source"]
        .clone();
    es(
        client,
        Method::Delete,
        &doc_path(ANALYTICS, &revenue_id),
        None,
    )
    .await;
    es(
        client,
        Method::Put,
        &doc_path(ANALYTICS, "revenue:moved"),
        Some(revenue),
    )
    .await;

    corrupt_and_repair(
        &sources,
        &EsProjection,
        &live,
        &writer,
        expect(&[
            (PRODUCTS, "differing", &["p1"]),
            (PRODUCTS, "extra", &["p9"]),
            (ORDERS, "missing", &["o2"]),
            (ANALYTICS, "missing", &[revenue_id.as_str()]),
            (ANALYTICS, "extra", &["revenue:moved"]),
        ]),
    )
    .await;
    let p1 = es(
        client,
        Method::Get,
        &format!("/{prefix}{PRODUCTS}/_doc/p1"),
        None,
    )
    .await;
    assert_eq!(p1["_source"]["stock"], json!(15));
    assert_eq!(p1["_version"], json!(2));
    let _ = drop_all(client, &prefix).await;
}
