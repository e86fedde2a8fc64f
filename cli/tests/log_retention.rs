//! The log outlives a rebuild, run as an operator would against the real broker and Redis:
//! `tributary topics create` makes topics that keep their records forever, and `rebuild` and
//! `reconcile --repair` refuse a topic whose log start is above 0 (records deleted with
//! DeleteRecords) without touching the store. Each test has its own topic and key prefix.

use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;
use redis::AsyncCommands;
use tributary_runtime::config::{KAFKA_BROKERS, REDIS_URL};
use tributary_runtime::kafka::{client_config, topic_configs, unique_name};
use tributary_schemas::types::ALL_TOPICS;

fn tributary(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .arg("--brokers")
        .arg(KAFKA_BROKERS.get())
        .output()
        .expect("the tributary binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn create_topics(prefix: &str) -> Output {
    tributary(&[
        "topics",
        "create",
        "--partitions",
        "1",
        "--topic-prefix",
        prefix,
    ])
}

async fn delete_topics(prefix: &str) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(&KAFKA_BROKERS.get()).create().expect("admin");
    let names: Vec<String> = ALL_TOPICS
        .iter()
        .map(|(base, _)| format!("{prefix}{base}"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn created_topics_keep_their_records_forever() {
    let prefix = format!("{}.", unique_name("wt13b-retention"));
    let out = create_topics(&prefix);
    assert!(out.status.success(), "{}", text(&out));
    for (base, _) in ALL_TOPICS {
        let topic = format!("{prefix}{base}");
        let entries = topic_configs(&KAFKA_BROKERS.get(), &topic)
            .await
            .expect("describe configs");
        let retention = entries
            .iter()
            .find(|(k, _)| k == "retention.ms")
            .and_then(|(_, v)| v.clone());
        assert_eq!(retention.as_deref(), Some("-1"), "{topic}: {entries:?}");
    }
    // Run again: the existing topics are checked and keep the promise.
    let out = create_topics(&prefix);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("retention forever"), "{}", text(&out));
    delete_topics(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_and_repair_refuse_a_log_whose_start_is_above_zero() {
    let brokers = KAFKA_BROKERS.get();
    let prefix = format!("{}.", unique_name("wt13b-truncated"));
    let out = create_topics(&prefix);
    assert!(out.status.success(), "{}", text(&out));

    // Three records on the orders events, the first two deleted: the log starts at 2.
    let topic = format!("{prefix}events.orders");
    let producer: FutureProducer = client_config(&brokers).create().expect("producer");
    for i in 0..3 {
        let value = format!("not avro {i}");
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(0)
                    .key("o1")
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }
    let admin: AdminClient<DefaultClientContext> = client_config(&brokers).create().expect("admin");
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(2))
        .expect("tpl");
    let deleted = admin
        .delete_records(&upto, &AdminOptions::new())
        .await
        .expect("DeleteRecords");
    for e in deleted.elements() {
        e.error().expect("DeleteRecords of the partition");
    }

    // An entity only the deleted records could have made: a repair or a rebuild from the
    // retained part would drop it.
    let keys = unique_name("wt13b-truncated");
    let mut conn = redis::Client::open(REDIS_URL.get())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable");
    let o1 = format!("{keys}:order:o1");
    let _: () = conn
        .hset_multiple(&o1, &[("status", "PLACED"), ("_version", "1")])
        .await
        .expect("seed o1");

    let store = |command: &[&str]| {
        let mut args = command.to_vec();
        args.extend([
            "--store",
            "redis",
            "--topic-prefix",
            &prefix,
            "--redis-prefix",
            &keys,
            "--lock-wait-secs",
            "60",
        ]);
        tributary(&args)
    };
    let named = format!("{topic}/0 starts at offset 2");
    for command in [&["rebuild"][..], &["reconcile", "--repair"][..]] {
        let out = store(command);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", text(&out));
        assert!(text(&out).contains(&named), "{command:?}: {}", text(&out));
        let mut found: Vec<String> = conn.keys(format!("{keys}*")).await.expect("keys");
        found.sort();
        assert_eq!(found, vec![o1.clone()], "{command:?} wrote to the store");
    }

    // Told to, reconcile replays the retained part: the undecodable records make nothing, so
    // it reports o1 as extra (exit 1) and, without `--repair`, leaves it.
    let out = store(&["reconcile", "--allow-truncated-log"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let still: bool = conn.exists(&o1).await.expect("exists");
    assert!(still);

    let _: () = conn.del(&o1).await.expect("cleanup");
    delete_topics(&prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_create_reports_a_topic_with_finite_retention() {
    use tributary_runtime::kafka::{ensure_topic, TopicSpec};
    let brokers = KAFKA_BROKERS.get();
    let prefix = format!("{}.", unique_name("wt13b-finite"));
    // Created as before this change: the broker's default retention.
    let topic = format!("{prefix}events.users");
    let spec = TopicSpec {
        partitions: 1,
        compacted: false,
    };
    ensure_topic(&brokers, &topic, spec).await.expect("created");

    // Reported, and the command still succeeds (scripts creating the topics go on).
    let out = create_topics(&prefix);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{topic:<24} BREAKS THE LOG")),
        "{}",
        text(&out)
    );

    // `--fix` sets retention.ms=-1 where the broker takes AlterConfigs; a broker without it
    // (nisshi has only IncrementalAlterConfigs, which rdkafka 0.39 does not wrap) is named
    // in the error, with the topic, and the topic is left as it was.
    let mut args = vec!["topics", "create", "--partitions", "1", "--fix"];
    args.extend(["--topic-prefix", &prefix]);
    let out = tributary(&args);
    let entries = topic_configs(&brokers, &topic).await.expect("describe");
    let retention = entries
        .iter()
        .find(|(k, _)| k == "retention.ms")
        .and_then(|(_, v)| v.clone());
    if out.status.success() {
        assert_eq!(retention.as_deref(), Some("-1"), "{}", text(&out));
    } else {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let line = format!("{topic:<24} BREAKS THE LOG");
        assert!(text(&out).contains(&line), "{}", text(&out));
        assert!(text(&out).contains("AlterConfigs"), "{}", text(&out));
        assert_ne!(retention.as_deref(), Some("-1"));
    }
    delete_topics(&prefix).await;
}
