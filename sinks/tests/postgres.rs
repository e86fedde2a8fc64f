//! The PostgreSQL sink against the real broker, registry and PostgreSQL: each test uses its own
//! topics, consumer group and schema.

mod runner_common;

use std::sync::Arc;
use std::time::Duration;

use runner_common::*;
use serde_json::Value;
use sqlx::PgPool;
use tributary_runtime::dlq::{
    dlq_topic, ERROR_CLASS, ERROR_MESSAGE, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC,
};
use tributary_runtime::kafka::unique_name;
use tributary_schemas::Codec;
use tributary_sinks::postgres::views::{ViewKind, VIEWS};
use tributary_sinks::postgres::{
    migrate, PostgresConfig, PostgresProjection, PostgresWriter, MIGRATOR,
};
use tributary_sinks::runner::{EventStream, SourceTopic};

const WAIT: Duration = Duration::from_secs(60);

const STREAMS: &[EventStream] = &[
    EventStream::Users,
    EventStream::Orders,
    EventStream::Payments,
    EventStream::Analytics,
];

/// A fresh schema, migrated, and a writer on it.
async fn fresh_store() -> (PostgresConfig, PostgresWriter) {
    let config = PostgresConfig {
        schema: Some(unique_name("t").replace('-', "_")),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    let writer = PostgresWriter::connect(&config)
        .await
        .expect("postgres reachable and migrated");
    (config, writer)
}

async fn drop_schema(config: &PostgresConfig, pool: &PgPool) {
    if let Some(s) = &config.schema {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
            .execute(pool)
            .await;
    }
    pool.close().await;
}

/// Every row of every view, as JSON, in key order.
async fn snapshot(pool: &PgPool) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for v in VIEWS {
        let order = match v.kind {
            ViewKind::State => "id".to_string(),
            ViewKind::Append { key, version, .. } => format!("{key}, {version}"),
        };
        let sql = format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {order}), '[]'::jsonb) FROM {} t",
            v.name
        );
        let rows: Value = sqlx::query_scalar(&sql)
            .fetch_one(pool)
            .await
            .expect("snapshot");
        out.push((v.name.to_string(), rows));
    }
    out
}

