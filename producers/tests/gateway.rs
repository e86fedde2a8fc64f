//! The HTTP command gateway against the real broker, registry and Redis.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tributary_producers::gateway::auth::Authenticator;
use tributary_producers::gateway::{self, GatewayConfig, RateLimit};
use tributary_producers::CommandSender;
use tributary_registry::{Compatibility, RegistryConfig};
use tributary_runtime::config::{KAFKA_BROKERS, REDIS_URL};
use tributary_runtime::kafka::{
    client_config, close_consumer, ensure_topic, unique_name, TopicSpec,
};
use tributary_schemas::domain::{OrderCommand, PaymentCommand, RejectionEvent, RejectionReason};
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

const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes!";
const INTERNAL_KEY: &str = "svc-key-0123456789abcdef01";
const ADMIN_KEY: &str = "ops-key-0123456789abcdef01";

/// An HS256 token for `user` with `roles`, valid for ten minutes.
fn token(user: &str, roles: &[&str]) -> String {
    let claims = json!({"sub": user, "roles": roles,
        "exp": jsonwebtoken::get_current_timestamp() + 600});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn authenticator() -> Authenticator {
    Authenticator::default()
        .with_hs256_secret(SECRET)
        .unwrap()
        .with_api_keys(&format!(
            "saga-svc {INTERNAL_KEY} internal\nops {ADMIN_KEY} admin\n"
        ))
        .unwrap()
}

/// The sum of the high watermarks of `topic`'s partitions: what was ever written to it.
fn end_offset(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = client_config(brokers).create().unwrap();
    let partitions =
        tributary_runtime::kafka::partition_count(&consumer, topic, Duration::from_secs(10))
            .unwrap();
    assert!(partitions > 0, "{topic} has partitions");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
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

/// A gateway serving `config` on a free port, with the peer address known to its handlers.
async fn serve(sender: Arc<CommandSender>, config: GatewayConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gateway::router(sender, config).unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
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
        max_body_bytes: 2048,
        rate_limit: Some(RateLimit {
            redis: conn.clone(),
            max: 2,
            // Long enough that the test never straddles two windows.
            window: Duration::from_secs(600),
            prefix: format!("{key_prefix}ratelimit:"),
        }),
        order_view: Some((conn.clone(), key_prefix.clone())),
        ..GatewayConfig::new("127.0.0.1:0".parse().unwrap(), authenticator())
    };
    let addr = serve(sender, config).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let (u1, u2) = (token("u-1", &[]), token("u-2", &[]));

    // Anonymous, or with a token that does not verify: 401, and nothing is written.
    let resp = http
        .post(url("/commands/commands.orders"))
        .json(&place_order("o-0", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u-1", "exp": jsonwebtoken::get_current_timestamp() + 600}),
        &EncodingKey::from_secret(b"not the gateway's secret, 32 bytes"),
    )
    .unwrap();
    let resp = http
        .post(url("/commands/commands.orders"))
        .bearer_auth(&forged)
        .json(&place_order("o-0", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(end_offset(&brokers, &orders_topic), 0);

    // Accepted: 202 once the broker has the record, which decodes to the command sent, with
    // the token's user even though the body names another.
    let resp = http
        .post(url("/commands/commands.orders"))
        .bearer_auth(&u1)
        .json(&place_order("o-1", "u-someone-else"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["user_id"], "u-1", "{body}");
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

    // Refused input names what is wrong (the body lacks the order's lines, not its user,
    // which the token supplies).
    let bad = json!({"payload": {"PlaceOrder": {"order_id": "o-2", "user_id": "u-1", "currency": "EUR"}}});
    let resp = http
        .post(url("/commands/commands.orders"))
        .bearer_auth(&u1)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("lines"), "{body}");

    let resp = http
        .post(url("/commands/commands.nope"))
        .bearer_auth(&u1)
        .json(&place_order("o-3", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let huge = json!({"payload": {"CancelOrder": {"order_id": "o-4", "user_id": "u-1", "note": "x".repeat(4096)}}});
    let resp = http
        .post(url("/commands/commands.orders"))
        .bearer_auth(&u1)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // Rate limit per principal: u-1 has used one of two; the second passes, the third is
    // refused, whatever user the bodies name; u-2 is unaffected.
    let resp = http
        .post(url("/commands/commands.orders"))
        .bearer_auth(&u1)
        .json(&place_order("o-5", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = http
        .post(url("/commands/commands.orders"))
        .bearer_auth(&u1)
        .json(&place_order("o-6", "u-2"))
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
    // A second refusal in the window is answered but not written again.
    let resp = http
        .post(url("/commands/commands.orders"))
        .bearer_auth(&u1)
        .json(&place_order("o-6b", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(end_offset(&brokers, &rejections_topic), 1);
    let resp = http
        .post(url("/commands/commands.orders"))
        .bearer_auth(&u2)
        .json(&place_order("o-7", "u-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // Order status from the Redis view: the owner and an admin see it; another user gets the
    // same 404 as for an order that does not exist; without credentials, 401.
    let mut c = conn.clone();
    let view_key = format!("{key_prefix}order:o-7");
    let _: () = redis::cmd("HSET")
        .arg(&view_key)
        .arg("status")
        .arg("CONFIRMED")
        .arg("user_id")
        .arg("u-2")
        .arg("version")
        .arg(4)
        .query_async(&mut c)
        .await
        .unwrap();
    let resp = http
        .get(url("/orders/o-7"))
        .bearer_auth(&u2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["view"]["status"], "CONFIRMED");
    let resp = http
        .get(url("/orders/o-7"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .get(url("/orders/o-7"))
        .bearer_auth(&u1)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let not_found: Value = resp.json().await.unwrap();
    let resp = http
        .get(url("/orders/o-404"))
        .bearer_auth(&u1)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        not_found["error"].as_str().unwrap().replace("o-7", "X"),
        body["error"].as_str().unwrap().replace("o-404", "X"),
        "another's order and a missing one are told apart"
    );
    let resp = http.get(url("/orders/o-7")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // Metrics count every outcome; the exposition passes promtool's lint.
    let text = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every series also carries the component labels of the one naming scheme (labels are
    // exposed sorted by name: command, component_id, component_kind, outcome).
    let series = |labels: &str| -> f64 {
        let labels = labels.replacen(
            ",outcome=",
            r#",component_id="gateway",component_kind="gateway",outcome="#,
            1,
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("tributary_gateway_commands_total{{{labels}}}")))
            .unwrap_or_else(|| panic!("no series {labels} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(series(r#"command="PlaceOrder",outcome="accepted""#), 3.0);
    assert_eq!(
        series(r#"command="PlaceOrder",outcome="rate_limited""#),
        2.0
    );
    assert_eq!(series(r#"command="unknown",outcome="invalid""#), 2.0);
    assert_eq!(series(r#"command="unknown",outcome="unauthorized""#), 2.0);
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
    reg.shutdown().await;
}

/// The saga's internal commands from any caller without `internal`, and the catalogue from a
/// plain user, get 403 and leave their topics untouched; the internal service and the admin
/// are let through, which shows the 403s come from the policy and not from a broken path.
#[tokio::test(flavor = "multi_thread")]
async fn internal_and_catalogue_commands_need_their_role() {
    let brokers = KAFKA_BROKERS.get();
    let reg = tributary_registry::start_in_memory(
        "127.0.0.1:0".parse().unwrap(),
        Compatibility::Backward,
    )
    .await
    .unwrap();
    let codec = Arc::new(Codec::new(&format!("http://{}", reg.addr)));
    let prefix = format!("{}.", unique_name("gw-policy"));
    let spec = TopicSpec {
        partitions: 2,
        compacted: false,
    };
    let (payments, inventory) = (
        format!("{prefix}commands.payments"),
        format!("{prefix}commands.inventory"),
    );
    for t in [&payments, &inventory] {
        ensure_topic(&brokers, t, spec).await.unwrap();
    }
    let sender = Arc::new(CommandSender::new(&brokers, codec.clone(), &prefix).unwrap());
    let addr = serve(
        sender,
        GatewayConfig::new("127.0.0.1:0".parse().unwrap(), authenticator()),
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/commands/");

    let saga_steps = [
        (
            "commands.payments",
            json!({"payload": {"RefundPayment": {"payment_id": "pay-o-1",
            "order_id": "o-1", "amount_cents": 1000, "currency": "EUR", "reason": "x"}}}),
        ),
        (
            "commands.payments",
            json!({"payload": {"AuthorizePayment": {"payment_id": "pay-o-1",
            "order_id": "o-1", "user_id": "u-1", "amount_cents": 1000, "currency": "EUR"}}}),
        ),
        (
            "commands.payments",
            json!({"payload": {"CapturePayment": {"payment_id": "pay-o-1",
            "order_id": "o-1", "authorization_code": "a", "amount_cents": 1000, "currency": "EUR"}}}),
        ),
        (
            "commands.inventory",
            json!({"payload": {"ReleaseStock": {"order_id": "o-1",
            "reason": "CANCELLED"}}}),
        ),
        (
            "commands.inventory",
            json!({"payload": {"CommitStock": {"order_id": "o-1",
            "payment_id": "pay-o-1"}}}),
        ),
        (
            "commands.inventory",
            json!({"payload": {"ReserveStock": {"order_id": "o-1",
            "items": [{"product_id": "p-1", "quantity": 1}]}}}),
        ),
    ];
    let user = token("u-1", &[]);
    let admin_token = token("boss", &["admin"]);
    for (topic, body) in &saga_steps {
        for (who, req) in [
            (
                "user",
                http.post(format!("{url}{topic}")).bearer_auth(&user),
            ),
            (
                "admin token",
                http.post(format!("{url}{topic}")).bearer_auth(&admin_token),
            ),
            (
                "admin key",
                http.post(format!("{url}{topic}"))
                    .header("x-api-key", ADMIN_KEY),
            ),
        ] {
            let resp = req.json(body).send().await.unwrap();
            assert_eq!(resp.status(), 403, "{who}: {body}");
            let answer: Value = resp.json().await.unwrap();
            assert!(
                answer["error"].as_str().unwrap().contains("internal"),
                "{answer}"
            );
        }
    }
    let restock = json!({"payload": {"RestockProduct": {"product_id": "p-1", "quantity": 5}}});
    let resp = http
        .post(format!("{url}commands.inventory"))
        .bearer_auth(&user)
        .json(&restock)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(end_offset(&brokers, &payments), 0, "nothing on {payments}");
    assert_eq!(
        end_offset(&brokers, &inventory),
        0,
        "nothing on {inventory}"
    );

    // The admin restocks; the internal service refunds, and the record is the refund sent.
    let resp = http
        .post(format!("{url}commands.inventory"))
        .header("x-api-key", ADMIN_KEY)
        .json(&restock)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = http
        .post(format!("{url}commands.payments"))
        .header("x-api-key", INTERNAL_KEY)
        .json(&saga_steps[0].1)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let (p, o) = (
        body["partition"].as_i64().unwrap() as i32,
        body["offset"].as_i64().unwrap(),
    );
    let (_, bytes) = tokio::task::spawn_blocking({
        let (b, t) = (brokers.clone(), payments.clone());
        move || record_at(&b, &t, p, o)
    })
    .await
    .unwrap();
    let env: Envelope<PaymentCommand> = codec.decode(&bytes).await.unwrap();
    assert!(matches!(env.payload, PaymentCommand::RefundPayment(_)));
    assert_eq!(end_offset(&brokers, &payments), 1);
    assert_eq!(end_offset(&brokers, &inventory), 1);
    reg.shutdown().await;
}

/// With the broker unreachable a request ends at the timeout with 503 instead of hanging for
/// the producer's 30 s; past the in-flight cap the answer is an immediate 503; failed
/// authentications from one address are limited, while valid credentials still pass. No
/// broker is needed: the gateway's producer points at a closed port.
#[tokio::test(flavor = "multi_thread")]
async fn timeout_in_flight_cap_and_failed_authentications_per_ip() {
    let reg = tributary_registry::start_in_memory(
        "127.0.0.1:0".parse().unwrap(),
        Compatibility::Backward,
    )
    .await
    .unwrap();
    let codec = Arc::new(Codec::new(&format!("http://{}", reg.addr)));
    // Nothing listens on port 1 of loopback.
    let sender = Arc::new(CommandSender::new("127.0.0.1:1", codec, "gw-dead.").unwrap());
    let config = GatewayConfig {
        request_timeout: Duration::from_secs(2),
        max_in_flight: 1,
        auth_failures_per_ip_per_minute: NonZeroU32::new(3).unwrap(),
        ..GatewayConfig::new("127.0.0.1:0".parse().unwrap(), authenticator())
    };
    let addr = serve(sender, config).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/commands/commands.orders");
    let user = token("u-1", &[]);

    let started = Instant::now();
    let slow = tokio::spawn({
        let (http, url, user) = (http.clone(), url.clone(), user.clone());
        async move {
            http.post(url)
                .bearer_auth(user)
                .json(&place_order("o-1", "u-1"))
                .send()
                .await
                .unwrap()
        }
    });
    // While the first waits on the broker, a second is over the cap of one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = http
        .post(&url)
        .bearer_auth(&user)
        .json(&place_order("o-2", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("in progress"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "refused at once"
    );

    let resp = slow.await.unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("no answer within"),
        "{body}"
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(6),
        "answered at the timeout, after {waited:?}"
    );

    // Three failed authentications are answered 401, the fourth 429; a valid token is still
    // authenticated (and then times out against the dead broker, so not a 401 or 429).
    for i in 0..3 {
        let resp = http
            .post(&url)
            .header("x-api-key", format!("guess-{i}-0123456789abcdefgh"))
            .json(&place_order("o-3", "u-1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "guess {i}");
    }
    let resp = http
        .post(&url)
        .header("x-api-key", INTERNAL_KEY.replace('0', "1"))
        .json(&place_order("o-3", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let resp = http
        .post(&url)
        .bearer_auth(&user)
        .json(&place_order("o-3", "u-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn command_ids_are_the_gateways_and_idempotency_keys_answer_duplicates() {
    let brokers = KAFKA_BROKERS.get();
    let reg = tributary_registry::start(RegistryConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        brokers: brokers.clone(),
        topic: unique_name("_schemas-gateway-ids"),
        max_body_bytes: 1 << 20,
        default_compatibility: Compatibility::Backward,
    })
    .await
    .unwrap();
    let codec = Arc::new(Codec::new(&format!("http://{}", reg.addr)));
    let prefix = format!("{}.", unique_name("gw-ids"));
    let orders_topic = format!("{prefix}commands.orders");
    let one = TopicSpec {
        partitions: 1,
        compacted: false,
    };
    ensure_topic(&brokers, &orders_topic, one).await.unwrap();
    let redis = redis::Client::open(REDIS_URL.get()).unwrap();
    let conn = redis::aio::ConnectionManager::new(redis).await.unwrap();
    let key_prefix = format!("{}:", unique_name("tributary-test"));
    let sender = Arc::new(CommandSender::new(&brokers, codec.clone(), &prefix).unwrap());
    let config = GatewayConfig {
        idempotency: Some(gateway::Idempotency {
            redis: conn.clone(),
            prefix: format!("{key_prefix}idempotency:"),
            ttl: Duration::from_secs(600),
        }),
        ..GatewayConfig::new("127.0.0.1:0".parse().unwrap(), authenticator())
    };
    let addr = serve(sender, config).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/commands/commands.orders");
    let (u1, u2) = (token("u-1", &[]), token("u-2", &[]));
    let post = |token: &str, body: &Value, key: Option<&str>| {
        let mut req = http.post(&url).bearer_auth(token).json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        req.send()
    };

    // A client-chosen id is refused, and nothing is written.
    let mut with_id = place_order("o-1", "u-1");
    with_id["id"] = json!("my-own-id");
    let resp = post(&u1, &with_id, None).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("Idempotency-Key"),
        "{body}"
    );
    assert_eq!(end_offset(&brokers, &orders_topic), 0);

    // Without a key, two identical requests are two commands with two server-made ids.
    let a: Value = post(&u1, &place_order("o-1", "u-1"), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b: Value = post(&u1, &place_order("o-1", "u-1"), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(a["command_id"], b["command_id"]);
    assert!(
        uuid::Uuid::parse_str(a["command_id"].as_str().unwrap()).is_ok(),
        "{a}"
    );
    assert_eq!(end_offset(&brokers, &orders_topic), 2);

    // With a key: the first is sent (202); its retry writes nothing and says it is a
    // duplicate of the first, with the first's id.
    let first = post(&u1, &place_order("o-2", "u-1"), Some("retry-key-1"))
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    let again = post(&u1, &place_order("o-2", "u-1"), Some("retry-key-1"))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["command_id"], first["command_id"]);
    assert_eq!(end_offset(&brokers, &orders_topic), 3);
    // The one record on the log carries the id the caller was given.
    let (key, bytes) = tokio::task::spawn_blocking({
        let (b, t) = (brokers.clone(), orders_topic.clone());
        move || record_at(&b, &t, 0, 2)
    })
    .await
    .unwrap();
    assert_eq!(key, "o-2");
    let env: Envelope<OrderCommand> = codec.decode(&bytes).await.unwrap();
    assert_eq!(env.id, first["command_id"].as_str().unwrap());

    // The same key with another body is a client bug: 422, nothing written.
    let other = post(&u1, &place_order("o-3", "u-1"), Some("retry-key-1"))
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    // Keys are per principal: u-2's identical key is its own, and is sent.
    let theirs = post(&u2, &place_order("o-2", "u-2"), Some("retry-key-1"))
        .await
        .unwrap();
    assert_eq!(theirs.status(), 202);
    // A key that is not a plain header value of at most 256 bytes is refused.
    let long = "k".repeat(300);
    let resp = post(&u1, &place_order("o-4", "u-1"), Some(&long))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(end_offset(&brokers, &orders_topic), 4);
}
