//! `tributary schemas register|check`, run as a user would, against a registry on the real broker.

use std::path::Path;
use std::process::{Command, Output};

use tributary_registry::{Compatibility, RegistryConfig};
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::unique_name;

const ORDERS_V1: &str = r#"{"type":"record","name":"Order","namespace":"test.cli","fields":[
  {"name":"id","type":"string"}
]}"#;
/// A new field with a default: readers of v2 can read v1 data (BACKWARD holds).
const ORDERS_COMPATIBLE: &str = r#"{"type":"record","name":"Order","namespace":"test.cli","fields":[
  {"name":"id","type":"string"},
  {"name":"note","type":"string","default":""}
]}"#;
/// A new field without a default: v1 data has no value for it (BACKWARD breaks).
const ORDERS_BREAKING: &str = r#"{"type":"record","name":"Order","namespace":"test.cli","fields":[
  {"name":"id","type":"string"},
  {"name":"total_cents","type":"long"}
]}"#;

fn tributary(args: &[&str], registry: &str, dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .arg("--registry")
        .arg(registry)
        .arg("--dir")
        .arg(dir)
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

#[tokio::test(flavor = "multi_thread")]
async fn check_fails_on_a_breaking_change_and_register_keeps_ids() {
    let reg = tributary_registry::start(RegistryConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        brokers: KAFKA_BROKERS.get(),
        topic: unique_name("_schemas-cli-test"),
        max_body_bytes: 1 << 20,
        default_compatibility: Compatibility::Backward,
    })
    .await
    .unwrap();
    let url = format!("http://{}", reg.addr);
    let dir = std::env::temp_dir().join(unique_name("tributary-cli-schemas"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("orders.avsc");

    // A subject that does not exist yet passes the check.
    std::fs::write(&file, ORDERS_V1).unwrap();
    let out = tributary(&["schemas", "check"], &url, &dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("orders-value"), "{}", text(&out));

    let out = tributary(&["schemas", "register"], &url, &dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("orders-value"), "{}", text(&out));
    let first = text(&out);
    // Registering the same schema again keeps its id.
    let out = tributary(&["schemas", "register"], &url, &dir);
    assert_eq!(text(&out), first);

    std::fs::write(&file, ORDERS_COMPATIBLE).unwrap();
    let out = tributary(&["schemas", "check"], &url, &dir);
    assert!(out.status.success(), "{}", text(&out));

    std::fs::write(&file, ORDERS_BREAKING).unwrap();
    let out = tributary(&["schemas", "check"], &url, &dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("INCOMPATIBLE"), "{}", text(&out));
    assert!(text(&out).contains("total_cents"), "{}", text(&out));

    // Bad input names the file.
    std::fs::write(&file, "{ not avro").unwrap();
    let out = tributary(&["schemas", "check"], &url, &dir);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("orders.avsc"), "{}", text(&out));

    std::fs::remove_dir_all(&dir).unwrap();
    reg.shutdown().await;
}
