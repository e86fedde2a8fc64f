//! Produce and consume through the real broker (TRIBUTARY_KAFKA_BROKERS) with rdkafka, and resume
//! a consumer group from its committed offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::{
    client_config, close_consumer, ensure_topic, unique_name, TopicSpec,
};

const RECORDS: usize = 300;

async fn produce_all(brokers: &str, topic: &str) {
    let producer: FutureProducer = client_config(brokers).create().unwrap();
    let sends = (0..RECORDS).map(|i| {
        let key = format!("key-{}", i % 17);
        let value = i.to_string();
        let producer = &producer;
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("broker acknowledges the record")
        }
    });
    futures::future::join_all(sends).await;
}

fn group_consumer(brokers: &str, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // Offsets are stored by hand, only for records the test counts as processed.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Processes up to `limit` records: records each value, stores its offset; then commits. Waits
/// up to 30 s for the first record (joining the group) and stops after `idle` without one.
fn consume(consumer: &BaseConsumer, limit: usize, idle: Duration) -> Vec<usize> {
    let mut seen = Vec::new();
    let mut last = Instant::now();
    let waited = |seen: &Vec<usize>, last: Instant| {
        let allowed = if seen.is_empty() {
            Duration::from_secs(30)
        } else {
            idle
        };
        last.elapsed() >= allowed
    };
    while seen.len() < limit && !waited(&seen, last) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                let v: usize = std::str::from_utf8(msg.payload().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                seen.push(v);
                consumer.store_offset_from_message(&msg).unwrap();
                last = Instant::now();
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    if !seen.is_empty() {
        consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn group_resumes_from_committed_offsets_without_loss_or_duplicates() {
    let brokers = KAFKA_BROKERS.get();
    let topic = unique_name("roundtrip");
    let spec = TopicSpec {
        partitions: 3,
        compacted: false,
    };
    ensure_topic(&brokers, &topic, spec).await.unwrap();
    produce_all(&brokers, &topic).await;

    let group = unique_name("group");
    let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
    let (first, second) = tokio::task::spawn_blocking(move || {
        // The first member processes part of the topic, commits, and leaves.
        let a = group_consumer(&b, &g, &t);
        let first = consume(&a, RECORDS / 2, Duration::from_secs(10));
        a.unsubscribe();
        close_consumer(&a, Duration::from_secs(10));
        drop(a);
        // A new member of the same group resumes where the first one's commits left off.
        let c = group_consumer(&b, &g, &t);
        let second = consume(&c, RECORDS, Duration::from_secs(5));
        close_consumer(&c, Duration::from_secs(10));
        (first, second)
    })
    .await
    .unwrap();

    assert_eq!(first.len(), RECORDS / 2);
    let mut counts = BTreeMap::new();
    for v in first.iter().chain(second.iter()) {
        *counts.entry(*v).or_insert(0) += 1;
    }
    let missing: Vec<_> = (0..RECORDS).filter(|v| !counts.contains_key(v)).collect();
    let duplicated: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(v, _)| *v)
        .collect();
    assert!(missing.is_empty(), "lost records: {missing:?}");
    assert!(duplicated.is_empty(), "duplicated records: {duplicated:?}");
    assert_eq!(first.len() + second.len(), RECORDS);
}
