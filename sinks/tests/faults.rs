//! Store faults that are not "down" (issue 13), against the real broker, registry and stores:
//! a full Redis, a rotated Redis password, an Elasticsearch index with writes blocked, a
//! PostgreSQL role without INSERT, and a store away for three `max.poll.interval.ms`. During
//! each, nothing is dead-lettered and no offset advances; once the fault is lifted the records
//! are written. Then a record with an 8 KB id: every sink dead-letters it and applies the next.
//!
//! MongoDB wrong credentials: the shared SecantusDB runs without `--auth`, so the test starts a
//! SecantusDB of its own with `--auth` (SCRAM-SHA-256; users created before the restart).

mod runner_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::Method;
use mongodb::bson::{doc, Document};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use runner_common::*;
use serde_json::{json, Value};
use tributary_runtime::config::{ELASTICSEARCH_URL, MONGODB_URL, REDIS_URL};
use tributary_runtime::dlq::{dlq_topic, CONSUMER_GROUP, ERROR_CLASS, ERROR_MESSAGE};
use tributary_runtime::kafka::unique_name;
use tributary_sinks::change::ViewWriter;
use tributary_sinks::elasticsearch::indices::{drop_all, INDICES};
use tributary_sinks::elasticsearch::projection::{EsProjection, ORDERS, PRODUCTS};
use tributary_sinks::elasticsearch::EsWriter;
use tributary_sinks::mongodb::projection::MongoProjection;
use tributary_sinks::mongodb::MongoWriter;
use tributary_sinks::postgres::{PostgresConfig, PostgresProjection, PostgresWriter};
use tributary_sinks::redis::{RedisConfig, RedisProjection, RedisWriter};
use tributary_sinks::runner::{EventStream, Projection, SinkConfig, SourceTopic};

const WAIT: Duration = Duration::from_secs(60);

async fn redis_writer(url: String, prefix: &str) -> RedisWriter {
    RedisWriter::connect(RedisConfig {
        url,
        prefix: prefix.to_string(),
        response_timeout: Duration::from_secs(1),
        connection_timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    })
    .await
    .expect("redis reachable")
}

async fn redis_conn(url: String) -> ConnectionManager {
    ConnectionManager::new(redis::Client::open(url).expect("redis url"))
        .await
        .expect("redis reachable")
}

async fn products(codec: &tributary_schemas::Codec, from: i32, to: i32) -> Vec<Rec> {
    let mut out = Vec::new();
    for i in from..=to {
        let p = format!("p{i}");
        out.push(encode(codec, EventStream::Inventory, &p, &product_added(&p, 1, i)).await);
    }
    out
}

fn start(
    config: SinkConfig,
    projection: Arc<dyn Projection>,
    writer: Arc<dyn ViewWriter>,
) -> (Running, String) {
    let group = config.group_id.clone();
    (Running::start(config, projection, writer), group)
}

/// While the fault lasts: the sink retries, reports the store unavailable, dead-letters nothing
/// and commits nothing past `committed_before`; the DLQ topics stay empty.
async fn assert_held_during_fault(
    sink: &Running,
    group: &str,
    sources: &[SourceTopic],
    committed_before: i64,
) {
    eventually("the sink to retry the held batch", WAIT, || async {
        (sink.metrics.retries() >= 3 && sink.metrics.is_store_unavailable()).then_some(())
    })
    .await;
    // A few more retries, so an offset stored by mistake would have been committed.
    let retries = sink.metrics.retries();
    eventually("more retries", WAIT, || async {
        (sink.metrics.retries() >= retries + 2).then_some(())
    })
    .await;
    assert_eq!(
        sink.metrics.dlq(),
        0,
        "nothing dead-lettered during the fault"
    );
    assert_eq!(
        committed_total(group, sources),
        committed_before,
        "no offset advanced during the fault"
    );
    for s in sources {
        let letters = read_all(
            &dlq_topic(&s.topic),
            Duration::from_secs(2),
            Duration::from_secs(10),
        );
        assert!(letters.is_empty(), "{} has dead letters", s.topic);
    }
}

