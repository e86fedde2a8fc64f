//! The Redis sink and lock against the real broker, registry and Redis: each test uses its own
//! topics, consumer group and key prefix.

mod runner_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use runner_common::*;
use tributary_runtime::clock::now_ms;
use tributary_runtime::config::REDIS_URL;
use tributary_runtime::kafka::unique_name;
use tributary_schemas::types::Envelope;
use tributary_schemas::Codec;
use tributary_sinks::redis::{RedisConfig, RedisLock, RedisProjection, RedisWriter};
use tributary_sinks::runner::{EventStream, SourceTopic};

const WAIT: Duration = Duration::from_secs(60);
const STREAMS: &[EventStream] = &[
    EventStream::Users,
    EventStream::Inventory,
    EventStream::Orders,
];

async fn writer(prefix: &str) -> RedisWriter {
    RedisWriter::connect(RedisConfig {
        url: REDIS_URL.get(),
        prefix: prefix.to_string(),
        ..RedisConfig::default()
    })
    .await
    .expect("redis reachable")
}

async fn conn() -> ConnectionManager {
    let client = redis::Client::open(REDIS_URL.get()).expect("redis url");
    ConnectionManager::new(client)
        .await
        .expect("redis reachable")
}

/// Every key under `prefix` with its hash (or string) contents; TTLs are checked separately.
async fn snapshot(prefix: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut c = conn().await;
    let keys: Vec<String> = c.keys(format!("{prefix}:*")).await.expect("keys");
    let mut out = BTreeMap::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut c)
            .await
            .expect("type");
        let value: BTreeMap<String, String> = if kind == "hash" {
            c.hgetall(&k).await.expect("hgetall")
        } else {
            let v: String = c.get(&k).await.expect("get");
            BTreeMap::from([("value".to_string(), v)])
        };
        out.insert(k[prefix.len()..].to_string(), value);
    }
    out
}

async fn cleanup(prefix: &str) {
    let mut c = conn().await;
    let keys: Vec<String> = c.keys(format!("{prefix}:*")).await.expect("keys");
    if !keys.is_empty() {
        let _: () = c.del(keys).await.expect("del");
    }
}

/// The event moved to `base` (now, so that absolute expiries lie in the future).
fn at<P>(mut e: Envelope<P>, base: i64) -> Envelope<P> {
    e.timestamp = e.timestamp - T0 + base;
    e
}

async fn event_log(codec: &Codec, base: i64) -> Vec<Rec> {
    use EventStream::*;
    vec![
        encode(
            codec,
            Inventory,
            "p1",
            &at(product_added("p1", 1, 10), base),
        )
        .await,
        encode(codec, Inventory, "p2", &at(product_added("p2", 1, 3), base)).await,
        encode(
            codec,
            Orders,
            "o1",
            &at(order_placed("o1", "u1", 1, 1000), base),
        )
        .await,
        encode(
            codec,
            Users,
            "u1",
            &at(session_started("u1", "s1", 4), base),
        )
        .await,
        encode(
            codec,
            Inventory,
            "p1",
            &at(product_restocked("p1", 2, 15), base),
        )
        .await,
        encode(
            codec,
            Orders,
            "o2",
            &at(order_placed("o2", "u1", 1, 500), base),
        )
        .await,
        encode(
            codec,
            Users,
            "u1",
            &at(session_started("u1", "s2", 5), base),
        )
        .await,
        encode(
            codec,
            Orders,
            "o1",
            &at(order_confirmed("o1", "u1", 2, 1000), base),
        )
        .await,
        encode(codec, Users, "u1", &at(session_ended("u1", "s1", 6), base)).await,
        encode(
            codec,
            Orders,
            "o2",
            &at(order_cancelled("o2", "u1", 2), base),
        )
        .await,
    ]
}

fn start(name: &str, sources: &[SourceTopic], writer: &RedisWriter) -> (Running, String) {
    let config = sink_config(name, sources);
    let group = config.group_id.clone();
    let running = Running::start(
        config,
        Arc::new(RedisProjection::default()),
        Arc::new(writer.clone()),
    );
    (running, group)
}

