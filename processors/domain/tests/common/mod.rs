//! What the end-to-end tests share: a pipeline of domain apps on its own topic prefix, and
//! readers of its topics.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary_processors::invariants::{self, Outcome};
use tributary_processors::{DeclineRule, DomainApp, DomainConfig, Topics};
use tributary_producers::{Command, CommandSender};
use tributary_runtime::config::{KAFKA_BROKERS, SCHEMA_REGISTRY_URL};
use tributary_runtime::kafka::{client_config, close_consumer, unique_name};
use tributary_schemas::domain::*;
use tributary_schemas::types::{Envelope, TopicPayload};
use tributary_schemas::Codec;

pub const PARTITIONS: i32 = 3;
pub const DEADLINE: Duration = Duration::from_secs(120);

pub struct Pipeline {
    pub cfg: DomainConfig,
    pub codec: Arc<Codec>,
    pub sender: CommandSender,
    _state: tempfile::TempDir,
    running: Vec<(
        DomainApp,
        CancellationToken,
        JoinHandle<tributary_processors::Result<()>>,
    )>,
}

impl Pipeline {
    pub async fn new(name: &str, saga_timeout: Duration) -> Pipeline {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let state = tempfile::tempdir().expect("tempdir");
        let prefix = format!("{}.", unique_name(name));
        let cfg = DomainConfig {
            topics: Topics::new(&prefix),
            state_dir: state.path().to_path_buf(),
            partitions: PARTITIONS,
            saga_timeout,
            decline: DeclineRule::default(),
            brokers: KAFKA_BROKERS.get(),
            registry_url: SCHEMA_REGISTRY_URL.get(),
            ..DomainConfig::local()
        };
        cfg.topics
            .ensure(&cfg.brokers, cfg.partitions)
            .await
            .expect("topics");
        let codec = Arc::new(Codec::new(&SCHEMA_REGISTRY_URL.get()));
        let sender =
            CommandSender::new(&KAFKA_BROKERS.get(), codec.clone(), &prefix).expect("sender");
        Pipeline {
            cfg,
            codec,
            sender,
            _state: state,
            running: Vec::new(),
        }
    }

    pub fn start(&mut self, app: DomainApp) {
        let token = CancellationToken::new();
        let cfg = self.cfg.clone();
        let t = token.clone();
        let handle = tokio::spawn(async move { app.run(&cfg, None, t).await });
        self.running.push((app, token, handle));
    }

    /// Starts `app` with a kill switch at `point`; [`kill`](Self::kill) fires it.
    pub fn start_killable(
        &mut self,
        app: DomainApp,
        point: tributary_streams::KillPoint,
    ) -> CancellationToken {
        let token = CancellationToken::new();
        let kill = CancellationToken::new();
        let cfg = self.cfg.clone();
        let (t, k) = (token.clone(), kill.clone());
        let handle = tokio::spawn(async move { app.run_with_kill_switch(&cfg, t, k, point).await });
        self.running.push((app, token, handle));
        kill
    }

    /// Fires `kill` (from [`start_killable`](Self::start_killable)) and waits until `app` died
    /// at its kill point (its next commit), leaving what a `kill -9` there would leave.
    pub async fn kill(&mut self, app: DomainApp, kill: CancellationToken) {
        let i = self
            .running
            .iter()
            .position(|(a, _, _)| *a == app)
            .expect("app is running");
        let (_, _token, handle) = self.running.remove(i);
        kill.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("killed within 60 s");
    }

    pub async fn stop_all(&mut self) {
        for (app, token, handle) in self.running.drain(..) {
            token.cancel();
            let r = tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .unwrap_or_else(|_| panic!("{} stops within 30 s", app.name()))
                .expect("join");
            r.unwrap_or_else(|e| panic!("{} ran cleanly: {e}", app.name()));
        }
    }

    /// Stops one app cleanly (its last batch committed).
    pub async fn stop(&mut self, app: DomainApp) {
        let i = self
            .running
            .iter()
            .position(|(a, _, _)| *a == app)
            .expect("app is running");
        let (_, token, handle) = self.running.remove(i);
        token.cancel();
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("stops within 30 s")
            .expect("join")
            .expect("clean run");
    }

    /// Removes an app's local stores, so that its next start restores them from the changelogs.
    pub fn wipe_local_state(&self, app: DomainApp) {
        let dir = self.cfg.state_dir.join(app.application_id(&self.cfg));
        std::fs::remove_dir_all(&dir).expect("remove local state");
    }

    pub async fn send(&self, command: Command) {
        self.sender.send(&command).await.expect("command sent");
    }

    pub async fn add_product(&self, id: &str, price: i64, stock: i32) {
        let cmd = AddProduct {
            product_id: id.into(),
            sku: format!("SKU-{id}"),
            name: id.into(),
            description: None,
            unit_price_cents: price,
            currency: "EUR".into(),
            initial_stock: stock,
        };
        self.send(Command::Inventory(Envelope::new(id, unique_name("c"), cmd)))
            .await;
    }

