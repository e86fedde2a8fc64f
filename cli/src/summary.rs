//! `tributary summary`: what the log holds and what each store shows of it.
//!
//! Records per topic (and per dead-letter topic), each sink group's lag, and the size of every
//! view: rows per PostgreSQL table, documents per MongoDB collection, keys per Redis view and
//! documents per Elasticsearch alias. `--wait` polls until every processor and sink group has
//! caught up with its input topics (twice in a row, so that what a processor wrote last is
//! counted), which is how the demo knows the views are complete. `--invariants` then reads the
//! event topics from the beginning and checks the saga's invariants; a broken one fails the run.
//! With `--topic-prefix P`, all of it is about the pipeline started with that prefix: its
//! topics, its processors' and sinks' groups. The stores and their flags come from the list of
//! stores (`tributary_sinks::stores`), as for every command that touches stores.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tributary_processors::invariants::{self, Report};
use tributary_processors::{DomainApp, DomainConfig, Topics};
use tributary_runtime::kafka::client_config;
use tributary_runtime::redact;
use tributary_schemas::domain::{InventoryEvent, NotificationEvent, OrderEvent, PaymentEvent};
use tributary_schemas::types::{Envelope, TopicPayload, ALL_TOPICS};
use tributary_schemas::Codec;
use tributary_sinks::growth;
use tributary_sinks::store::Settings;
use tributary_sinks::stores;

use crate::store_args::StoreArgs;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(ClapArgs)]
pub struct Args {
    /// Wait up to this many seconds for every processor and sink group to catch up first.
    #[arg(long)]
    wait: Option<u64>,
    /// Read the event topics and check the order saga's invariants; exit 1 if one is broken.
    #[arg(long)]
    invariants: bool,
    /// Time orders placed from this instant on (ms since the epoch; default: all of them).
    #[arg(long, default_value_t = 0)]
    since_ms: i64,
    #[command(flatten)]
    stores: StoreArgs,
}

/// Low and high watermark per partition.
type Watermarks = BTreeMap<i32, (i64, i64)>;

/// Records held per partition of `topic` (high − low watermark), empty when it does not exist.
fn held(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Watermarks> {
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("metadata of {topic}"))?;
    let mut out = BTreeMap::new();
    for t in md.topics() {
        if t.error().is_some() {
            continue;
        }
        for p in t.partitions() {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p.id(), TIMEOUT)
                .with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
            out.insert(p.id(), (lo, hi));
        }
    }
    Ok(out)
}

/// Records of `inputs` not yet committed by `group`.
fn lag(brokers: &str, group: &str, events: &[(String, Watermarks)]) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = client_config(brokers).set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for (topic, parts) in events {
        for p in parts.keys() {
            tpl.add_partition(topic, *p);
        }
    }
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .with_context(|| format!("committed offsets of group {group}"))?;
    let mut total = 0;
    for e in committed.elements() {
        let (lo, hi) = events
            .iter()
            .find(|(t, _)| *t == e.topic())
            .and_then(|(_, parts)| parts.get(&e.partition()))
            .copied()
            .unwrap_or((0, 0));
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => lo,
        };
        total += (hi - at).max(0);
    }
    // This consumer never joined the group nor fetched: dropping it does not stall.
    Ok(total)
}

/// The size of every view of every listed store, connected without changing anything: exact
/// rows per PostgreSQL table, documents per MongoDB collection, keys per Redis view, documents
/// per Elasticsearch alias. A store that cannot be read gives one line with its (masked)
/// address and the error.
async fn views(settings: &Settings) -> Vec<(String, String, Result<i64, String>)> {
    let mut out = Vec::new();
    for (name, sizes) in growth::view_sizes(stores::all(), settings).await {
        match sizes {
            Ok(sizes) => {
                for s in sizes {
                    if let Some(n) = s.entities {
                        out.push((name.to_string(), s.view, Ok(n)));
                    }
                }
            }
            Err(e) => {
                let address = stores::find(stores::all(), name)
                    .and_then(|store| store.options().iter().find(|o| o.address))
                    .and_then(|o| settings.get(o.name))
                    .map(redact::url)
                    .unwrap_or_default();
                out.push((name.to_string(), address, Err(e)));
            }
        }
    }
    out
}