async fn row(pool: &PgPool, table: &str, id: &str) -> Option<Value> {
    sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {table} t WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .expect("query")
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

/// The fixed event log of these tests.
async fn event_log(codec: &Codec) -> Vec<Rec> {
    use EventStream::*;
    vec![
        encode(codec, Users, "u1", &user_registered("u1", 1)).await,
        encode(codec, Users, "u2", &user_registered("u2", 1)).await,
        encode(codec, Orders, "o1", &order_placed("o1", "u1", 1, 1000)).await,
        encode(codec, Users, "u1", &profile_updated("u1", 2, "Ada")).await,
        encode(codec, Orders, "o2", &order_placed("o2", "u2", 1, 500)).await,
        encode(
            codec,
            Payments,
            "pay1",
            &payment_authorized("pay1", "o1", 1, 1000),
        )
        .await,
        encode(codec, Users, "u1", &preferences_updated("u1", 3)).await,
        encode(codec, Users, "u1", &session_started("u1", "s1", 4)).await,
        encode(codec, Orders, "o1", &order_confirmed("o1", "u1", 2, 1000)).await,
        encode(
            codec,
            Payments,
            "pay1",
            &payment_captured("pay1", "o1", 2, 1000),
        )
        .await,
        encode(codec, Analytics, "revenue-EUR", &revenue_window(1, 1, 1000)).await,
        encode(codec, Orders, "o2", &order_cancelled("o2", "u2", 2)).await,
        encode(codec, Orders, "o3", &order_placed("o3", "u1", 1, 300)).await,
        encode(
            codec,
            Payments,
            "pay1",
            &payment_refunded("pay1", "o1", 3, 400),
        )
        .await,
        encode(codec, Analytics, "revenue-EUR", &revenue_window(2, 2, 1300)).await,
    ]
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.get(name).unwrap_or(&Value::Null)
}

async fn assert_expected_view(pool: &PgPool) {
    let u1 = row(pool, "users", "u1").await.expect("u1");
    assert_eq!(field(&u1, "display_name"), "Ada");
    assert_eq!(field(&u1, "email"), "u1@example.com");
    assert_eq!(field(&u1, "locale"), "de-DE");
    assert_eq!(field(&u1, "preferred_channel"), "SMS");
    assert_eq!(field(&u1, "marketing_opt_in"), true);
    assert_eq!(field(&u1, "version"), 3);
    assert_eq!(
        field(&row(pool, "users", "u2").await.expect("u2"), "version"),
        1
    );
    assert_eq!(count(pool, "users").await, 2);

    let o1 = row(pool, "orders", "o1").await.expect("o1");
    assert_eq!(field(&o1, "status"), "CONFIRMED");
    assert_eq!(field(&o1, "payment_id"), "pay-o1");
    assert_eq!(field(&o1, "total_cents"), 1000);
    assert_eq!(field(&o1, "user_id"), "u1");
    assert_eq!(field(&o1, "version"), 2);
    let o2 = row(pool, "orders", "o2").await.expect("o2");
    assert_eq!(field(&o2, "status"), "CANCELLED");
    assert_eq!(field(&o2, "cancel_reason"), "STOCK_OUT");
    assert_eq!(field(&o2, "total_cents"), 500);
    assert_eq!(
        field(&row(pool, "orders", "o3").await.expect("o3"), "status"),
        "PLACED"
    );
    assert_eq!(count(pool, "orders").await, 3);
    assert_eq!(count(pool, "order_items").await, 6);
    let item = row(pool, "order_items", "o1/2").await.expect("o1 line 2");
    assert_eq!(field(&item, "product_id"), "p2");
    assert_eq!(field(&item, "unit_price_cents"), 500);
    assert_eq!(count(pool, "order_events").await, 5);
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT type FROM order_events WHERE aggregate_id = 'o1' ORDER BY sequence",
    )
    .fetch_all(pool)
    .await
    .expect("events");
    assert_eq!(types, ["OrderPlaced", "OrderConfirmed"]);

    let pay = row(pool, "payments", "pay1").await.expect("pay1");
    assert_eq!(field(&pay, "status"), "REFUNDED");
    assert_eq!(field(&pay, "amount_cents"), 1000);
    assert_eq!(field(&pay, "authorization_code"), "auth-pay1");
    assert_eq!(field(&pay, "version"), 3);
    let refund = row(pool, "refunds", "pay1/3").await.expect("refund");
    assert_eq!(field(&refund, "amount_cents"), 400);
    assert_eq!(count(pool, "refunds").await, 1);

    let window = row(pool, "revenue_windows", &format!("{T0}/EUR"))
        .await
        .expect("revenue window");
    assert_eq!(field(&window, "order_count"), 2);
    assert_eq!(field(&window, "revenue_cents"), 1300);
    assert_eq!(field(&window, "version"), 2);
}

fn start(name: &str, sources: &[SourceTopic], writer: &PostgresWriter) -> (Running, String) {
    let config = sink_config(name, sources);
    let group = config.group_id.clone();
    let running = Running::start(
        config,
        Arc::new(PostgresProjection),
        Arc::new(writer.clone()),
    );
    (running, group)
}

