//! State kept in the schemas topic: restarts serve the same state, the records look like
//! Confluent's, and start-up stays quick.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::{client_config, unique_name};

/// Start-up reads the whole topic; on a loopback broker it must take seconds, not the tens of
/// seconds a blocked consumer close would add.
const QUICK_START: Duration = Duration::from_secs(10);

/// Everything a client can observe, for comparing two registries.
async fn snapshot(reg: &Registry, subjects: &[&str], ids: &[i64]) -> Value {
    let mut out = serde_json::Map::new();
    for path in ["/subjects", "/subjects?deleted=true", "/config"] {
        out.insert(path.to_string(), reg.get(path).await.json);
    }
    for subject in subjects {
        let path = format!("/subjects/{subject}/versions?deleted=true");
        let versions = reg.get(&path).await.json;
        for version in versions.as_array().into_iter().flatten() {
            let path = format!("/subjects/{subject}/versions/{version}?deleted=true");
            out.insert(path.clone(), reg.get(&path).await.json);
        }
        out.insert(path, versions);
        for path in [
            format!("/subjects/{subject}/versions"),
            format!("/config/{subject}"),
        ] {
            out.insert(path.clone(), reg.get(&path).await.json);
        }
    }
    for id in ids {
        let path = format!("/schemas/ids/{id}");
        out.insert(path.clone(), reg.get(&path).await.json);
    }
    Value::Object(out)
}