#[tokio::test]
async fn redis_out_of_memory_is_waited_for_not_dead_lettered() {
    let server = OwnRedis::start(&[]).await;
    let url = format!("redis://127.0.0.1:{}", server.port);
    let codec = codec();
    let writer = redis_writer(url.clone(), "t:v1").await;
    let sources = topics("fault-redis-oom", &[EventStream::Inventory], 1).await;
    let (sink, group) = start(
        sink_config("fault-redis-oom", &sources),
        Arc::new(RedisProjection::default()),
        Arc::new(writer),
    );
    produce(&sources, &products(&codec, 0, 0).await).await;
    wait_caught_up(&group, &sources, WAIT).await;

    let mut admin = redis_conn(url.clone()).await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "noeviction"][..])
        .query_async(&mut admin)
        .await
        .expect("policy");
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "1"][..])
        .query_async(&mut admin)
        .await
        .expect("maxmemory");
    produce(&sources, &products(&codec, 1, 10).await).await;
    assert_held_during_fault(&sink, &group, &sources, 1).await;

    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"][..])
        .query_async(&mut admin)
        .await
        .expect("maxmemory lifted");
    wait_caught_up(&group, &sources, WAIT).await;
    for i in 0..=10 {
        let name: Option<String> = admin
            .hget(format!("t:v1:product:p{i}"), "name")
            .await
            .expect("hget");
        assert_eq!(name, Some(format!("Product p{i}")), "p{i} written");
    }
    assert_eq!(sink.metrics.dlq(), 0);
    assert!(!sink.metrics.is_store_unavailable());
    sink.stop().await;
}

#[tokio::test]
async fn redis_wrong_password_is_waited_for_not_dead_lettered() {
    let server = OwnRedis::start(&["--requirepass", "right"]).await;
    let url = format!("redis://:right@127.0.0.1:{}", server.port);
    let codec = codec();
    let writer = redis_writer(url.clone(), "t:v1").await;
    let sources = topics("fault-redis-auth", &[EventStream::Inventory], 1).await;
    let (sink, group) = start(
        sink_config("fault-redis-auth", &sources),
        Arc::new(RedisProjection::default()),
        Arc::new(writer),
    );
    produce(&sources, &products(&codec, 0, 0).await).await;
    wait_caught_up(&group, &sources, WAIT).await;

    // The password is rotated and every other connection cut: the sink's password is wrong.
    let mut admin = redis_conn(url.clone()).await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "rotated"][..])
        .query_async(&mut admin)
        .await
        .expect("rotate");
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query_async(&mut admin)
        .await
        .expect("kill clients");
    produce(&sources, &products(&codec, 1, 10).await).await;
    assert_held_during_fault(&sink, &group, &sources, 1).await;

    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "right"][..])
        .query_async(&mut admin)
        .await
        .expect("restore");
    wait_caught_up(&group, &sources, WAIT).await;
    for i in 0..=10 {
        let exists: bool = admin
            .exists(format!("t:v1:product:p{i}"))
            .await
            .expect("exists");
        assert!(exists, "p{i} written");
    }
    assert_eq!(sink.metrics.dlq(), 0);
    sink.stop().await;
}

async fn es(writer: &EsWriter, method: Method, path: &str, body: Option<Value>) -> Value {
    let response = writer
        .client()
        .send(
            method,
            path,
            HeaderMap::new(),
            Option::<&()>::None,
            body.map(|b| b.to_string()),
            None,
        )
        .await
        .expect("request");
    response.json::<Value>().await.unwrap_or(Value::Null)
}