#[tokio::test]
async fn fixed_log_replayed_or_shuffled_gives_the_same_rows() {
    let codec = codec();
    let log = event_log(&codec).await;

    // In order, on two partitions per topic.
    let (config_a, writer_a) = fresh_store().await;
    let sources_a = topics("pg-a", STREAMS, 2).await;
    let (sink_a, group_a) = start("pg-a", &sources_a, &writer_a);
    produce(&sources_a, &log).await;
    wait_caught_up(&group_a, &sources_a, WAIT).await;
    assert_expected_view(writer_a.pool()).await;
    let first = snapshot(writer_a.pool()).await;
    let written = sink_a.metrics.written();
    assert!(written > 0);

    // The same log again: nothing changes, every change is stale.
    let stale_before = sink_a.metrics.stale();
    produce(&sources_a, &log).await;
    wait_caught_up(&group_a, &sources_a, WAIT).await;
    assert_eq!(snapshot(writer_a.pool()).await, first);
    assert_eq!(
        sink_a.metrics.written(),
        written,
        "a replay applies nothing"
    );
    assert!(
        sink_a.metrics.stale() > stale_before,
        "a replay is counted as stale"
    );
    assert_eq!(sink_a.metrics.dlq(), 0);
    sink_a.stop().await;

    // Shuffled across aggregates (order within each kept), into another schema.
    let (config_b, writer_b) = fresh_store().await;
    let sources_b = topics("pg-b", STREAMS, 2).await;
    let (sink_b, group_b) = start("pg-b", &sources_b, &writer_b);
    produce(&sources_b, &shuffle_keeping_key_order(&log, 7)).await;
    wait_caught_up(&group_b, &sources_b, WAIT).await;
    assert_eq!(snapshot(writer_b.pool()).await, first);
    sink_b.stop().await;

    drop_schema(&config_a, writer_a.pool()).await;
    drop_schema(&config_b, writer_b.pool()).await;
}

#[tokio::test]
async fn stale_version_is_skipped_and_counted_and_a_tombstone_deletes() {
    let codec = codec();
    let (config, writer) = fresh_store().await;
    let sources = topics("pg-stale", STREAMS, 1).await;
    let (sink, group) = start("pg-stale", &sources, &writer);
    use EventStream::*;
    let log = [
        encode(&codec, Users, "u1", &user_registered("u1", 1)).await,
        encode(&codec, Users, "u1", &profile_updated("u1", 3, "Newer")).await,
        // Older than what is stored: must not win.
        encode(&codec, Users, "u1", &profile_updated("u1", 2, "Older")).await,
        encode(&codec, Orders, "o1", &order_placed("o1", "u1", 1, 1000)).await,
        encode(&codec, Orders, "o2", &order_placed("o2", "u1", 1, 200)).await,
        Rec {
            stream: Orders,
            key: "o1".into(),
            value: None,
        },
    ];
    // The user's events first, so that the stale count is theirs alone.
    produce(&sources, &log[..3]).await;
    wait_caught_up(&group, &sources, WAIT).await;

    let u1 = row(writer.pool(), "users", "u1").await.expect("u1");
    assert_eq!(field(&u1, "display_name"), "Newer");
    assert_eq!(field(&u1, "version"), 3);
    assert_eq!(sink.metrics.stale(), 1);
    assert_eq!(
        sink.sample(
            "tributary_sink_changes_stale_total{component_id=\"pg-stale\",component_kind=\"sink\"}"
        ),
        Some(1.0)
    );

    produce(&sources, &log[3..]).await;
    wait_caught_up(&group, &sources, WAIT).await;

    assert!(
        row(writer.pool(), "orders", "o1").await.is_none(),
        "tombstone deletes the order"
    );
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM order_items WHERE order_id = 'o1'")
        .fetch_one(writer.pool())
        .await
        .expect("count");
    assert_eq!(items, 0, "and its items");
    assert!(row(writer.pool(), "orders", "o2").await.is_some());
    // History stays in the event store.
    assert_eq!(count(writer.pool(), "order_events").await, 2);

    // Replaying the order's creation after the tombstone does not bring it (or its items) back.
    produce(&sources, &log[3..4]).await;
    wait_caught_up(&group, &sources, WAIT).await;
    assert!(row(writer.pool(), "orders", "o1").await.is_none());
    assert_eq!(count(writer.pool(), "order_items").await, 2, "only o2's");
    assert_eq!(sink.metrics.dlq(), 0);
    // Freshness is reported per view.
    assert!(sink
        .sample("tributary_sink_freshness_seconds{component_id=\"pg-stale\",component_kind=\"sink\",view=\"users\"}")
        .is_some());
    assert!(sink
        .sample("tributary_sink_pool_connections{component_id=\"pg-stale\",component_kind=\"sink\",state=\"idle\"}")
        .is_some());
    assert!(sink
        .sample("tributary_sink_batch_size_records_count{component_id=\"pg-stale\",component_kind=\"sink\"}")
        .is_some_and(|n| n >= 1.0));
    assert!(sink
        .sample("tributary_sink_write_duration_seconds_count{component_id=\"pg-stale\",component_kind=\"sink\"}")
        .is_some_and(|n| n >= 1.0));
    sink.stop().await;
    drop_schema(&config, writer.pool()).await;
}

