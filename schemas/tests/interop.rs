//! Interoperability with the reference client: python confluent-kafka's AvroSerializer and
//! AvroDeserializer, with their SchemaRegistryClient pointed at our registry, on the real broker.
//! The python side is `interop.py`, run with the project's venv (`TRIBUTARY_PYTHON`).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tributary_registry::{Compatibility, RegistryConfig};
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::{
    client_config, close_consumer, ensure_topic, unique_name, TopicSpec,
};
use tributary_schemas::domain::users::{UserEvent, UserRegistered};
use tributary_schemas::types::Envelope;
use tributary_schemas::Codec;

fn python() -> String {
    std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/tributary/venv/bin/python")
    })
}

fn interop(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("the project's python runs (make up installs it)");
    assert!(
        out.status.success(),
        "interop.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The first record of partition 0 of `topic`, read with a bounded wait.
fn first_record(brokers: &str, topic: &str) -> Vec<u8> {
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", unique_name("interop"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    for _ in 0..60 {
        if let Some(msg) = consumer.poll(Duration::from_millis(500)) {
            let payload = msg.expect("no consume error").payload().map(<[u8]>::to_vec);
            close_consumer(&consumer, Duration::from_secs(10));
            return payload.expect("record has a value");
        }
    }
    panic!("no record on {topic} within 30 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn reference_client_and_our_codec_read_each_other() {
    let brokers = KAFKA_BROKERS.get();
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let reg = tributary_registry::start(RegistryConfig {
        listen,
        brokers: brokers.clone(),
        topic: unique_name("_schemas-interop-test"),
        max_body_bytes: 1 << 20,
        default_compatibility: Compatibility::Backward,
    })
    .await
    .unwrap();
    let url = format!("http://{}", reg.addr);
    let codec = Codec::new(&url);
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/avro/events.users.avsc");

    // python → us: AvroSerializer registers the schema with our registry and frames the record;
    // our codec decodes it into the Rust type.
    let from_py = unique_name("interop-py");
    let spec = TopicSpec {
        partitions: 1,
        compacted: false,
    };
    ensure_topic(&brokers, &from_py, spec).await.unwrap();
    interop(&[
        "produce",
        "--registry",
        &url,
        "--brokers",
        &brokers,
        "--topic",
        &from_py,
        "--schema",
        schema,
        "--id",
        "rec-1",
        "--user-id",
        "user-1",
        "--email",
        "py@example.com",
    ]);
    let bytes = tokio::task::spawn_blocking({
        let (b, t) = (brokers.clone(), from_py.clone());
        move || first_record(&b, &t)
    })
    .await
    .unwrap();
    let got: Envelope<UserEvent> = codec.decode(&bytes).await.unwrap();
    assert_eq!(got.id, "rec-1");
    assert_eq!(got.aggregate_id, "user-1");
    assert_eq!(got.sequence, 1);
    assert_eq!(got.causation_id, None);
    assert_eq!(got.timestamp, 1_700_000_000_000);
    assert_eq!(
        got.payload,
        UserEvent::UserRegistered(UserRegistered {
            user_id: "user-1".into(),
            email: "py@example.com".into(),
            display_name: "Py".into(),
            locale: Some("en-GB".into()),
        })
    );

    // us → python: our codec encodes (same schema, so the same subject id), we produce, and
    // AvroDeserializer reads it back through our registry.
    let to_py = unique_name("interop-rs");
    ensure_topic(&brokers, &to_py, spec).await.unwrap();
    let mut ours: Envelope<UserEvent> = Envelope::new(
        "user-2",
        "corr-2",
        UserEvent::UserRegistered(UserRegistered {
            user_id: "user-2".into(),
            email: "rs@example.com".into(),
            display_name: "Rs".into(),
            locale: None,
        }),
    );
    ours.causation_id = Some("cause-2".into());
    let bytes = codec.encode(&ours).await.unwrap();
    let producer: FutureProducer = client_config(&brokers).create().unwrap();
    producer
        .send(
            FutureRecord::to(&to_py).key("user-2").payload(&bytes),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let line = interop(&[
        "consume",
        "--registry",
        &url,
        "--brokers",
        &brokers,
        "--topic",
        &to_py,
    ]);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["id"], ours.id.as_str());
    assert_eq!(v["aggregate_id"], "user-2");
    assert_eq!(v["causation_id"], "cause-2");
    assert_eq!(v["correlation_id"], "corr-2");
    assert_eq!(v["timestamp"], ours.timestamp);
    assert_eq!(v["payload"]["type"], "io.tributary.users.UserRegistered");
    assert_eq!(v["payload"]["value"]["email"], "rs@example.com");
    assert_eq!(v["payload"]["value"]["locale"], serde_json::Value::Null);
    reg.shutdown().await;
}