/// Every consumer group of the pipeline started with `topic_prefix`, with the topics it
/// consumes: the domain processors' applications, then the sinks (each on the event topics its
/// projection reads).
fn groups(topic_prefix: &str) -> Vec<(String, Vec<String>)> {
    let mut cfg = DomainConfig::local();
    cfg.topics = Topics::new(topic_prefix);
    let mut out: Vec<(String, Vec<String>)> = DomainApp::ALL
        .iter()
        .map(|app| (app.application_id(&cfg), app.inputs(&cfg.topics)))
        .collect();
    for store in stores::all() {
        let topics = stores::sources(store.projection().as_ref(), topic_prefix)
            .into_iter()
            .map(|s| s.topic)
            .collect();
        out.push((stores::sink_group(topic_prefix, store.name()), topics));
    }
    out
}

/// Records held per topic, and records behind per consumer group.
type Poll = (Vec<(String, Watermarks)>, Vec<(String, i64)>);

/// Records held per pipeline topic, and each group's lag.
fn poll(brokers: &str, topic_prefix: &str) -> anyhow::Result<Poll> {
    let consumer: BaseConsumer = client_config(brokers).create()?;
    let mut topics = Vec::new();
    for (topic, _) in ALL_TOPICS {
        let topic = format!("{topic_prefix}{topic}");
        let marks = held(&consumer, &topic)?;
        topics.push((topic, marks));
    }
    let mut lags = Vec::new();
    for (group, inputs) in groups(topic_prefix) {
        let mut marks = Vec::new();
        for t in inputs {
            let m = held(&consumer, &t)?;
            marks.push((t, m));
        }
        lags.push((group.clone(), lag(brokers, &group, &marks)?));
    }
    Ok((topics, lags))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let brokers = args.stores.brokers.clone();
    let prefix = args.stores.topic_prefix.clone();
    let deadline = args.wait.map(|s| Instant::now() + Duration::from_secs(s));
    let mut quiet_polls = 0;
    let mut last_report = Instant::now();
    let (topics, lags) = loop {
        let (b, p) = (brokers.clone(), prefix.clone());
        let (topics, lags) = tokio::task::spawn_blocking(move || poll(&b, &p)).await??;
        let behind: i64 = lags.iter().map(|(_, l)| *l).sum();
        quiet_polls = if behind == 0 { quiet_polls + 1 } else { 0 };
        match deadline {
            Some(d) if quiet_polls < 2 && Instant::now() < d => {
                if behind > 0 && last_report.elapsed() >= Duration::from_secs(5) {
                    last_report = Instant::now();
                    let busiest: Vec<String> = lags
                        .iter()
                        .filter(|(_, l)| *l > 0)
                        .map(|(g, l)| format!("{g} {l}"))
                        .collect();
                    eprintln!("waiting: {behind} records behind ({})", busiest.join(", "));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => break (topics, lags),
        }
    };

    println!("topics (records held)");
    let consumer: BaseConsumer = client_config(&brokers).create()?;
    for (topic, parts) in &topics {
        let n: i64 = parts.values().map(|(lo, hi)| hi - lo).sum();
        let dlq_topic = tributary_runtime::dlq::dlq_topic(topic);
        let dlq: i64 = held(&consumer, &dlq_topic)?
            .values()
            .map(|(lo, hi)| hi - lo)
            .sum();
        println!("  {topic:<24} {n:>9}   dlq {dlq}");
    }
    println!("consumer groups (records behind)");
    for (group, lag) in &lags {
        println!("  {group:<28} {lag:>9}");
    }
    println!("views");
    let mut failed = false;
    for (store, view, n) in views(args.stores.settings()).await {
        match n {
            Ok(n) => println!("  {store:<14} {view:<32} {n:>9}"),
            Err(e) => {
                failed = true;
                println!("  {store:<14} {view:<32} unavailable: {e}");
            }
        }
    }
    if args.invariants {
        let (report, timing) = check_invariants(
            &brokers,
            &args.stores.registry.url(),
            &prefix,
            args.since_ms,
        )
        .await?;
        println!("orders");
        println!("  placed                     {:>9}", report.placed);
        println!("  confirmed                  {:>9}", report.confirmed);
        for (reason, n) in &report.cancelled {
            let what = format!("cancelled ({reason})");
            println!("  {what:<27}{n:>9}");
        }
        let ended = timing.latencies_ms.len();
        let rate = if timing.span_ms > 0 {
            ended as f64 * 1000.0 / timing.span_ms as f64
        } else {
            0.0
        };
        println!(
            "  placed → outcome latency   p50 {} ms, p95 {} ms, p99 {} ms; {ended} orders in {:.1} s ({rate:.0} orders/s)",
            timing.percentile(0.50),
            timing.percentile(0.95),
            timing.percentile(0.99),
            timing.span_ms as f64 / 1000.0,
        );
        for (stage, v) in &timing.stages {
            println!(
                "    {stage:<27}p50 {} ms, p99 {} ms ({} orders)",
                percentile(v, 0.50),
                percentile(v, 0.99),
                v.len()
            );
        }
        println!("invariants");
        if report.violations.is_empty() {
            println!("  every order final, stock conserved, captured iff confirmed, refunded iff compensated, one notification per outcome: hold");
        } else {
            failed = true;
            println!("  {} violations; the first:", report.violations.len());
            for v in report.violations.iter().take(20) {
                println!("    {v}");
            }
        }
    }
    let behind: i64 = lags.iter().map(|(_, l)| *l).sum();
    if args.wait.is_some() && behind > 0 {
        eprintln!("the pipeline is still {behind} records behind");
        return Ok(ExitCode::from(1));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads `topic` from its beginning to its current end and decodes every record; an undecodable
/// record is an error naming its position.
async fn read_all<P: TopicPayload>(
    brokers: &str,
    codec: &Codec,
    topic: &str,
) -> anyhow::Result<Vec<Envelope<P>>> {
    let (b, t) = (brokers.to_string(), topic.to_string());
    let raw = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64, Vec<u8>)>> {
        use rdkafka::message::Message;
        let consumer: BaseConsumer = client_config(&b)
            .set("group.id", "tributary-summary")
            .set("enable.auto.commit", "false")
            .create()?;
        let marks = held(&consumer, &t)?;
        let mut tpl = TopicPartitionList::new();
        let mut left = 0;
        for (p, (lo, hi)) in &marks {
            if hi > lo {
                tpl.add_partition_offset(&t, *p, Offset::Offset(*lo))?;
                left += 1;
            }
        }
        let mut out = Vec::new();
        if left == 0 {
            return Ok(out);
        }
        consumer.assign(&tpl)?;
        let mut done = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while done.len() < left {
            anyhow::ensure!(Instant::now() < deadline, "reading {t} timed out");
            match consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(e)) => return Err(e).with_context(|| format!("reading {t}")),
                Some(Ok(m)) => {
                    let hi = marks.get(&m.partition()).map(|x| x.1).unwrap_or(0);
                    if m.offset() + 1 >= hi {
                        done.insert(m.partition(), ());
                    }
                    if let Some(v) = m.payload() {
                        out.push((m.partition(), m.offset(), v.to_vec()));
                    }
                }
            }
        }
        Ok(out)
    })
    .await??;
    let mut events = Vec::with_capacity(raw.len());
    for (p, o, bytes) in raw {
        events.push(
            codec
                .decode::<Envelope<P>>(&bytes)
                .await
                .with_context(|| format!("decoding {topic}/{p}@{o}"))?,
        );
    }
    Ok(events)
}