#[tokio::test]
async fn poison_records_go_to_the_dlq_and_the_sink_continues() {
    let codec = codec();
    let (config, writer) = fresh_store().await;
    let sources = topics("pg-poison", STREAMS, 1).await;
    let (sink, group) = start("pg-poison", &sources, &writer);
    use EventStream::*;
    let log = vec![
        encode(&codec, Orders, "o1", &order_placed("o1", "u1", 1, 1000)).await,
        // Not the Confluent wire format.
        Rec {
            stream: Orders,
            key: "junk".into(),
            value: Some(b"not avro at all".to_vec()),
        },
        // Decodes, but violates `total_cents >= 0`: the store rejects it.
        encode(&codec, Orders, "o2", &order_placed("o2", "u1", 1, -5)).await,
        encode(&codec, Orders, "o3", &order_placed("o3", "u1", 1, 300)).await,
    ];
    produce(&sources, &log).await;
    wait_caught_up(&group, &sources, WAIT).await;

    assert!(row(writer.pool(), "orders", "o1").await.is_some());
    assert!(row(writer.pool(), "orders", "o2").await.is_none());
    assert!(
        row(writer.pool(), "orders", "o3").await.is_some(),
        "the sink went on"
    );
    assert_eq!(sink.metrics.dlq(), 2);

    let topic = topic_of(&sources, Orders);
    let letters = read_topic(&dlq_topic(&topic), 2, WAIT);
    assert_eq!(letters.len(), 2);
    let by_class = |class: &str| {
        letters
            .iter()
            .find(|l| l.headers.get(ERROR_CLASS).map(String::as_str) == Some(class))
            .cloned()
            .unwrap_or_else(|| panic!("a `{class}` dead letter in {letters:?}"))
    };
    let junk = by_class("decode");
    assert_eq!(junk.key.as_deref(), Some(&b"junk"[..]));
    assert_eq!(junk.value.as_deref(), Some(&b"not avro at all"[..]));
    assert_eq!(junk.headers.get(SOURCE_TOPIC), Some(&topic));
    assert_eq!(
        junk.headers.get(SOURCE_OFFSET).map(String::as_str),
        Some("1")
    );
    assert!(junk.headers[ERROR_MESSAGE].contains("magic byte"));
    let rejected = by_class("rejected");
    assert_eq!(rejected.key.as_deref(), Some(&b"o2"[..]));
    assert_eq!(
        rejected.headers.get(SOURCE_OFFSET).map(String::as_str),
        Some("2")
    );
    assert_eq!(
        rejected.headers.get(SOURCE_PARTITION).map(String::as_str),
        Some("0")
    );
    assert!(rejected.headers[ERROR_MESSAGE].contains("23514"));
    sink.stop().await;
    drop_schema(&config, writer.pool()).await;
}

