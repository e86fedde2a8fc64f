//! Confluent's own clients against the registry, unchanged: the Rust
//! `schema_registry_converter` and Python confluent-kafka's `SchemaRegistryClient` (from the
//! stack's virtualenv, `stack/requirements.txt`).

mod common;

use apache_avro::types::Value as Avro;
use common::*;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::json;

const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"tributary.test","fields":[
    {"name":"id","type":"long"},
    {"name":"item","type":"string"},
    {"name":"placed_at","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

#[tokio::test]
async fn schema_registry_converter_round_trip() {
    let reg = registry().await;
    let settings = SrSettings::new(reg.base.clone());
    let encoder = AvroEncoder::new(settings.clone());
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        "orders".to_string(),
        false,
        SuppliedSchema::new(
            Some("tributary.test.Order".to_string()),
            SchemaType::Avro,
            ORDER.to_string(),
        ),
    );
    let values = vec![
        ("id", Avro::Long(7)),
        ("item", Avro::String("tea".to_string())),
        ("placed_at", Avro::TimestampMillis(1_700_000_000_000)),
    ];
    let bytes = encoder
        .encode(values.clone(), strategy)
        .await
        .expect("encoded through the registry");
    // Confluent's wire format: magic byte 0, then the id big-endian.
    let id = reg.register("orders-value", ORDER).await;
    assert_eq!(bytes[0], 0);
    assert_eq!(
        i64::from(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])),
        id
    );

    let decoded = AvroDecoder::new(settings)
        .decode(Some(&bytes))
        .await
        .expect("decoded through the registry");
    let expected = Avro::Record(
        values
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    );
    assert_eq!(decoded.value, expected);
    reg.shutdown().await;
}

/// The virtualenv's Python, if confluent-kafka is importable there.
fn python() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("TRIBUTARY_PYTHON") {
        Some(p) => p.into(),
        None => std::path::Path::new(&std::env::var_os("HOME")?)
            .join(".cache/tributary/venv/bin/python"),
    };
    let importable = std::process::Command::new(&path)
        .args(["-c", "import confluent_kafka.schema_registry.avro"])
        .output()
        .is_ok_and(|o| o.status.success());
    importable.then_some(path)
}

const PYTHON_CLIENT: &str = r#"
import sys, datetime
from confluent_kafka.schema_registry import SchemaRegistryClient, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroSerializer, AvroDeserializer
from confluent_kafka.serialization import SerializationContext, MessageField

url, order = sys.argv[1], sys.argv[2]
client = SchemaRegistryClient({"url": url})
ctx = SerializationContext("orders", MessageField.VALUE)
placed = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
data = AvroSerializer(client, order)({"id": 7, "item": "tea", "placed_at": placed}, ctx)
assert data[0] == 0, data
back = AvroDeserializer(SchemaRegistryClient({"url": url}))(data, ctx)
assert back == {"id": 7, "item": "tea", "placed_at": placed}, back

sid = client.register_schema("orders-value", Schema(order, "AVRO"))
assert sid == int.from_bytes(data[1:5], "big"), (sid, data)
found = client.lookup_schema("orders-value", Schema(order, "AVRO"))
assert (found.schema_id, found.subject, found.version) == (sid, "orders-value", 1), found
latest = client.get_latest_version("orders-value")
assert (latest.schema_id, latest.version) == (sid, 1), latest
assert client.get_version("orders-value", 1).schema_id == sid
assert client.get_schema(sid).schema_str == order
assert client.get_subjects() == ["orders-value"], client.get_subjects()
assert client.get_versions("orders-value") == [1]

client.set_compatibility(level="FULL")
assert client.get_compatibility() == "FULL"
client.set_compatibility(subject_name="orders-value", level="BACKWARD")
assert client.get_compatibility("orders-value") == "BACKWARD"
breaking = '{"type":"record","name":"Order","namespace":"tributary.test","fields":[{"name":"id","type":"string"}]}'
assert client.test_compatibility("orders-value", Schema(breaking, "AVRO")) is False
try:
    client.register_schema("orders-value", Schema(breaking, "AVRO"))
    raise AssertionError("an incompatible schema was registered")
except SchemaRegistryError as e:
    assert (e.http_status_code, e.error_code) == (409, 409), e
try:
    client.get_schema(999999)
    raise AssertionError("an unknown id was found")
except SchemaRegistryError as e:
    assert (e.http_status_code, e.error_code) == (404, 40403), e

client.register_schema("other", Schema('"string"', "AVRO"))
assert client.delete_version("other", 1) == 1
assert client.delete_subject("orders-value", permanent=True) == [1]
assert client.get_subjects() == []
print("ok")
"#;

#[tokio::test]
async fn python_confluent_client_round_trip() {
    // `make test` installs the venv (stack/stack.sh up), so a missing client is a failure.
    let python = python()
        .expect("a Python with confluent-kafka (run `make up` once, or set TRIBUTARY_PYTHON)");
    let reg = registry().await;
    let url = reg.base.clone();
    let output = tokio::process::Command::new(python)
        .args(["-c", PYTHON_CLIENT, &url, ORDER])
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    // What the client did is visible to everyone else; deleting the subject took its level.
    assert_eq!(
        reg.get("/config").await.expect_ok(),
        &json!({ "compatibilityLevel": "FULL" })
    );
    reg.get("/config/orders-value")
        .await
        .expect_error(404, 40408);
    reg.shutdown().await;
}