#[tokio::test]
async fn fixed_log_replayed_or_shuffled_gives_the_same_keys() {
    let codec = codec();
    let base = now_ms();
    let log = event_log(&codec, base).await;

    let prefix_a = unique_name("test-redis-a") + ":v1";
    let writer_a = writer(&prefix_a).await;
    let sources_a = topics("redis-a", STREAMS, 2).await;
    let (sink_a, group_a) = start("redis-a", &sources_a, &writer_a);
    produce(&sources_a, &log).await;
    wait_caught_up(&group_a, &sources_a, WAIT).await;

    let first = snapshot(&prefix_a).await;
    let h = |k: &str| first.get(k).cloned().unwrap_or_default();
    assert_eq!(
        h(":order:o1").get("status").map(String::as_str),
        Some("CONFIRMED")
    );
    assert_eq!(
        h(":order:o1").get("payment_id").map(String::as_str),
        Some("pay-o1")
    );
    assert_eq!(
        h(":order:o1").get("_version").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        h(":order:o2").get("status").map(String::as_str),
        Some("CANCELLED")
    );
    assert_eq!(
        h(":product:p1").get("available").map(String::as_str),
        Some("15")
    );
    assert_eq!(
        h(":product:p1").get("reserved").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        h(":product:p1").get("name").map(String::as_str),
        Some("Product p1")
    );
    assert_eq!(
        h(":product:p2").get("available").map(String::as_str),
        Some("3")
    );
    assert!(
        !first.contains_key(":session:s1"),
        "an ended session is gone"
    );
    assert_eq!(
        h(":session:s2").get("user_id").map(String::as_str),
        Some("u1")
    );
    let window = 60_000;
    let rate_key = format!(":ratelimit:orders:u1:{}", (base + 1000) / window * window);
    assert_eq!(
        first.get(&rate_key).map(BTreeMap::len),
        Some(2),
        "two orders in the window"
    );
    let mut c = conn().await;
    let ttl: i64 = c
        .pttl(format!("{prefix_a}:session:s2"))
        .await
        .expect("pttl");
    assert!(
        ttl > 0 && ttl <= 30 * 60 * 1000 + 10_000,
        "a session expires: {ttl}"
    );
    let ttl: i64 = c.pttl(format!("{prefix_a}{rate_key}")).await.expect("pttl");
    assert!(ttl > 0, "a rate window expires: {ttl}");
    assert_eq!(
        first.len(),
        6 + 1,
        "keys: {:?}",
        first.keys().collect::<Vec<_>>()
    );

    // The same log again: nothing changes.
    let written = sink_a.metrics.written();
    produce(&sources_a, &log).await;
    wait_caught_up(&group_a, &sources_a, WAIT).await;
    assert_eq!(snapshot(&prefix_a).await, first);
    assert_eq!(
        sink_a.metrics.written(),
        written,
        "a replay applies nothing"
    );
    assert_eq!(sink_a.metrics.dlq(), 0);
    sink_a.stop().await;

    // Shuffled across aggregates, under another prefix.
    let prefix_b = unique_name("test-redis-b") + ":v1";
    let writer_b = writer(&prefix_b).await;
    let sources_b = topics("redis-b", STREAMS, 2).await;
    let (sink_b, group_b) = start("redis-b", &sources_b, &writer_b);
    produce(&sources_b, &shuffle_keeping_key_order(&log, 11)).await;
    wait_caught_up(&group_b, &sources_b, WAIT).await;
    assert_eq!(snapshot(&prefix_b).await, first);
    sink_b.stop().await;

    cleanup(&prefix_a).await;
    cleanup(&prefix_b).await;
}

