//! The registry with its state in memory ([`tributary_registry::start_in_memory`]): the same
//! REST API and rules as the Kafka-backed one, with no broker anywhere, and nothing kept after
//! the process. (The Kafka-backed tests in `rest_api.rs` cover the API in depth; this checks
//! that the in-memory store applies every kind of change.)

mod common;

use common::*;
use serde_json::json;
use tributary_registry::{start_in_memory, Compatibility};

async fn in_memory() -> Registry {
    let running = start_in_memory(
        "127.0.0.1:0".parse().expect("an address"),
        Compatibility::Backward,
    )
    .await
    .expect("an in-memory registry starts without Kafka");
    Registry::new(running)
}

#[tokio::test]
async fn registers_looks_up_checks_and_deletes_without_kafka() {
    let reg = in_memory().await;
    let v1 = record(&[field("a", "int")]);
    let v2 = record(&[
        field("a", "int"),
        field_with_default("b", "string", json!("x")),
    ]);
    // Reads `a` as a string: incompatible with every earlier version.
    let v3 = record(&[field("a", "string")]);

    let id1 = reg.register("s-value", &v1).await;
    assert_eq!(id1, 1, "an empty registry hands out id 1 first");
    assert_eq!(
        reg.register("s-value", &v1).await,
        id1,
        "same schema, same id"
    );
    assert_eq!(
        reg.register("t-value", &v1).await,
        id1,
        "same schema elsewhere, same id"
    );
    let id2 = reg.register("s-value", &v2).await;
    assert_eq!(id2, id1 + 1);
    assert_eq!(reg.versions("s-value").await, json!([1, 2]));
    assert_eq!(
        reg.get(&format!("/schemas/ids/{id2}")).await.expect_ok(),
        &json!({ "schema": v2 })
    );
    reg.get("/schemas/ids/99").await.expect_error(404, 40403);

    // BACKWARD by default; a subject's level is kept.
    reg.try_register("s-value", &v3)
        .await
        .expect_error(409, 409);
    reg.set_level(Some("s-value"), "NONE").await;
    reg.register("s-value", &v3).await;
    assert_eq!(reg.versions("s-value").await, json!([1, 2, 3]));

    // Deletes apply too.
    assert_eq!(
        reg.delete("/subjects/t-value").await.expect_ok(),
        &json!([1])
    );
    reg.get("/subjects/t-value/versions")
        .await
        .expect_error(404, 40401);
    reg.shutdown().await;
}

#[tokio::test]
async fn each_in_memory_registry_starts_empty() {
    let a = in_memory().await;
    a.register("s-value", &record(&[field("a", "int")])).await;
    let b = in_memory().await;
    assert_eq!(b.get("/subjects").await.expect_ok(), &json!([]));
    a.shutdown().await;
    b.shutdown().await;
}