#[tokio::test]
async fn a_restarted_registry_serves_the_same_state() {
    let topic = fresh_topic();
    let (reg, first_start) = start_timed(config(&topic)).await;
    assert!(
        first_start < QUICK_START,
        "start-up on an empty topic took {first_start:?}"
    );

    let v1 = record(&[field("a", "int")]);
    let v2 = record(&[
        field("a", "int"),
        field_with_default("b", "string", json!("x")),
    ]);
    let id1 = reg.register("s1", &v1).await;
    let id2 = reg.register("s1", &v2).await;
    assert_eq!(reg.register("s2", &v1).await, id1);
    let id3 = reg.register("s3", r#""string""#).await;
    reg.set_level(None, "FULL").await;
    reg.set_level(Some("s2"), "NONE").await;
    reg.set_level(Some("s3"), "FORWARD").await;
    reg.delete("/config/s3").await.expect_ok();
    // A soft-deleted version, and a subject hard-deleted entirely.
    reg.delete("/subjects/s1/versions/2").await.expect_ok();
    reg.delete("/subjects/s3").await.expect_ok();
    reg.delete("/subjects/s3?permanent=true").await.expect_ok();

    let subjects = ["s1", "s2", "s3"];
    let ids = [id1, id2, id3, id3 + 1];
    let before = snapshot(&reg, &subjects, &ids).await;
    let stopping = Instant::now();
    reg.shutdown().await;
    let shutdown_took = stopping.elapsed();
    assert!(
        shutdown_took < QUICK_START,
        "shutdown took {shutdown_took:?}"
    );

    let (reg, second_start) = start_timed(config(&topic)).await;
    assert!(
        second_start < QUICK_START,
        "start-up reading the topic took {second_start:?}"
    );
    eprintln!(
        "start-up: {first_start:?} on an empty topic, {second_start:?} reading it back; shutdown: {shutdown_took:?}"
    );
    let after = snapshot(&reg, &subjects, &ids).await;
    assert_eq!(before, after);
    // Spot checks, so the comparison is known to cover something.
    assert_eq!(after["/subjects"], json!(["s1", "s2"]));
    assert_eq!(after["/subjects/s1/versions"], json!([1]));
    assert_eq!(after["/subjects/s1/versions?deleted=true"], json!([1, 2]));
    assert_eq!(after["/config"], json!({ "compatibilityLevel": "FULL" }));
    assert_eq!(after["/config/s2"], json!({ "compatibilityLevel": "NONE" }));
    assert_eq!(after["/config/s3"]["error_code"], json!(40408));
    assert_eq!(
        after[format!("/schemas/ids/{id2}").as_str()]["schema"],
        json!(v2)
    );

    // New schemas continue the id sequence, past the hard-deleted id; equal schemas keep ids.
    let v3 = record(&[field_with_default("a", "int", json!(0))]);
    let next = reg.register("s4", &v3).await;
    assert_eq!(next, id3 + 1);
    assert_eq!(reg.register("s4", &v1).await, id1);
    assert_eq!(reg.register("s3", r#""string""#).await, id3);
    // The reloaded level still applies: FULL refuses a new field without a default.
    reg.try_register("s1", &record(&[field("a", "int"), field("c", "long")]))
        .await
        .expect_error(409, 409);
    reg.shutdown().await;

    // And a third start sees the writes of the second.
    let (reg, _) = start_timed(config(&topic)).await;
    assert_eq!(reg.versions("s4").await, json!([1, 2]));
    reg.shutdown().await;
}

/// Reads every record of partition 0 of `topic` as (key, value) JSON.
fn read_records(topic: &str) -> Vec<(Value, Value)> {
    let consumer: BaseConsumer = client_config(&KAFKA_BROKERS.get())
        .set("group.id", unique_name("registry-test-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("a consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(low))
        .expect("an assignment");
    consumer.assign(&assignment).expect("assigned");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            let parse = |bytes: Option<&[u8]>| {
                bytes.map_or(Value::Null, |b| serde_json::from_slice(b).expect("JSON"))
            };
            out.push((parse(message.key()), parse(message.payload())));
            if message.offset() + 1 >= high {
                break;
            }
        }
    }
    // Same care as the registry's loader: stop fetching, and let a slow close happen elsewhere.
    let _ = consumer.unassign();
    std::thread::spawn(move || drop(consumer));
    out
}

#[tokio::test]
async fn records_are_laid_out_like_confluents() {
    let topic = fresh_topic();
    let (reg, _) = start_timed(config(&topic)).await;
    let schema = record(&[field("a", "int")]);
    let id = reg.register("orders-value", &schema).await;
    reg.set_level(Some("orders-value"), "FULL").await;
    reg.set_level(None, "NONE").await;
    reg.delete("/subjects/orders-value/versions/1")
        .await
        .expect_ok();
    reg.delete("/subjects/orders-value/versions/1?permanent=true")
        .await
        .expect_ok();
    reg.shutdown().await;

    let records = tokio::task::spawn_blocking(move || read_records(&topic))
        .await
        .expect("read");
    let schema_key =
        json!({ "keytype": "SCHEMA", "subject": "orders-value", "version": 1, "magic": 1 });
    assert_eq!(
        records,
        vec![
            (
                schema_key.clone(),
                json!({ "subject": "orders-value", "version": 1, "id": id, "schema": schema, "deleted": false })
            ),
            (
                json!({ "keytype": "CONFIG", "subject": "orders-value", "magic": 0 }),
                json!({ "compatibilityLevel": "FULL" })
            ),
            (
                json!({ "keytype": "CONFIG", "subject": null, "magic": 0 }),
                json!({ "compatibilityLevel": "NONE" })
            ),
            (
                schema_key.clone(),
                json!({ "subject": "orders-value", "version": 1, "id": id, "schema": schema, "deleted": true })
            ),
            // The hard delete is a tombstone.
            (schema_key, Value::Null),
        ]
    );
}

#[tokio::test]
async fn foreign_and_unreadable_records_do_not_stop_start_up() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let topic = fresh_topic();
    // Start once so the topic exists as the registry creates it.
    let (reg, _) = start_timed(config(&topic)).await;
    reg.shutdown().await;

    let producer: FutureProducer = client_config(&KAFKA_BROKERS.get())
        .create()
        .expect("a producer");
    let records: [(&str, Option<&str>); 4] = [
        // What Confluent writes on start-up and for modes: ignored.
        (r#"{"keytype":"NOOP","magic":0}"#, None),
        (
            r#"{"keytype":"MODE","subject":null,"magic":0}"#,
            Some(r#"{"mode":"READWRITE"}"#),
        ),
        // Garbage: skipped with a warning.
        ("not json", Some("{")),
        // A schema written by Confluent itself.
        (
            r#"{"keytype":"SCHEMA","subject":"legacy","version":1,"magic":1}"#,
            Some(
                r#"{"subject":"legacy","version":1,"id":41,"schema":"\"string\"","deleted":false}"#,
            ),
        ),
    ];
    for (key, value) in records {
        let mut record = FutureRecord::<str, str>::to(&topic).partition(0).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produced");
    }
    drop(producer);

    let (reg, _) = start_timed(config(&topic)).await;
    assert_eq!(reg.get("/subjects").await.expect_ok(), &json!(["legacy"]));
    assert_eq!(
        reg.get("/schemas/ids/41").await.expect_ok(),
        &json!({ "schema": "\"string\"" })
    );
    assert_eq!(reg.register("new", r#""int""#).await, 42);
    reg.shutdown().await;
}

#[tokio::test]
async fn a_topic_that_is_not_compacted_is_refused() {
    use tributary_runtime::kafka::{ensure_topic, TopicSpec};

    let topic = fresh_topic();
    ensure_topic(
        &KAFKA_BROKERS.get(),
        &topic,
        TopicSpec {
            partitions: 1,
            compacted: false,
        },
    )
    .await
    .expect("topic created");
    let refused = tributary_registry::start(config(&topic)).await;
    let Err(err) = refused else {
        panic!("a registry started on a topic with the delete policy");
    };
    assert!(err.to_string().contains("cleanup.policy"), "{err}");
}

#[tokio::test]
async fn a_topic_with_several_partitions_is_refused() {
    use tributary_runtime::kafka::{ensure_topic, TopicSpec};

    let topic = fresh_topic();
    ensure_topic(
        &KAFKA_BROKERS.get(),
        &topic,
        TopicSpec {
            partitions: 3,
            compacted: true,
        },
    )
    .await
    .expect("topic created");
    let Err(err) = tributary_registry::start(config(&topic)).await else {
        panic!("a registry started on a topic with 3 partitions");
    };
    assert!(err.to_string().contains("3 partitions"), "{err}");
}

#[tokio::test]
async fn a_failed_write_answers_500_and_changes_nothing() {
    let topic = fresh_topic();
    let mut roomy = config(&topic);
    // Let a body through that is larger than a Kafka record may be (librdkafka's
    // message.max.bytes is 1 000 000), so that producing it fails.
    roomy.max_body_bytes = 4 * 1024 * 1024;
    let (reg, _) = start_timed(roomy).await;
    let small = reg.register("s", r#""int""#).await;

    let padding = "x".repeat(1_500_000);
    let huge = record(&[field_with_default("a", "string", json!(padding))]);
    let answer = reg.try_register("huge", &huge).await;
    let message = answer.expect_error(500, 50001).to_string();
    assert!(message.contains(&topic), "{message}");
    assert!(message.to_lowercase().contains("too large"), "{message}");

    // Nothing changed, and the registry keeps working.
    reg.get("/subjects/huge/versions")
        .await
        .expect_error(404, 40401);
    assert_eq!(reg.get("/subjects").await.expect_ok(), &json!(["s"]));
    let next = reg.register("s2", r#""string""#).await;
    assert!(next > small);
    reg.shutdown().await;

    // And the topic agrees.
    let (reg, _) = start_timed(config(&topic)).await;
    assert_eq!(reg.get("/subjects").await.expect_ok(), &json!(["s", "s2"]));
    reg.shutdown().await;
}
