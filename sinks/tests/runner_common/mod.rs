//! Shared by the runner, PostgreSQL and Redis tests: unique topics on the real broker, encoded
//! domain events, a sink running in the background, polling with deadlines and reading the DLQ.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tributary_runtime::config::{KAFKA_BROKERS, SCHEMA_REGISTRY_URL};
use tributary_runtime::kafka::{
    client_config, close_consumer, ensure_topic, unique_name, TopicSpec,
};
use tributary_schemas::types::*;
use tributary_schemas::{AvroRecord, Codec};
use tributary_sinks::change::ViewWriter;
use tributary_sinks::metrics::{Metrics, SinkMetrics};
use tributary_sinks::runner::{EventStream, Projection, Sink, SinkConfig, SourceTopic};

pub fn codec() -> Arc<Codec> {
    Arc::new(Codec::new(&SCHEMA_REGISTRY_URL.get()))
}

/// A fresh topic per stream, named after it, each with `partitions` partitions.
pub async fn topics(tag: &str, streams: &[EventStream], partitions: i32) -> Vec<SourceTopic> {
    let mut out = Vec::new();
    for s in streams {
        let topic = unique_name(&format!("test-{tag}-{}", s.topic()));
        ensure_topic(
            &KAFKA_BROKERS.get(),
            &topic,
            TopicSpec {
                partitions,
                compacted: false,
            },
        )
        .await
        .expect("topic created");
        out.push(SourceTopic { topic, stream: *s });
    }
    out
}

pub fn topic_of(sources: &[SourceTopic], stream: EventStream) -> String {
    sources
        .iter()
        .find(|s| s.stream == stream)
        .map(|s| s.topic.clone())
        .expect("stream has a topic")
}