/// Order flow timing over a run: how long from `OrderPlaced` to the order's outcome.
struct Timing {
    /// Outcome latencies in milliseconds, sorted.
    latencies_ms: Vec<i64>,
    /// From the first `OrderPlaced` to the last outcome.
    span_ms: i64,
    /// Where an order's time goes, stage by stage (each sorted, in milliseconds): placed →
    /// inventory's answer, → payments' answer, → the outcome. Each stage spans a few hops
    /// (a saga step on a command topic, the answering app, its event back to the saga).
    stages: Vec<(&'static str, Vec<i64>)>,
}

impl Timing {
    fn of(
        orders: &[Envelope<OrderEvent>],
        inventory: &[Envelope<InventoryEvent>],
        payments: &[Envelope<PaymentEvent>],
        since_ms: i64,
    ) -> Timing {
        let mut placed: BTreeMap<&str, i64> = BTreeMap::new();
        let mut done: BTreeMap<&str, i64> = BTreeMap::new();
        for e in orders {
            match &e.payload {
                OrderEvent::OrderPlaced(p) if e.timestamp >= since_ms => {
                    placed.entry(p.order_id.as_str()).or_insert(e.timestamp);
                }
                OrderEvent::OrderPlaced(_) => {}
                OrderEvent::OrderConfirmed(c) => {
                    done.entry(c.order_id.as_str()).or_insert(e.timestamp);
                }
                OrderEvent::OrderCancelled(c) => {
                    done.entry(c.order_id.as_str()).or_insert(e.timestamp);
                }
            }
        }
        let mut latencies_ms: Vec<i64> = done
            .iter()
            .filter_map(|(id, end)| placed.get(id).map(|start| (end - start).max(0)))
            .collect();
        latencies_ms.sort_unstable();
        // The first answer of each kind per order: a reservation or its failure, an
        // authorization or a decline.
        let mut stocked: BTreeMap<&str, i64> = BTreeMap::new();
        for e in inventory {
            let id = match &e.payload {
                InventoryEvent::StockReserved(r) => r.order_id.as_str(),
                InventoryEvent::StockReservationFailed(f) => f.order_id.as_str(),
                _ => continue,
            };
            stocked.entry(id).or_insert(e.timestamp);
        }
        let mut paid: BTreeMap<&str, i64> = BTreeMap::new();
        for e in payments {
            let id = match &e.payload {
                PaymentEvent::PaymentAuthorized(a) => a.order_id.as_str(),
                PaymentEvent::PaymentDeclined(d) => d.order_id.as_str(),
                _ => continue,
            };
            paid.entry(id).or_insert(e.timestamp);
        }
        let between = |from: &BTreeMap<&str, i64>, to: &BTreeMap<&str, i64>| {
            let mut v: Vec<i64> = from
                .iter()
                .filter_map(|(id, t)| to.get(id).map(|u| (u - t).max(0)))
                .collect();
            v.sort_unstable();
            v
        };
        let stages = vec![
            ("placed → stock answer", between(&placed, &stocked)),
            ("stock → payment answer", between(&stocked, &paid)),
            ("payment answer → outcome", between(&paid, &done)),
        ];
        let first = placed.values().min().copied().unwrap_or(0);
        let last = done
            .iter()
            .filter(|(id, _)| placed.contains_key(*id))
            .map(|(_, t)| *t)
            .max()
            .unwrap_or(first);
        Timing {
            latencies_ms,
            span_ms: (last - first).max(0),
            stages,
        }
    }

    fn percentile(&self, q: f64) -> i64 {
        percentile(&self.latencies_ms, q)
    }
}

/// The `q` quantile of sorted values (0 when there are none).
fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn check_invariants(
    brokers: &str,
    registry: &str,
    topic_prefix: &str,
    since_ms: i64,
) -> anyhow::Result<(Report, Timing)> {
    let codec = Codec::new(registry);
    let topic = |name: &str| format!("{topic_prefix}{name}");
    let orders = read_all::<OrderEvent>(brokers, &codec, &topic(OrderEvent::TOPIC)).await?;
    let inventory =
        read_all::<InventoryEvent>(brokers, &codec, &topic(InventoryEvent::TOPIC)).await?;
    let payments = read_all::<PaymentEvent>(brokers, &codec, &topic(PaymentEvent::TOPIC)).await?;
    let notifications =
        read_all::<NotificationEvent>(brokers, &codec, &topic(NotificationEvent::TOPIC)).await?;
    let report = invariants::check(&orders, &inventory, &payments, &notifications);
    let timing = Timing::of(&orders, &inventory, &payments, since_ms);
    Ok((report, timing))
}