#[tokio::test]
async fn stale_versions_are_skipped_and_tombstones_delete_for_good() {
    let codec = codec();
    let base = now_ms();
    let prefix = unique_name("test-redis-stale") + ":v1";
    let writer = writer(&prefix).await;
    let sources = topics("redis-stale", STREAMS, 1).await;
    let (sink, group) = start("redis-stale", &sources, &writer);
    use EventStream::*;
    let placed = encode(
        &codec,
        Orders,
        "o1",
        &at(order_placed("o1", "u1", 1, 1000), base),
    )
    .await;
    produce(
        &sources,
        &[
            encode(
                &codec,
                Inventory,
                "p1",
                &at(product_added("p1", 1, 10), base),
            )
            .await,
            encode(
                &codec,
                Inventory,
                "p1",
                &at(product_restocked("p1", 3, 30), base),
            )
            .await,
            encode(
                &codec,
                Inventory,
                "p1",
                &at(product_restocked("p1", 2, 20), base),
            )
            .await,
            placed.clone(),
            Rec {
                stream: Orders,
                key: "o1".into(),
                value: None,
            },
        ],
    )
    .await;
    wait_caught_up(&group, &sources, WAIT).await;
    let snap = snapshot(&prefix).await;
    assert_eq!(
        snap.get(":product:p1")
            .and_then(|h| h.get("available"))
            .map(String::as_str),
        Some("30")
    );
    assert_eq!(sink.metrics.stale(), 1);
    assert_eq!(
        sink.sample("tributary_sink_changes_stale_total{component_id=\"redis-stale\",component_kind=\"sink\"}"),
        Some(1.0)
    );
    assert!(
        !snap.contains_key(":order:o1"),
        "the tombstone deleted the order"
    );

    // Replaying the order's events after the tombstone does not bring it back.
    produce(&sources, &[placed]).await;
    wait_caught_up(&group, &sources, WAIT).await;
    assert!(!snapshot(&prefix).await.contains_key(":order:o1"));
    assert_eq!(sink.metrics.dlq(), 0);
    sink.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn store_outage_loses_nothing_and_dead_letters_nothing() {
    let codec = codec();
    let base = now_ms();
    let prefix = unique_name("test-redis-outage") + ":v1";
    let target = REDIS_URL
        .get()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(&target).await;
    let writer = RedisWriter::connect(RedisConfig {
        url: format!("redis://{}", proxy.addr),
        prefix: prefix.clone(),
        response_timeout: Duration::from_secs(1),
        connection_timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    })
    .await
    .expect("redis reachable through the proxy");
    let sources = topics("redis-outage", STREAMS, 1).await;
    let (sink, group) = start("redis-outage", &sources, &writer);
    use EventStream::*;
    produce(
        &sources,
        &[encode(
            &codec,
            Inventory,
            "p0",
            &at(product_added("p0", 1, 1), base),
        )
        .await],
    )
    .await;
    wait_caught_up(&group, &sources, WAIT).await;

    proxy.down();
    let mut during = Vec::new();
    for i in 1..=20 {
        let p = format!("p{i}");
        during.push(encode(&codec, Inventory, &p, &at(product_added(&p, 1, i), base)).await);
    }
    produce(&sources, &during).await;
    eventually("the sink to retry", WAIT, || async {
        (sink.metrics.retries() >= 3).then_some(())
    })
    .await;
    proxy.up();
    wait_caught_up(&group, &sources, WAIT).await;

    let snap = snapshot(&prefix).await;
    for i in 0..=20 {
        assert!(
            snap.contains_key(&format!(":product:p{i}")),
            "p{i} is there"
        );
    }
    assert_eq!(sink.metrics.dlq(), 0);
    sink.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_lock_has_one_holder_at_a_time() {
    let key = unique_name("test-lock");
    let mut c = conn().await;
    let ttl = Duration::from_secs(10);

    let a = RedisLock::try_acquire(&mut c, &key, ttl)
        .await
        .expect("redis")
        .expect("free lock");
    assert!(RedisLock::try_acquire(&mut c, &key, ttl)
        .await
        .expect("redis")
        .is_none());
    assert!(a.extend(&mut c, ttl).await.expect("redis"));
    assert!(a.release(&mut c).await.expect("redis"));
    let b = RedisLock::try_acquire(&mut c, &key, ttl)
        .await
        .expect("redis")
        .expect("released");
    assert!(b.release(&mut c).await.expect("redis"));

    // A holder whose lease ran out cannot release the next holder's lock.
    let short = RedisLock::try_acquire(&mut c, &key, Duration::from_millis(100))
        .await
        .expect("redis")
        .expect("free");
    let next = RedisLock::acquire(
        &mut c,
        &key,
        ttl,
        Duration::from_secs(10),
        Duration::from_millis(20),
    )
    .await
    .expect("redis")
    .expect("acquired after expiry");
    assert!(!short.release(&mut c).await.expect("redis"));
    assert!(RedisLock::try_acquire(&mut c, &key, ttl)
        .await
        .expect("redis")
        .is_none());
    assert!(next.release(&mut c).await.expect("redis"));

    // Many contenders: never two inside at once, and every one gets in.
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (key, inside, most, entered) =
            (key.clone(), inside.clone(), most.clone(), entered.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = conn().await;
            for _ in 0..3 {
                let lock = RedisLock::acquire(
                    &mut c,
                    &key,
                    Duration::from_secs(10),
                    Duration::from_secs(30),
                    Duration::from_millis(5),
                )
                .await
                .expect("redis")
                .expect("lock within 30 s");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                entered.fetch_add(1, Ordering::SeqCst);
                assert!(lock.release(&mut c).await.expect("redis"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("contender");
    }
    assert_eq!(most.load(Ordering::SeqCst), 1);
    assert_eq!(entered.load(Ordering::SeqCst), 24);
}

/// A redis-server of this test's own, on a free port, so that it can be restarted without
/// disturbing the shared one.
struct PrivateRedis {
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    async fn start(port: u16) -> Option<PrivateRedis> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = PrivateRedis { child: Some(child) };
        eventually(
            "the private redis-server to accept connections",
            WAIT,
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        Some(server)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_restarted_server_gets_the_script_again() {
    use tributary_sinks::change::{Change, Op, ViewWriter};
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let Some(mut server) = PrivateRedis::start(port).await else {
        panic!("redis-server is not installed (STACK.md: Debian package redis-server)");
    };
    let writer = RedisWriter::connect(RedisConfig {
        url: format!("redis://127.0.0.1:{port}"),
        prefix: "t:v1".into(),
        response_timeout: Duration::from_secs(1),
        connection_timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    })
    .await
    .expect("private redis");
    let change = |key: &str| Change {
        view: "order",
        key: key.into(),
        version: 1,
        event_time_ms: T0,
        op: Op::Upsert(
            serde_json::json!({"status": "PLACED"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
    };
    writer.write(&[change("o1")]).await.expect("first write");

    // Restarted without persistence: the data and the loaded script are gone.
    server.kill();
    let mut server = PrivateRedis::start(port).await.expect("restart");
    let outcome = eventually("a write after the restart", WAIT, || async {
        // The runner retries an unavailable store the same way.
        writer.write(&[change("o2")]).await.ok()
    })
    .await;
    assert_eq!(outcome.applied, 1);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut c = ConnectionManager::new(client).await.expect("private redis");
    let status: Option<String> = c.hget("t:v1:order:o2", "status").await.expect("hget");
    assert_eq!(status.as_deref(), Some("PLACED"));
    server.kill();
}
