//! Stateful throughput against the raw consume→produce ceiling on the same broker.
//!
//! ```sh
//! source stack/env.sh
//! cargo run --release -p tributary-streams --example bench            # 200 000 records
//! BENCH_RECORDS=50000 cargo run --release -p tributary-streams --example bench
//! ```
//!
//! Both runs read the same input (3 partitions, keyed words) from the start with a fresh group
//! and stop when every record has been processed and its output acknowledged. The stateful run
//! is a word count on the streams runtime: a store read and write per record, the changelog, and
//! a committed offset per batch. It prints both rates and their ratio (the goal is >= 0.5).

use std::time::{Duration, Instant};

use futures::future::join_all;
use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::{
    client_config, close_consumer, ensure_topic, unique_name, TopicSpec,
};
use tributary_streams::{Context, Processor, Record, StreamsApp, StreamsConfig};

#[derive(Clone)]
struct WordCount {
    output: String,
}

impl Processor for WordCount {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        let key = record.key.unwrap_or_default();
        let n = ctx
            .get("counts", &key)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
            + 1;
        ctx.put("counts", &key, &n.to_be_bytes())?;
        ctx.forward(&self.output, Some(&key), Some(&n.to_be_bytes()));
        Ok(())
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let brokers = KAFKA_BROKERS.get();
    let n: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let input = unique_name("bench-in");
    let spec = TopicSpec {
        partitions: 3,
        compacted: false,
    };
    ensure_topic(&brokers, &input, spec).await?;
    println!("input topic: {input}");
    println!("producing {n} records to {input}");
    let producer: FutureProducer = client_config(&brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let w = format!("word-{}", i % 1000);
        let rec = FutureRecord::to(&input).key(&w).payload(&w);
        acks.push(producer.send_result(rec).map_err(|(e, _)| e)?);
    }
    for a in join_all(acks).await {
        a?.map_err(|(e, _)| e)?;
    }

    // The ceiling: consume and produce each record, no state, one commit at the end.
    let raw_out = unique_name("bench-raw-out");
    ensure_topic(&brokers, &raw_out, spec).await?;
    let (b, inp, out) = (brokers.clone(), input.clone(), raw_out.clone());
    let raw =
        tokio::task::spawn_blocking(move || -> Result<Duration, rdkafka::error::KafkaError> {
            let c: BaseConsumer = client_config(&b)
                .set("group.id", unique_name("bench-raw"))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create()?;
            let p: FutureProducer = client_config(&b)
                .set("linger.ms", "5")
                .set("queue.buffering.max.messages", "1000000")
                .create()?;
            c.subscribe(&[&inp])?;
            let mut acks = Vec::with_capacity(n);
            let mut started = None;
            while acks.len() < n {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    started.get_or_insert_with(Instant::now);
                    let rec = FutureRecord::to(&out)
                        .key(m.key().unwrap_or_default())
                        .payload(m.payload().unwrap_or_default());
                    acks.push(p.send_result(rec).map_err(|(e, _)| e)?);
                }
            }
            for a in futures::executor::block_on(join_all(acks)) {
                let _ = a;
            }
            c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)?;
            let took = started.map(|s| s.elapsed()).unwrap_or_default();
            close_consumer(&c, Duration::from_secs(5));
            Ok(took)
        })
        .await??;
    let raw_rate = n as f64 / raw.as_secs_f64();
    println!("raw consume->produce: {n} records in {raw:?} = {raw_rate:.0} records/s");

    // The stateful run.
    let out = unique_name("bench-wc-out");
    ensure_topic(&brokers, &out, spec).await?;
    let registry = Registry::new();
    let state = std::env::temp_dir().join(unique_name("bench-state"));
    let wc = WordCount {
        output: out.clone(),
    };
    let app_id = unique_name("bench-wc");
    let app = StreamsApp::builder(&app_id)
        .brokers(&brokers)
        .input(&input)
        .store("counts")
        .state_dir(&state)
        // BENCH_IDEMPOTENT=1: librdkafka's idempotent producer instead of one request in flight.
        .idempotent_producer(std::env::var("BENCH_IDEMPOTENT").is_ok_and(|v| v == "1"))
        // BENCH_MAX_BATCH / BENCH_COMMIT_MS: the runtime's batch bounds (defaults otherwise).
        .max_batch(env_or("BENCH_MAX_BATCH", StreamsConfig::new("d").max_batch))
        .commit_interval(Duration::from_millis(env_or(
            "BENCH_COMMIT_MS",
            StreamsConfig::new("d").commit_interval.as_millis() as usize,
        ) as u64))
        .metrics_registry(&registry)
        .processor(move |_| wc.clone())
        .build()?;
    let token = CancellationToken::new();
    let handle = tokio::spawn(app.run(token.clone()));
    let records_in = || -> u64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "tributary_component_received_records_total")
            .flat_map(|f| f.get_metric().iter())
            .map(|m| m.counter.value() as u64)
            .sum()
    };
    // Measured from the first committed batch, like the raw run from its first record, so
    // that group join time counts in neither.
    while records_in() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let first = records_in();
    while records_in() < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    token.cancel();
    handle.await??;
    let _ = std::fs::remove_dir_all(&state);
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        client_config(&brokers).create()?;
    let dlq = tributary_runtime::dlq::dlq_topic(&input);
    let changelogs = [
        format!("{app_id}-counts-changelog"),
        format!("{app_id}-_timers-changelog"),
    ];
    // BENCH_KEEP_INPUT=1 leaves the input for a peer measured on it next (stack/bench-streams.sh).
    let keep_input = std::env::var("BENCH_KEEP_INPUT").is_ok_and(|v| v == "1");
    let mut topics = vec![&raw_out, &out, &dlq, &changelogs[0], &changelogs[1]];
    if !keep_input {
        topics.push(&input);
    }
    let refs: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
    let _ = admin
        .delete_topics(&refs, &rdkafka::admin::AdminOptions::new())
        .await;
    let rate = (n as u64 - first) as f64 / took.as_secs_f64();
    println!("stateful word count: {n} records, {rate:.0} records/s");
    println!("ratio stateful/raw: {:.2}", rate / raw_rate);
    Ok(())
}