async fn es_ids(writer: &EsWriter, view: &str) -> Vec<String> {
    let alias = writer.alias(view);
    es(writer, Method::Post, &format!("/{alias}/_refresh"), None).await;
    let reply = es(
        writer,
        Method::Post,
        &format!("/{alias}/_search"),
        Some(json!({ "size": 1000, "query": { "match_all": {} } })),
    )
    .await;
    let mut ids: Vec<String> = reply["hits"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["_id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn elasticsearch_write_block_is_waited_for_not_dead_lettered() {
    let prefix = format!("{}-", unique_name("tributary-test"));
    let writer = EsWriter::connect(&ELASTICSEARCH_URL.get(), prefix.clone()).expect("client");
    tributary_sinks::elasticsearch::migrate(writer.client(), &prefix)
        .await
        .expect("migrate");
    let index = INDICES
        .iter()
        .find(|s| s.view == PRODUCTS)
        .expect("products index")
        .index(&prefix);
    let codec = codec();
    let sources = topics("fault-es-block", &[EventStream::Inventory], 1).await;
    let (sink, group) = start(
        sink_config("fault-es-block", &sources),
        Arc::new(EsProjection),
        Arc::new(writer.clone()),
    );
    let result = tokio::spawn({
        let writer = writer.clone();
        async move {
            produce(&sources, &products(&codec, 0, 0).await).await;
            wait_caught_up(&group, &sources, WAIT).await;
            let set = |blocked: bool| {
                let (writer, index) = (writer.clone(), index.clone());
                async move {
                    let reply = es(
                        &writer,
                        Method::Put,
                        &format!("/{index}/_settings"),
                        Some(json!({ "index.blocks.write": blocked })),
                    )
                    .await;
                    assert_eq!(reply["acknowledged"], true, "{reply}");
                }
            };
            set(true).await;
            produce(&sources, &products(&codec, 1, 10).await).await;
            assert_held_during_fault(&sink, &group, &sources, 1).await;
            set(false).await;
            wait_caught_up(&group, &sources, WAIT).await;
            let want: Vec<String> = {
                let mut w: Vec<String> = (0..=10).map(|i| format!("p{i}")).collect();
                w.sort();
                w
            };
            assert_eq!(es_ids(&writer, PRODUCTS).await, want);
            assert_eq!(sink.metrics.dlq(), 0);
            sink.stop().await;
        }
    })
    .await;
    let _ = drop_all(writer.client(), &prefix).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test]
async fn postgres_role_without_insert_is_waited_for_not_dead_lettered() {
    let codec = codec();
    let admin_config = PostgresConfig {
        schema: Some(unique_name("t").replace('-', "_")),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    let schema = admin_config.schema.clone().expect("schema");
    // Migrated by the (superuser) test role; the sink's own role may only read.
    let admin = PostgresWriter::connect(&admin_config)
        .await
        .expect("postgres reachable and migrated");
    let role = unique_name("sink_role").replace('-', "_");
    for sql in [
        format!("CREATE ROLE \"{role}\" LOGIN"),
        format!("GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\""),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\""),
    ] {
        sqlx::query(&sql)
            .execute(admin.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let url = with_user(&admin_config.url, &role);
    let sink_config_pg = PostgresConfig {
        url,
        schema: Some(schema.clone()),
        ..PostgresConfig::default()
    };
    let writer = PostgresWriter::new(sink_config_pg.pool().expect("pool"));
    let sources = topics("fault-pg-grant", &[EventStream::Orders], 1).await;
    let (sink, group) = start(
        sink_config("fault-pg-grant", &sources),
        Arc::new(PostgresProjection),
        Arc::new(writer.clone()),
    );
    let mut log = Vec::new();
    for i in 0..5 {
        let o = format!("o{i}");
        log.push(
            encode(
                &codec,
                EventStream::Orders,
                &o,
                &order_placed(&o, "u1", 1, 100),
            )
            .await,
        );
    }
    produce(&sources, &log).await;
    assert_held_during_fault(&sink, &group, &sources, 0).await;

    sqlx::query(&format!(
        "GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\""
    ))
    .execute(admin.pool())
    .await
    .expect("grant");
    wait_caught_up(&group, &sources, WAIT).await;
    let ids: Vec<String> =
        sqlx::query_scalar(&format!("SELECT id FROM \"{schema}\".orders ORDER BY id"))
            .fetch_all(admin.pool())
            .await
            .expect("orders");
    assert_eq!(ids, vec!["o0", "o1", "o2", "o3", "o4"]);
    assert_eq!(sink.metrics.dlq(), 0);
    sink.stop().await;
    writer.pool().close().await;
    for sql in [
        format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        format!("DROP OWNED BY \"{role}\""),
        format!("DROP ROLE IF EXISTS \"{role}\""),
    ] {
        let _ = sqlx::query(&sql).execute(admin.pool()).await;
    }
    admin.pool().close().await;
}

/// `url` (`postgres://[user[:password]@]host...`) with `user` and no password.
fn with_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("database url has a scheme");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

#[tokio::test]
async fn a_store_away_for_three_poll_intervals_keeps_the_member_in_its_group() {
    const POLL_INTERVAL: Duration = Duration::from_secs(6);
    let codec = codec();
    let prefix = unique_name("test-fault-long") + ":v1";
    let target = REDIS_URL
        .get()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(&target).await;
    let writer = redis_writer(format!("redis://{}", proxy.addr), &prefix).await;
    let sources = topics("fault-long", &[EventStream::Inventory], 2).await;
    let mut config = sink_config("fault-long", &sources);
    // As low as the broker allows: session timeout at its usual minimum, poll interval equal.
    config.consumer_settings = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "1000".into()),
        (
            "max.poll.interval.ms".into(),
            POLL_INTERVAL.as_millis().to_string(),
        ),
    ];
    let (sink, group) = start(
        config,
        Arc::new(RedisProjection::default()),
        Arc::new(writer),
    );
    produce(&sources, &products(&codec, 0, 3).await).await;
    wait_caught_up(&group, &sources, WAIT).await;
    let (state, members) = group_members(&group);
    assert_eq!(state, "Stable");
    assert_eq!(members.len(), 1, "{members:?}");
    let rebalances = sink.metrics.rebalances();
    let committed_before = committed_total(&group, &sources);

    proxy.down();
    let down_at = Instant::now();
    produce(&sources, &products(&codec, 4, 30).await).await;
    eventually("the outage to be noticed", WAIT, || async {
        sink.metrics.is_store_unavailable().then_some(())
    })
    .await;
    while down_at.elapsed() < 3 * POLL_INTERVAL + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            sink.metrics.rebalances(),
            rebalances,
            "no rebalance during the outage"
        );
    }
    let (state, during) = group_members(&group);
    assert_eq!(state, "Stable");
    assert_eq!(during, members, "the same member, never left the group");
    assert_eq!(committed_total(&group, &sources), committed_before);
    assert_eq!(sink.metrics.dlq(), 0);

    proxy.up();
    wait_caught_up(&group, &sources, WAIT).await;
    assert_eq!(sink.metrics.rebalances(), rebalances);
    assert_eq!(group_members(&group).1, members);
    assert!(!sink.metrics.is_store_unavailable());
    let mut c = redis_conn(REDIS_URL.get()).await;
    for i in 0..=30 {
        let exists: bool = c
            .exists(format!("{prefix}:product:p{i}"))
            .await
            .expect("exists");
        assert!(exists, "p{i} written after the outage");
    }
    let keys: Vec<String> = c.keys(format!("{prefix}:*")).await.expect("keys");
    if !keys.is_empty() {
        let _: () = c.del(keys).await.expect("del");
    }
    sink.stop().await;
}