/// One record to produce: the stream, the key and the encoded value (`None`: tombstone).
#[derive(Clone, Debug)]
pub struct Rec {
    pub stream: EventStream,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

pub async fn encode<T: AvroRecord>(codec: &Codec, stream: EventStream, key: &str, e: &T) -> Rec {
    Rec {
        stream,
        key: key.to_string(),
        value: Some(codec.encode(e).await.expect("event encodes")),
    }
}

pub fn producer() -> FutureProducer {
    client_config(&KAFKA_BROKERS.get())
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Produces `records` in order, each awaited (so per-key order is the given order).
pub async fn produce(sources: &[SourceTopic], records: &[Rec]) {
    let p = producer();
    for r in records {
        let topic = topic_of(sources, r.stream);
        let mut rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).key(&r.key);
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        p.send(rec, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("record produced");
    }
}

pub fn sink_config(name: &str, sources: &[SourceTopic]) -> SinkConfig {
    let mut cfg = SinkConfig::new(name);
    cfg.brokers = KAFKA_BROKERS.get();
    cfg.group_id = unique_name(&format!("test-sink-{name}"));
    cfg.sources = sources.to_vec();
    cfg.batch_max_records = 50;
    cfg.batch_linger = Duration::from_millis(50);
    cfg.retry_initial = Duration::from_millis(50);
    cfg.retry_max = Duration::from_millis(500);
    cfg.write_timeout = Duration::from_secs(5);
    cfg.close_timeout = Duration::from_secs(5);
    cfg
}

/// A sink running in the background.
pub struct Running {
    pub metrics: SinkMetrics,
    pub registry: prometheus::Registry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub fn start(
        config: SinkConfig,
        projection: Arc<dyn Projection>,
        writer: Arc<dyn ViewWriter>,
    ) -> Running {
        Self::start_with_codec(config, codec(), projection, writer)
    }

    /// [`Running::start`] with a codec of the test's choosing (e.g. through a [`Proxy`]).
    pub fn start_with_codec(
        config: SinkConfig,
        codec: Arc<Codec>,
        projection: Arc<dyn Projection>,
        writer: Arc<dyn ViewWriter>,
    ) -> Running {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).expect("metrics register");
        let sink = Sink::new(config, codec, projection, writer, &metrics);
        let handle = sink.metrics().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = tokio_util::sync::CancellationToken::new();
            let cancel = stop.clone();
            // Sent or dropped, the sender stops the sink.
            tokio::spawn(async move {
                let _ = rx.await;
                cancel.cancel();
            });
            sink.run(stop).await.expect("sink runs");
        });
        Running {
            metrics: handle,
            registry,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Asks the sink to stop and waits for it (bounded).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("sink stops within 30 s")
                .expect("sink task did not panic");
        }
    }

    /// The value of a metric sample in the exposition text, e.g.
    /// `tributary_sink_changes_stale_total{component_id="pg",component_kind="sink"}`.
    pub fn sample(&self, name: &str) -> Option<f64> {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// Polls `check` until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A dead letter as read back.
#[derive(Debug, Clone)]
pub struct Letter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Reads `n` records of `topic` (partition 0) from the beginning, failing after `within`.
pub fn read_topic(topic: &str, n: usize, within: Duration) -> Vec<Letter> {
    let consumer: BaseConsumer = client_config(&KAFKA_BROKERS.get())
        .set("group.id", unique_name("test-dlq-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers.insert(
                        hd.key.to_string(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(Letter {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    close_consumer(&consumer, Duration::from_secs(5));
    out
}

// ---- domain events ----

pub const T0: i64 = 1_764_000_000_000;

pub fn env<P>(aggregate: &str, seq: i64, payload: impl Into<P>) -> Envelope<P> {
    let mut e = Envelope::new(aggregate, format!("corr-{aggregate}"), payload).with_sequence(seq);
    e.id = format!("{aggregate}-{seq}");
    e.timestamp = T0 + seq * 1000;
    e
}

pub fn order_placed(order: &str, user: &str, seq: i64, total: i64) -> OrderEventEnvelope {
    env(
        order,
        seq,
        OrderPlaced {
            order_id: order.into(),
            user_id: user.into(),
            lines: vec![
                OrderLine {
                    product_id: "p1".into(),
                    quantity: 1,
                    unit_price_cents: total / 2,
                },
                OrderLine {
                    product_id: "p2".into(),
                    quantity: 1,
                    unit_price_cents: total - total / 2,
                },
            ],
            currency: "EUR".into(),
            total_cents: total,
        },
    )
}

pub fn order_confirmed(order: &str, user: &str, seq: i64, total: i64) -> OrderEventEnvelope {
    env(
        order,
        seq,
        OrderConfirmed {
            order_id: order.into(),
            user_id: user.into(),
            payment_id: format!("pay-{order}"),
            total_cents: total,
            currency: "EUR".into(),
        },
    )
}

pub fn order_cancelled(order: &str, user: &str, seq: i64) -> OrderEventEnvelope {
    env(
        order,
        seq,
        OrderCancelled {
            order_id: order.into(),
            user_id: user.into(),
            reason: CancelReason::StockOut,
            detail: Some("p2 is out".into()),
        },
    )
}

pub fn user_registered(user: &str, seq: i64) -> UserEventEnvelope {
    env(
        user,
        seq,
        UserRegistered {
            user_id: user.into(),
            email: format!("{user}@example.com"),
            display_name: format!("User {user}"),
            locale: Some("en-GB".into()),
        },
    )
}

pub fn profile_updated(user: &str, seq: i64, name: &str) -> UserEventEnvelope {
    env(
        user,
        seq,
        ProfileUpdated {
            user_id: user.into(),
            display_name: name.into(),
            avatar_url: Some(format!("https://img.example.com/{user}.png")),
            locale: Some("de-DE".into()),
        },
    )
}

pub fn preferences_updated(user: &str, seq: i64) -> UserEventEnvelope {
    env(
        user,
        seq,
        PreferencesUpdated {
            user_id: user.into(),
            preferences: Preferences {
                preferred_channel: NotificationChannel::Sms,
                marketing_opt_in: true,
                preferred_currency: "EUR".into(),
            },
        },
    )
}

pub fn session_started(user: &str, session: &str, seq: i64) -> UserEventEnvelope {
    env(
        user,
        seq,
        SessionStarted {
            session_id: session.into(),
            user_id: user.into(),
            user_agent: Some("test-agent".into()),
        },
    )
}

pub fn session_ended(user: &str, session: &str, seq: i64) -> UserEventEnvelope {
    env(
        user,
        seq,
        SessionEnded {
            session_id: session.into(),
            user_id: user.into(),
            reason: SessionEndReason::Logout,
        },
    )
}

pub fn payment_authorized(
    payment: &str,
    order: &str,
    seq: i64,
    amount: i64,
) -> PaymentEventEnvelope {
    env(
        payment,
        seq,
        PaymentAuthorized {
            payment_id: payment.into(),
            order_id: order.into(),
            user_id: "u1".into(),
            amount_cents: amount,
            currency: "EUR".into(),
            authorization_code: format!("auth-{payment}"),
        },
    )
}

pub fn payment_captured(payment: &str, order: &str, seq: i64, amount: i64) -> PaymentEventEnvelope {
    env(
        payment,
        seq,
        PaymentCaptured {
            payment_id: payment.into(),
            order_id: order.into(),
            authorization_code: format!("auth-{payment}"),
            amount_cents: amount,
            currency: "EUR".into(),
        },
    )
}

pub fn payment_refunded(payment: &str, order: &str, seq: i64, amount: i64) -> PaymentEventEnvelope {
    env(
        payment,
        seq,
        PaymentRefunded {
            payment_id: payment.into(),
            order_id: order.into(),
            amount_cents: amount,
            currency: "EUR".into(),
            reason: Some("damaged".into()),
        },
    )
}

pub fn revenue_window(seq: i64, orders: i64, revenue: i64) -> AnalyticsEventEnvelope {
    env(
        "revenue-EUR",
        seq,
        RevenueWindow {
            window_start: T0,
            window_end: T0 + 60_000,
            currency: "EUR".into(),
            order_count: orders,
            revenue_cents: revenue,
        },
    )
}

pub fn product_added(product: &str, seq: i64, stock: i32) -> InventoryEventEnvelope {
    env(
        product,
        seq,
        ProductAdded {
            product_id: product.into(),
            sku: format!("SKU-{product}"),
            name: format!("Product {product}"),
            description: Some("a thing".into()),
            unit_price_cents: 1250,
            currency: "EUR".into(),
            initial_stock: stock,
        },
    )
}

pub fn product_restocked(product: &str, seq: i64, available: i32) -> InventoryEventEnvelope {
    env(
        product,
        seq,
        ProductRestocked {
            product_id: product.into(),
            quantity: 5,
            available,
            reserved: 2,
        },
    )
}

/// Interleaves per-aggregate sequences at random, keeping each one's order: the shuffles a
/// multi-partition topic can produce.
pub fn shuffle_keeping_key_order(records: &[Rec], seed: u64) -> Vec<Rec> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut queues: Vec<(String, std::collections::VecDeque<Rec>)> = Vec::new();
    for r in records {
        let id = format!("{:?}/{}", r.stream, r.key);
        match queues.iter_mut().find(|(k, _)| *k == id) {
            Some((_, q)) => q.push_back(r.clone()),
            None => queues.push((id, std::collections::VecDeque::from([r.clone()]))),
        }
    }
    let mut out = Vec::new();
    while !queues.is_empty() {
        let i = rng.random_range(0..queues.len());
        if let Some(r) = queues[i].1.pop_front() {
            out.push(r);
        }
        if queues[i].1.is_empty() {
            queues.remove(i);
        }
    }
    out
}

/// Waits until group `group` has committed every record of `sources` (committed offset = high
/// watermark on every partition): the sink has applied all that was produced.
pub async fn wait_caught_up(group: &str, sources: &[SourceTopic], within: Duration) {
    let consumer: BaseConsumer = client_config(&KAFKA_BROKERS.get())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let deadline = Instant::now() + within;
    let timeout = Duration::from_secs(5);
    loop {
        let mut done = true;
        let mut tpl = TopicPartitionList::new();
        let mut highs = Vec::new();
        for s in sources {
            let md = consumer
                .fetch_metadata(Some(&s.topic), timeout)
                .expect("metadata");
            for t in md.topics() {
                for p in t.partitions() {
                    let (_, high) = consumer
                        .fetch_watermarks(&s.topic, p.id(), timeout)
                        .expect("watermarks");
                    highs.push((s.topic.clone(), p.id(), high));
                    tpl.add_partition(&s.topic, p.id());
                }
            }
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .expect("committed offsets");
        for (topic, partition, high) in highs {
            if high == 0 {
                continue;
            }
            let at = committed
                .find_partition(&topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            if at != Some(high) {
                done = false;
            }
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sink group {group} did not catch up in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    close_consumer(&consumer, Duration::from_secs(5));
}

/// A TCP forwarder in front of a real server that a test can take down and bring back: while
/// down it cuts every open connection and closes new ones at once, which clients see exactly
/// like a server that went away.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = target.to_string();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap_or_else(|p| p.into_inner()).push(task);
            }
        });
        Proxy {
            addr,
            up,
            conns,
            accept,
        }
    }

    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

/// The committed offset of every partition of `sources` for `group` (`-1`: nothing committed).
pub fn committed(group: &str, sources: &[SourceTopic]) -> Vec<(String, i32, i64)> {
    let consumer: BaseConsumer = client_config(&KAFKA_BROKERS.get())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    for s in sources {
        let md = consumer
            .fetch_metadata(Some(&s.topic), timeout)
            .expect("metadata");
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition(&s.topic, p.id());
            }
        }
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .expect("committed offsets");
    let out = committed
        .elements()
        .iter()
        .map(|e| {
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            (e.topic().to_string(), e.partition(), at)
        })
        .collect();
    close_consumer(&consumer, Duration::from_secs(5));
    out
}

/// The sum of the committed offsets of `group` over `sources` (nothing committed counts 0).
pub fn committed_total(group: &str, sources: &[SourceTopic]) -> i64 {
    committed(group, sources)
        .iter()
        .map(|(_, _, o)| (*o).max(0))
        .sum()
}

/// The members of consumer group `group` as `(member id, client id)`, and the group's state.
pub fn group_members(group: &str) -> (String, Vec<String>) {
    let consumer: BaseConsumer = client_config(&KAFKA_BROKERS.get())
        .create()
        .expect("consumer");
    let list = consumer
        .fetch_group_list(Some(group), Duration::from_secs(5))
        .expect("group list");
    let out = list
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .map(|g| {
            (
                g.state().to_string(),
                g.members().iter().map(|m| m.id().to_string()).collect(),
            )
        })
        .unwrap_or_default();
    close_consumer(&consumer, Duration::from_secs(5));
    out
}

/// Every record of `topic` (partition 0) from the beginning, read until nothing more arrives
/// for `quiet`, at most `within`.
pub fn read_all(topic: &str, quiet: Duration, within: Duration) -> Vec<Letter> {
    let consumer: BaseConsumer = client_config(&KAFKA_BROKERS.get())
        .set("group.id", unique_name("test-dlq-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + within;
    let mut last = Instant::now();
    let mut out = Vec::new();
    while Instant::now() < deadline && last.elapsed() < quiet {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            last = Instant::now();
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers.insert(
                        hd.key.to_string(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(Letter {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    close_consumer(&consumer, Duration::from_secs(5));
    out
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

/// A redis-server of the test's own on a free port, without persistence, so that faults
/// (maxmemory, passwords) never touch the shared one. Killed on drop.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts one with extra `args` (e.g. `["--requirepass", "x"]`).
    pub async fn start(args: &[&str]) -> OwnRedis {
        let port = free_port();
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
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (STACK.md: Debian package redis-server)");
        let server = OwnRedis {
            port,
            child: Some(child),
        };
        eventually(
            "the test's redis-server to accept connections",
            Duration::from_secs(30),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        server
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// 8 KB of random alphanumerics: an id no store keys by, and that PostgreSQL cannot compress
/// under its btree limit.
pub fn huge_id(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let tail: String = (0..8 * 1024 - prefix.len())
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect();
    format!("{prefix}{tail}")
}
