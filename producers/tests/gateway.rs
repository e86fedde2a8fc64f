//! The HTTP command gateway against the real broker, registry and Redis.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tributary_producers::gateway::{self, GatewayConfig, RateLimit};
use tributary_producers::CommandSender;
use tributary_registry::{Compatibility, RegistryConfig};
use tributary_runtime::config::{KAFKA_BROKERS, REDIS_URL};
use tributary_runtime::kafka::{
    client_config, close_consumer, ensure_topic, unique_name, TopicSpec,
};
use tributary_schemas::domain::{OrderCommand, RejectionEvent, RejectionReason};
use tributary_schemas::types::Envelope;
use tributary_schemas::Codec;

/// Runs a command with `input` on its stdin.
trait WithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl WithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs (make up installs prometheus)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn place_order(order: &str, user: &str) -> Value {
    json!({"payload": {"PlaceOrder": {"order_id": order, "user_id": user, "currency": "EUR",
        "lines": [{"product_id": "p-1", "quantity": 2}]}}})
}

/// The record at `partition`/`offset` of `topic`.
fn record_at(brokers: &str, topic: &str, partition: i32, offset: i64) -> (String, Vec<u8>) {
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", unique_name("gateway-test"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    for _ in 0..60 {
        if let Some(msg) = consumer.poll(Duration::from_millis(500)) {
            let msg = msg.unwrap();
            let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
            let value = msg.payload().unwrap().to_vec();
            close_consumer(&consumer, Duration::from_secs(10));
            return (key, value);
        }
    }
    panic!("no record at {topic}/{partition}@{offset}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_accepts_refuses_limits_and_reads_order_status() {
    let brokers = KAFKA_BROKERS.get();
    let reg = tributary_registry::start(RegistryConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        brokers: brokers.clone(),
        topic: unique_name("_schemas-gateway-test"),
        max_body_bytes: 1 << 20,
        default_compatibility: Compatibility::Backward,
    })
    .await
    .unwrap();
    let codec = Arc::new(Codec::new(&format!("http://{}", reg.addr)));
    let prefix = format!("{}.", unique_name("gw"));
    let orders_topic = format!("{prefix}commands.orders");
    let spec = TopicSpec {
        partitions: 3,
        compacted: false,
    };
    ensure_topic(&brokers, &orders_topic, spec).await.unwrap();
    // One partition, so the test knows where the gateway's one rejection lands.
    let rejections_topic = format!("{prefix}events.rejections");
    let one = TopicSpec {
        partitions: 1,
        compacted: false,
    };
    ensure_topic(&brokers, &rejections_topic, one)
        .await
        .unwrap();

    let redis = redis::Client::open(REDIS_URL.get()).unwrap();
    let conn = redis::aio::ConnectionManager::new(redis).await.unwrap();
    let key_prefix = format!("{}:", unique_name("tributary-test"));
    let sender = Arc::new(CommandSender::new(&brokers, codec.clone(), &prefix).unwrap());
    let config = GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: 2048,
        rate_limit: Some(RateLimit {
            redis: conn.clone(),
            max: 2,
            // Long enough that the test never straddles two windows.
            window: Duration::from_secs(600),
            prefix: format!("{key_prefix}ratelimit:"),
        }),
        order_view: Some((conn.clone(), key_prefix.clone())),
        metrics: prometheus::Registry::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gateway::router(sender, config).unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");

    // Accepted: 202 once the broker has the record, which decodes to the command sent.
    let resp = http
        .post(url("/commands/commands.orders"))
        .json(&place_order("o-1", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let (partition, offset) = (
        body["partition"].as_i64().unwrap() as i32,
        body["offset"].as_i64().unwrap(),
    );
    let (key, bytes) = tokio::task::spawn_blocking({
        let (b, t) = (brokers.clone(), orders_topic.clone());
        move || record_at(&b, &t, partition, offset)
    })
    .await
    .unwrap();
    assert_eq!(key, "o-1");
    let env: Envelope<OrderCommand> = codec.decode(&bytes).await.unwrap();
    assert_eq!(env.id, body["command_id"].as_str().unwrap());
    let OrderCommand::PlaceOrder(order) = env.payload else {
        panic!("a PlaceOrder")
    };
    assert_eq!(order.user_id, "u-1");
    assert_eq!(order.lines[0].quantity, 2);

    // Refused input names what is wrong.
    let bad =
        json!({"payload": {"PlaceOrder": {"order_id": "o-2", "currency": "EUR", "lines": []}}});
    let resp = http
        .post(url("/commands/commands.orders"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("user_id"),
        "{body}"
    );

    let resp = http
        .post(url("/commands/commands.nope"))
        .json(&place_order("o-3", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let huge = json!({"payload": {"CancelOrder": {"order_id": "o-4", "user_id": "u-1", "note": "x".repeat(4096)}}});
    let resp = http
        .post(url("/commands/commands.orders"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // Rate limit: u-1 has used one of two; the second passes, the third is refused; u-2 is unaffected.
    let resp = http
        .post(url("/commands/commands.orders"))
        .json(&place_order("o-5", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = http
        .post(url("/commands/commands.orders"))
        .json(&place_order("o-6", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // ...and the refusal is on the log, with its reason.
    let (key, value) = record_at(&brokers, &rejections_topic, 0, 0);
    assert_eq!(key, "o-6");
    let rejected: Envelope<RejectionEvent> = codec.decode(&value).await.unwrap();
    let RejectionEvent::CommandRejected(r) = rejected.payload;
    assert_eq!(r.reason, RejectionReason::RateLimited);
    assert_eq!(r.command_type, "PlaceOrder");
    assert_eq!(r.command_topic, orders_topic);
    assert!(r.message.contains("`u-1`"), "{}", r.message);
    let resp = http
        .post(url("/commands/commands.orders"))
        .json(&place_order("o-7", "u-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // Order status from the Redis view.
    let mut c = conn.clone();
    let view_key = format!("{key_prefix}order:o-7");
    let _: () = redis::cmd("HSET")
        .arg(&view_key)
        .arg("status")
        .arg("CONFIRMED")
        .arg("version")
        .arg(4)
        .query_async(&mut c)
        .await
        .unwrap();
    let resp = http.get(url("/orders/o-7")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["view"]["status"], "CONFIRMED");
    let resp = http.get(url("/orders/o-404")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Metrics count every outcome; the exposition passes promtool's lint.
    let text = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = |labels: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("tributary_gateway_commands_total{{{labels}}}")))
            .unwrap_or_else(|| panic!("no series {labels} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(series(r#"command="PlaceOrder",outcome="accepted""#), 3.0);
    assert_eq!(
        series(r#"command="PlaceOrder",outcome="rate_limited""#),
        1.0
    );
    assert_eq!(series(r#"command="unknown",outcome="invalid""#), 2.0);
    assert!(text.contains("tributary_gateway_request_duration_seconds_bucket"));
    let lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(text.as_bytes());
    assert!(
        lint.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let health = http.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // Clean up the test's keys.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{key_prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    server.abort();
    reg.shutdown().await;
}