/// A record with an 8 KB id, written straight to the topics (the command parser refuses it,
/// see producers/src/command.rs): each sink dead-letters it and applies the record behind it
/// within seconds.
#[tokio::test]
async fn an_8kb_id_is_dead_lettered_by_every_sink_and_the_next_record_applied() {
    let codec = codec();
    let sources = topics(
        "fault-huge-id",
        &[EventStream::Orders, EventStream::Inventory],
        1,
    )
    .await;
    let order = huge_id("o-");
    let product = huge_id("p-");
    // A normal order id with an 8 KB user id: PostgreSQL's btree on orders.user_id refuses it
    // (SQLSTATE 54000), found record by record.
    let long_user = huge_id("u-");
    let log = vec![
        encode(
            &codec,
            EventStream::Orders,
            &order,
            &order_placed(&order, "u1", 1, 100),
        )
        .await,
        encode(
            &codec,
            EventStream::Inventory,
            &product,
            &product_added(&product, 1, 5),
        )
        .await,
        encode(
            &codec,
            EventStream::Orders,
            "o-long-user",
            &order_placed("o-long-user", &long_user, 1, 100),
        )
        .await,
        encode(
            &codec,
            EventStream::Orders,
            "o-next",
            &order_placed("o-next", "u1", 1, 100),
        )
        .await,
        encode(
            &codec,
            EventStream::Inventory,
            "p-next",
            &product_added("p-next", 1, 5),
        )
        .await,
    ];

    // The four stores.
    let pg_config = PostgresConfig {
        schema: Some(unique_name("t").replace('-', "_")),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    let pg = PostgresWriter::connect(&pg_config).await.expect("postgres");
    let mongo = MongoWriter::connect(&MONGODB_URL.get(), &unique_name("tributary-test"))
        .await
        .expect("mongodb");
    tributary_sinks::mongodb::migrate(mongo.database())
        .await
        .expect("mongodb migrations");
    let redis_prefix = unique_name("test-huge") + ":v1";
    let redis = redis_writer(REDIS_URL.get(), &redis_prefix).await;
    let es_prefix = format!("{}-", unique_name("tributary-test"));
    let es_writer = EsWriter::connect(&ELASTICSEARCH_URL.get(), es_prefix.clone()).expect("es");
    tributary_sinks::elasticsearch::migrate(es_writer.client(), &es_prefix)
        .await
        .expect("es migrate");

    produce(&sources, &log).await;
    let produced = Instant::now();
    let sinks = [
        start(
            sink_config("huge-pg", &sources),
            Arc::new(PostgresProjection),
            Arc::new(pg.clone()),
        ),
        start(
            sink_config("huge-mongo", &sources),
            Arc::new(MongoProjection),
            Arc::new(mongo.clone()),
        ),
        start(
            sink_config("huge-redis", &sources),
            Arc::new(RedisProjection::default()),
            Arc::new(redis.clone()),
        ),
        start(
            sink_config("huge-es", &sources),
            Arc::new(EsProjection),
            Arc::new(es_writer.clone()),
        ),
    ];
    let result = tokio::spawn({
        let (pg, mongo, es_writer, sources) = (
            pg.clone(),
            mongo.clone(),
            es_writer.clone(),
            sources.clone(),
        );
        let redis_prefix = redis_prefix.clone();
        let groups: Vec<String> = sinks.iter().map(|(_, g)| g.clone()).collect();
        async move {
            for g in &groups {
                wait_caught_up(g, &sources, Duration::from_secs(30)).await;
            }
            assert!(
                produced.elapsed() < Duration::from_secs(30),
                "no wedge: every sink past the huge id within seconds"
            );
            // The records behind it are applied.
            let next: Option<String> =
                sqlx::query_scalar("SELECT id FROM orders WHERE id = 'o-next'")
                    .fetch_optional(pg.pool())
                    .await
                    .expect("pg");
            assert_eq!(next.as_deref(), Some("o-next"));
            let pg_orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(pg.pool())
                .await
                .expect("pg count");
            assert_eq!(pg_orders, 1, "only o-next in PostgreSQL");
            let p = mongo
                .database()
                .collection::<Document>("products")
                .find_one(doc! { "_id": "p-next" })
                .await
                .expect("mongo");
            assert!(p.is_some(), "p-next in MongoDB");
            let products = mongo
                .database()
                .collection::<Document>("products")
                .count_documents(doc! {})
                .await
                .expect("mongo count");
            assert_eq!(products, 1, "only p-next in MongoDB");
            let mut c = redis_conn(REDIS_URL.get()).await;
            for key in ["order:o-next", "product:p-next"] {
                let exists: bool = c
                    .exists(format!("{redis_prefix}:{key}"))
                    .await
                    .expect("redis");
                assert!(exists, "{key} in Redis");
            }
            assert!(es_ids(&es_writer, ORDERS)
                .await
                .contains(&"o-next".to_string()));
            assert_eq!(es_ids(&es_writer, PRODUCTS).await, vec!["p-next"]);

            // The dead letters: the huge id by every sink that keeps it, named by group.
            let letters = |stream| {
                read_all(
                    &dlq_topic(&topic_of(&sources, stream)),
                    Duration::from_secs(3),
                    Duration::from_secs(30),
                )
            };
            let orders = letters(EventStream::Orders);
            let inventory = letters(EventStream::Inventory);
            let has = |letters: &[Letter], group: &str, key: &str| {
                letters.iter().any(|l| {
                    l.key.as_deref() == Some(key.as_bytes())
                        && l.headers.get(CONSUMER_GROUP).map(String::as_str) == Some(group)
                        && l.headers.get(ERROR_CLASS).map(String::as_str) == Some("rejected")
                })
            };
            let [pg_group, mongo_group, redis_group, es_group] = [0, 1, 2, 3].map(|i| &groups[i]);
            for g in [pg_group, redis_group, es_group] {
                assert!(has(&orders, g, &order), "{g} dead-lettered the huge order");
            }
            for g in [mongo_group, redis_group, es_group] {
                assert!(
                    has(&inventory, g, &product),
                    "{g} dead-lettered the huge product"
                );
            }
            let pg_long_user = orders
                .iter()
                .find(|l| {
                    l.key.as_deref() == Some(&b"o-long-user"[..])
                        && l.headers.get(CONSUMER_GROUP) == Some(pg_group)
                })
                .expect("PostgreSQL dead-lettered the order with the 8 KB user id");
            assert!(
                pg_long_user.headers[ERROR_MESSAGE].contains("54000"),
                "{:?}",
                pg_long_user.headers[ERROR_MESSAGE]
            );
            // Nothing else: every other record was applied.
            assert!(
                orders.len() <= 5 && inventory.len() <= 3,
                "{} order and {} inventory dead letters",
                orders.len(),
                inventory.len()
            );
        }
    })
    .await;
    for (sink, _) in sinks {
        sink.stop().await;
    }
    if let Some(s) = &pg_config.schema {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
            .execute(pg.pool())
            .await;
    }
    pg.pool().close().await;
    let _ = mongo.database().drop().await;
    let _ = drop_all(es_writer.client(), &es_prefix).await;
    let mut c = redis_conn(REDIS_URL.get()).await;
    let keys: Vec<String> = c
        .keys(format!("{redis_prefix}:*"))
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = c.del(keys).await;
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A SecantusDB of the test's own on a free port, with authentication: users `root`
/// (`rootpw`) and `sink` (password `sink_password`), created without auth and then the server
/// restarted with `--auth`. Killed and its data removed on drop.
struct OwnSecantus {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnSecantus {
    fn binary() -> String {
        let cache = std::env::var("TRIBUTARY_CACHE").unwrap_or_else(|_| {
            format!(
                "{}/.cache/tributary",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        format!("{cache}/venv/bin/secantusd-py")
    }

    fn spawn(&mut self, auth: bool) {
        let mut cmd = std::process::Command::new(Self::binary());
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(&self.dir)
            // The users must survive the kill between the two starts.
            .arg("--sync-on-commit")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if auth {
            cmd.arg("--auth");
        }
        self.child = Some(
            cmd.spawn()
                .expect("secantusd-py (stack/stack.sh installs it)"),
        );
    }

    async fn wait_up(&self) {
        let port = self.port;
        eventually(
            "the test's SecantusDB to accept connections",
            WAIT,
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn start(sink_password: &str) -> OwnSecantus {
        let dir = std::env::temp_dir().join(unique_name("tributary-secantus"));
        std::fs::create_dir_all(&dir).expect("data dir");
        let mut server = OwnSecantus {
            port: free_port(),
            dir,
            child: None,
        };
        server.spawn(false);
        server.wait_up().await;
        let open = mongodb::Client::with_uri_str(format!("mongodb://127.0.0.1:{}", server.port))
            .await
            .expect("client");
        for (user, pwd, role) in [
            ("root", "rootpw", doc! { "role": "root", "db": "admin" }),
            (
                "sink",
                sink_password,
                doc! { "role": "readWrite", "db": "views" },
            ),
        ] {
            open.database("admin")
                .run_command(doc! { "createUser": user, "pwd": pwd, "roles": [role] })
                .await
                .expect("createUser");
        }
        open.shutdown().await;
        server.kill();
        server.spawn(true);
        server.wait_up().await;
        server
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!(
            "mongodb://{user}:{password}@127.0.0.1:{}/?authSource=admin",
            self.port
        )
    }
}

impl Drop for OwnSecantus {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn mongodb_wrong_credentials_are_waited_for_not_dead_lettered() {
    // The sink is configured with `right`; the server knows another password until the fix.
    let server = OwnSecantus::start("rotated").await;
    let admin = MongoWriter::connect(&server.url("root", "rootpw"), "views")
        .await
        .expect("admin client");
    tributary_sinks::mongodb::migrate(admin.database())
        .await
        .expect("migrations as root");
    let writer = MongoWriter::connect(&server.url("sink", "right"), "views")
        .await
        .expect("sink client (lazy)");
    let codec = codec();
    let sources = topics("fault-mongo-auth", &[EventStream::Inventory], 1).await;
    let (sink, group) = start(
        sink_config("fault-mongo-auth", &sources),
        Arc::new(MongoProjection),
        Arc::new(writer),
    );
    produce(&sources, &products(&codec, 0, 5).await).await;
    assert_held_during_fault(&sink, &group, &sources, 0).await;

    admin
        .database()
        .client()
        .database("admin")
        .run_command(doc! { "updateUser": "sink", "pwd": "right" })
        .await
        .expect("updateUser");
    wait_caught_up(&group, &sources, WAIT).await;
    let n = admin
        .database()
        .collection::<Document>("products")
        .count_documents(doc! {})
        .await
        .expect("count");
    assert_eq!(n, 6);
    assert_eq!(sink.metrics.dlq(), 0);
    sink.stop().await;
}