#[tokio::test]
async fn migrations_apply_once_even_when_two_run_at_once() {
    let config = PostgresConfig {
        schema: Some(unique_name("t").replace('-', "_")),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    let (a, b) = (config.pool().expect("pool"), config.pool().expect("pool"));
    let schema = config.schema.as_deref();
    let (ra, rb) = tokio::join!(migrate(&a, schema), migrate(&b, schema));
    ra.expect("first runner");
    rb.expect("second runner");
    let applied = || async {
        sqlx::query_as::<_, (i64, bool)>(
            "SELECT version, success FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&a)
        .await
        .expect("migrations table")
    };
    let expected: Vec<(i64, bool)> = MIGRATOR.iter().map(|m| (m.version, true)).collect();
    assert!(!expected.is_empty());
    let first = applied().await;
    assert_eq!(first, expected, "each migration applied exactly once");
    let installed_at: Vec<String> =
        sqlx::query_scalar("SELECT installed_on::text FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&a)
            .await
            .expect("installed_on");

    // Again: a no-op.
    migrate(&a, schema).await.expect("re-run");
    assert_eq!(applied().await, expected);
    let again: Vec<String> =
        sqlx::query_scalar("SELECT installed_on::text FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&a)
            .await
            .expect("installed_on");
    assert_eq!(again, installed_at);
    assert_eq!(count(&a, "orders").await, 0);
    b.close().await;
    drop_schema(&config, &a).await;
}

#[tokio::test]
async fn store_outage_loses_nothing_and_dead_letters_nothing() {
    let codec = codec();
    let real = PostgresConfig {
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    let target = {
        let opts: sqlx::postgres::PgConnectOptions = real.url.parse().expect("database url");
        format!("{}:{}", opts.get_host(), opts.get_port())
    };
    let proxy = Proxy::start(&target).await;
    let url = real.url.replace(&target, &proxy.addr.to_string());
    assert_ne!(
        url, real.url,
        "the database url names its host and port as {target}"
    );
    let config = PostgresConfig {
        url,
        schema: Some(unique_name("t").replace('-', "_")),
        acquire_timeout: Duration::from_secs(1),
        ..PostgresConfig::default()
    };
    let writer = PostgresWriter::connect(&config)
        .await
        .expect("postgres through the proxy");
    let sources = topics("pg-outage", STREAMS, 1).await;
    let (sink, group) = start("pg-outage", &sources, &writer);
    use EventStream::*;
    produce(
        &sources,
        &[encode(&codec, Orders, "o0", &order_placed("o0", "u1", 1, 100)).await],
    )
    .await;
    wait_caught_up(&group, &sources, WAIT).await;

    // The store is away for ~20 s: long enough for the backoff to reach its cap.
    const OUTAGE: Duration = Duration::from_secs(20);
    let down_at = std::time::Instant::now();
    proxy.down();
    let mut during = Vec::new();
    for i in 1..=20 {
        let o = format!("o{i}");
        during.push(encode(&codec, Orders, &o, &order_placed(&o, "u1", 1, 100 + i)).await);
        during.push(encode(&codec, Orders, &o, &order_confirmed(&o, "u1", 2, 100 + i)).await);
    }
    produce(&sources, &during).await;
    eventually("the sink to retry", WAIT, || async {
        (sink.metrics.retries() >= 3).then_some(())
    })
    .await;
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    proxy.up();
    wait_caught_up(&group, &sources, WAIT).await;

    // Read through a direct connection: the proxy's state does not matter here.
    let direct = PostgresConfig {
        schema: config.schema.clone(),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    }
    .pool()
    .expect("pool");
    assert_eq!(count(&direct, "orders").await, 21);
    let confirmed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'CONFIRMED'")
            .fetch_one(&direct)
            .await
            .expect("count");
    assert_eq!(confirmed, 20);
    assert_eq!(count(&direct, "order_events").await, 41);
    assert_eq!(sink.metrics.dlq(), 0);
    assert!(
        sink.sample(
            "tributary_component_retries_total{component_id=\"pg-outage\",component_kind=\"sink\"}"
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    sink.stop().await;
    writer.pool().close().await;
    drop_schema(&config, &direct).await;
}

/// Slows every write down so that a kill lands in the middle of the run.
struct Slow(PostgresWriter);

#[async_trait::async_trait]
impl tributary_sinks::change::ViewWriter for Slow {
    fn store(&self) -> &'static str {
        "postgres"
    }

    async fn write(
        &self,
        batch: &[tributary_sinks::change::Change],
    ) -> Result<tributary_sinks::change::WriteOutcome, tributary_sinks::change::WriteError> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.0.write(batch).await
    }
}

const CRASH_ENV: &str = "TRIBUTARY_TEST_CRASH";

fn crash_config(
    name: &str,
    sources: &[SourceTopic],
    group: &str,
) -> tributary_sinks::runner::SinkConfig {
    let mut config = sink_config(name, sources);
    config.group_id = group.to_string();
    config.batch_max_records = 10;
    // A killed member leaves the group only when its session times out.
    config
        .consumer_settings
        .push(("session.timeout.ms".into(), "6000".into()));
    config
}

/// The process that `kill_9_mid_run_then_restart_loses_nothing` kills: a sink that runs until
/// it is killed. Does nothing when run on its own.
#[tokio::test]
#[ignore = "child process of kill_9_mid_run_then_restart_loses_nothing"]
async fn crash_child() {
    let Ok(spec) = std::env::var(CRASH_ENV) else {
        return;
    };
    let mut parts = spec.split(' ');
    let (Some(schema), Some(topic), Some(group)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let config = PostgresConfig {
        schema: Some(schema.to_string()),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    let writer = PostgresWriter::connect(&config).await.expect("postgres");
    let sources = [SourceTopic {
        topic: topic.to_string(),
        stream: EventStream::Orders,
    }];
    let _sink = Running::start(
        crash_config("pg-crash-child", &sources, group),
        Arc::new(PostgresProjection),
        Arc::new(Slow(writer)),
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn kill_9_mid_run_then_restart_loses_nothing() {
    let codec = codec();
    let (config, writer) = fresh_store().await;
    let sources = topics("pg-crash", &[EventStream::Orders], 1).await;
    let group = unique_name("test-sink-pg-crash");
    let mut log = Vec::new();
    for i in 0..100 {
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
        log.push(
            encode(
                &codec,
                EventStream::Orders,
                &o,
                &order_confirmed(&o, "u1", 2, 100),
            )
            .await,
        );
    }
    produce(&sources, &log).await;

    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args(["--ignored", "--exact", "crash_child", "--nocapture"])
        .env(
            CRASH_ENV,
            format!(
                "{} {} {group}",
                config.schema.as_deref().unwrap_or_default(),
                sources[0].topic
            ),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("child sink starts");
    eventually("the child to write some orders", WAIT, || async {
        (count(writer.pool(), "order_events").await >= 20).then_some(())
    })
    .await;
    // SIGKILL: no shutdown, no final commit.
    child.kill().expect("kill -9");
    let _ = child.wait();
    let at_kill = count(writer.pool(), "order_events").await;

    let sink = Running::start(
        crash_config("pg-crash", &sources, &group),
        Arc::new(PostgresProjection),
        Arc::new(writer.clone()),
    );
    wait_caught_up(&group, &sources, Duration::from_secs(90)).await;
    assert_eq!(count(writer.pool(), "orders").await, 100);
    let confirmed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE status = 'CONFIRMED' AND version = 2",
    )
    .fetch_one(writer.pool())
    .await
    .expect("count");
    assert_eq!(confirmed, 100, "killed at {at_kill} of 200 events");
    assert_eq!(count(writer.pool(), "order_events").await, 200);
    assert_eq!(count(writer.pool(), "order_items").await, 200);
    assert_eq!(sink.metrics.dlq(), 0);
    sink.stop().await;
    drop_schema(&config, writer.pool()).await;
}

#[tokio::test]
async fn writer_round_trips_awkward_text_and_counts_stale_rows() {
    use tributary_sinks::change::{Change, Op, ViewWriter, WriteOutcome};
    let (config, writer) = fresh_store().await;
    let awkward = "tab\there\nnew line\r\\back\\slash \"quoted\" 'single' \\N ü 🚀";
    let change = |version: i64, name: &str| Change {
        view: "users",
        key: "u\t1".into(),
        version,
        event_time_ms: T0,
        op: Op::Upsert(
            serde_json::json!({ "display_name": name, "email": "x@example.com" })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
    };
    let outcome = writer.write(&[change(2, awkward)]).await.expect("write");
    assert_eq!(
        outcome,
        WriteOutcome {
            applied: 1,
            stale: 0
        }
    );
    let outcome = writer.write(&[change(1, "older")]).await.expect("write");
    assert_eq!(
        outcome,
        WriteOutcome {
            applied: 0,
            stale: 1
        }
    );
    let outcome = writer.write(&[change(2, "equal")]).await.expect("write");
    assert_eq!(
        outcome,
        WriteOutcome {
            applied: 0,
            stale: 1
        }
    );
    let u = row(writer.pool(), "users", "u\t1").await.expect("row");
    assert_eq!(field(&u, "display_name"), awkward);
    assert_eq!(field(&u, "version"), 2);
    drop_schema(&config, writer.pool()).await;
}