    pub fn place_order(order_id: &str, user: &str, lines: &[(&str, i32)]) -> Command {
        let cmd = PlaceOrder {
            order_id: order_id.into(),
            user_id: user.into(),
            currency: "EUR".into(),
            lines: lines
                .iter()
                .map(|(p, q)| PlaceOrderLine {
                    product_id: p.to_string(),
                    quantity: *q,
                })
                .collect(),
        };
        Command::Orders(Envelope::new(order_id, unique_name("flow"), cmd))
    }

    pub fn reader<P: TopicPayload>(&self, topic: String) -> Reader<P> {
        Reader::new(topic, self.codec.clone())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // A failed assertion must not leave the apps running (and the runtime waiting on them).
        for (_, token, _) in &self.running {
            token.cancel();
        }
    }
}

/// Reads one topic from the beginning, decoding as it goes.
pub struct Reader<P> {
    consumer: BaseConsumer,
    codec: Arc<Codec>,
    events: Vec<Envelope<P>>,
    topic: String,
}

impl<P: TopicPayload> Reader<P> {
    pub fn new(topic: String, codec: Arc<Codec>) -> Self {
        let consumer: BaseConsumer = client_config(&KAFKA_BROKERS.get())
            .set("group.id", unique_name("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        let parts = if topic.ends_with("internal.inventory-ledger") {
            1
        } else {
            PARTITIONS
        };
        for p in 0..parts {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        Reader {
            consumer,
            codec,
            events: Vec::new(),
            topic,
        }
    }

    /// Reads what is there now (until a short quiet spell).
    pub async fn drain(&mut self) {
        loop {
            let msg = tokio::task::block_in_place(|| {
                self.consumer
                    .poll(Duration::from_millis(200))
                    .map(|m| m.map(|m| m.payload().map(<[u8]>::to_vec)))
            });
            match msg {
                None => return,
                Some(Err(e)) => panic!("reading {}: {e}", self.topic),
                Some(Ok(None)) => {}
                Some(Ok(Some(bytes))) => {
                    let env = self
                        .codec
                        .decode::<Envelope<P>>(&bytes)
                        .await
                        .unwrap_or_else(|e| panic!("decoding a record of {}: {e}", self.topic));
                    self.events.push(env);
                }
            }
        }
    }

    /// Reads until `done` holds for everything read, or panics at the deadline.
    pub async fn until(
        &mut self,
        what: &str,
        done: impl Fn(&[Envelope<P>]) -> bool,
    ) -> &[Envelope<P>] {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.drain().await;
            if done(&self.events) {
                return &self.events;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} on {}; read {} records",
                self.topic,
                self.events.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl<P> Drop for Reader<P> {
    fn drop(&mut self) {
        close_consumer(&self.consumer, Duration::from_secs(5));
    }
}

pub fn outcome_of(events: &[Envelope<OrderEvent>], order: &str) -> Option<Vec<Outcome>> {
    invariants::outcomes(events).get(order).cloned()
}

pub fn has_outcomes(events: &[Envelope<OrderEvent>], orders: &[&str]) -> bool {
    let o = invariants::outcomes(events);
    orders.iter().all(|id| o.contains_key(*id))
}

/// Last published (available, reserved) of each product.
pub fn levels(events: &[Envelope<InventoryEvent>]) -> BTreeMap<String, (i64, i32, i32)> {
    let mut m: BTreeMap<String, (i64, i32, i32)> = BTreeMap::new();
    for e in events {
        let (id, a, r) = match &e.payload {
            InventoryEvent::ProductAdded(p) => (&p.product_id, p.initial_stock, 0),
            InventoryEvent::ProductRestocked(p) => (&p.product_id, p.available, p.reserved),
            InventoryEvent::ProductStockChanged(p) => (&p.product_id, p.available, p.reserved),
            _ => continue,
        };
        let entry = m.entry(id.clone()).or_insert((e.sequence, a, r));
        if e.sequence >= entry.0 {
            *entry = (e.sequence, a, r);
        }
    }
    m
}

pub fn assert_no_violations(v: Vec<invariants::Violation>) {
    assert!(v.is_empty(), "invariant violations: {v:#?}");
}

/// A raw record's value and headers.
pub type RawRecord = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// Raw records of a one-partition topic, with their headers.
pub fn read_raw(topic: &str, want: usize) -> Vec<RawRecord> {
    use rdkafka::message::Headers;
    let c: BaseConsumer = client_config(&KAFKA_BROKERS.get())
        .set("group.id", unique_name("raw"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("raw reader");
    let partitions = tributary_runtime::kafka::partition_count(&c, topic, Duration::from_secs(10))
        .expect("metadata")
        .max(1);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    close_consumer(&c, Duration::from_secs(5));
    out
}
