//! The REST API against a real broker: each test starts its own registry on its own topic.

mod common;

use common::*;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn v1() -> String {
    record(&[field("a", "int")])
}

/// v1 plus a field with a default: compatible every way.
fn v2_with_default() -> String {
    record(&[
        field("a", "int"),
        field_with_default("b", "string", json!("x")),
    ])
}

/// v1 plus a field without a default: not backward compatible.
fn v2_without_default() -> String {
    record(&[field("a", "int"), field("b", "string")])
}

#[tokio::test]
async fn registering_assigns_and_reuses_global_ids() {
    let reg = registry().await;

    let id = reg.register("orders-value", &v1()).await;
    assert!(id >= 1);
    // Same schema again: same id, no new version.
    assert_eq!(reg.register("orders-value", &v1()).await, id);
    assert_eq!(reg.versions("orders-value").await, json!([1]));
    // Formatting does not make a different schema.
    let reformatted = r#"{ "name": "test.R", "type": "record",
                           "fields": [ { "type": {"type": "int"}, "name": "a" } ] }"#;
    assert_eq!(reg.register("orders-value", reformatted).await, id);
    assert_eq!(reg.versions("orders-value").await, json!([1]));

    // Same schema in another subject: same id, that subject's first version.
    assert_eq!(reg.register("payments-value", &v1()).await, id);
    assert_eq!(reg.versions("payments-value").await, json!([1]));

    // A new schema: the next id, the next version.
    let id2 = reg.register("orders-value", &v2_with_default()).await;
    assert_eq!(id2, id + 1);
    assert_eq!(reg.versions("orders-value").await, json!([1, 2]));

    // Unknown query parameters are ignored.
    let answer = reg
        .post(
            "/subjects/orders-value/versions?normalize=false",
            json!({ "schema": v1(), "schemaType": "AVRO", "references": [] }),
        )
        .await;
    assert_eq!(answer.expect_ok(), &json!({ "id": id }));
    reg.shutdown().await;
}

#[tokio::test]
async fn lookup_and_fetch_by_id() {
    let reg = registry().await;
    let id = reg.register("s", &v1()).await;
    let id2 = reg.register("s", &v2_with_default()).await;
    reg.register("other", &v1()).await;

    let found = reg
        .post("/subjects/s", json!({ "schema": v1() }))
        .await
        .expect_ok()
        .clone();
    assert_eq!(
        found,
        json!({ "subject": "s", "id": id, "version": 1, "schema": v1() })
    );
    let missing = reg
        .post(
            "/subjects/s",
            json!({ "schema": record(&[field("z", "long")]) }),
        )
        .await;
    missing.expect_error(404, 40403);
    reg.post("/subjects/nope", json!({ "schema": v1() }))
        .await
        .expect_error(404, 40401);

    let by_id = reg.get(&format!("/schemas/ids/{id2}")).await;
    assert_eq!(by_id.expect_ok(), &json!({ "schema": v2_with_default() }));
    // Clients add `subject` and `format`; they do not change the answer.
    let by_id = reg
        .get(&format!("/schemas/ids/{id}?subject=s&format=resolved"))
        .await;
    assert_eq!(by_id.expect_ok(), &json!({ "schema": v1() }));
    let raw = reg.get(&format!("/schemas/ids/{id}/schema")).await;
    assert_eq!(raw.text, v1());

    let unknown = reg.get("/schemas/ids/987654").await;
    assert_eq!(unknown.expect_error(404, 40403), "Schema not found");

    let usages = reg.get(&format!("/schemas/ids/{id}/versions")).await;
    assert_eq!(
        usages.expect_ok(),
        &json!([{ "subject": "other", "version": 1 }, { "subject": "s", "version": 1 }])
    );
    assert_eq!(
        reg.get("/schemas/types").await.expect_ok(),
        &json!(["AVRO"])
    );
    reg.shutdown().await;
}

#[tokio::test]
async fn subjects_versions_and_version_lookup() {
    let reg = registry().await;
    assert_eq!(reg.get("/subjects").await.expect_ok(), &json!([]));
    let id1 = reg.register("b-subject", &v1()).await;
    let id2 = reg.register("b-subject", &v2_with_default()).await;
    reg.register("a-subject", &v1()).await;
    assert_eq!(
        reg.get("/subjects").await.expect_ok(),
        &json!(["a-subject", "b-subject"])
    );
    assert_eq!(reg.versions("b-subject").await, json!([1, 2]));

    let expected_v2 =
        json!({ "subject": "b-subject", "version": 2, "id": id2, "schema": v2_with_default() });
    for spec in ["2", "latest", "-1"] {
        let answer = reg
            .get(&format!("/subjects/b-subject/versions/{spec}"))
            .await;
        assert_eq!(answer.expect_ok(), &expected_v2, "version {spec}");
    }
    let first = reg.get("/subjects/b-subject/versions/1").await;
    assert_eq!(first.expect_ok()["id"], json!(id1));
    let raw = reg.get("/subjects/b-subject/versions/1/schema").await;
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(raw.text, v1());

    reg.get("/subjects/b-subject/versions/3")
        .await
        .expect_error(404, 40402);
    for bad in ["abc", "0", "-2"] {
        let msg = reg
            .get(&format!("/subjects/b-subject/versions/{bad}"))
            .await
            .expect_error(422, 42202)
            .to_string();
        assert!(msg.contains(bad), "{msg}");
    }
    reg.get("/subjects/none/versions")
        .await
        .expect_error(404, 40401);
    reg.get("/subjects/none/versions/latest")
        .await
        .expect_error(404, 40401);
    let referenced = reg.get("/subjects/b-subject/versions/1/referencedby").await;
    assert_eq!(referenced.expect_ok(), &json!([]));
    reg.shutdown().await;
}

#[tokio::test]
async fn global_and_subject_config() {
    let reg = registry().await;
    assert_eq!(
        reg.get("/config").await.expect_ok(),
        &json!({ "compatibilityLevel": "BACKWARD" })
    );
    let put = reg.put("/config", json!({ "compatibility": "FULL" })).await;
    assert_eq!(put.expect_ok(), &json!({ "compatibility": "FULL" }));
    assert_eq!(
        reg.get("/config").await.expect_ok(),
        &json!({ "compatibilityLevel": "FULL" })
    );

    let msg = reg
        .get("/config/s")
        .await
        .expect_error(404, 40408)
        .to_string();
    assert_eq!(
        msg,
        "Subject 's' does not have subject-level compatibility configured"
    );
    assert_eq!(
        reg.get("/config/s?defaultToGlobal=true").await.expect_ok(),
        &json!({ "compatibilityLevel": "FULL" })
    );
    let put = reg
        .put("/config/s", json!({ "compatibility": "none" }))
        .await;
    assert_eq!(put.expect_ok(), &json!({ "compatibility": "NONE" }));
    assert_eq!(
        reg.get("/config/s").await.expect_ok(),
        &json!({ "compatibilityLevel": "NONE" })
    );
    let deleted = reg.delete("/config/s").await;
    assert_eq!(
        deleted.expect_ok(),
        &json!({ "compatibilityLevel": "NONE" })
    );
    reg.get("/config/s").await.expect_error(404, 40408);
    reg.delete("/config/s").await.expect_error(404, 40408);

    for bad in [
        json!({ "compatibility": "SIDEWAYS" }),
        json!({ "compatibility": 3 }),
        json!({}),
    ] {
        reg.put("/config", bad.clone())
            .await
            .expect_error(422, 42203);
        reg.put("/config/s", bad).await.expect_error(422, 42203);
    }
    // Unchanged by the refused updates.
    assert_eq!(
        reg.get("/config").await.expect_ok(),
        &json!({ "compatibilityLevel": "FULL" })
    );
    // Deleting the global level falls back to the configured default.
    assert_eq!(
        reg.delete("/config").await.expect_ok(),
        &json!({ "compatibilityLevel": "FULL" })
    );
    assert_eq!(
        reg.get("/config").await.expect_ok(),
        &json!({ "compatibilityLevel": "BACKWARD" })
    );
    reg.shutdown().await;
}

#[tokio::test]
async fn backward_forward_full_and_none() {
    let reg = registry().await;

    // BACKWARD (the default): a new field needs a default.
    reg.register("bw", &v1()).await;
    let refused = reg.try_register("bw", &v2_without_default()).await;
    let msg = refused.expect_error(409, 409).to_string();
    assert!(
        msg.starts_with(
            "Schema being registered is incompatible with an earlier schema for subject \"bw\", details: ["
        ),
        "{msg}"
    );
    assert!(msg.contains("READER_FIELD_MISSING_DEFAULT_VALUE"), "{msg}");
    assert!(msg.contains("{oldSchemaVersion: 1}"), "{msg}");
    assert!(msg.contains("{compatibility: 'BACKWARD'}"), "{msg}");
    assert_eq!(reg.versions("bw").await, json!([1]));
    reg.register("bw", &v2_with_default()).await;
    assert_eq!(reg.versions("bw").await, json!([1, 2]));

    // NONE: anything goes.
    reg.register("none", &v1()).await;
    reg.set_level(Some("none"), "NONE").await;
    reg.register("none", &v2_without_default()).await;
    reg.register("none", &record(&[field("a", "string")])).await;
    assert_eq!(reg.versions("none").await, json!([1, 2, 3]));

    // FORWARD: old readers must read new data. Adding a field is fine; removing one the old
    // schema has without a default is not.
    reg.set_level(Some("fw"), "FORWARD").await;
    reg.register("fw", &v2_without_default()).await;
    reg.register(
        "fw",
        &record(&[field("a", "int"), field("b", "string"), field("c", "long")]),
    )
    .await;
    let refused = reg
        .try_register("fw", &record(&[field("a", "int"), field("c", "long")]))
        .await;
    let msg = refused.expect_error(409, 409).to_string();
    assert!(msg.contains("{compatibility: 'FORWARD'}"), "{msg}");

    // FULL: both ways, so only fields with defaults may come and go.
    reg.set_level(Some("full"), "FULL").await;
    reg.register("full", &v1()).await;
    reg.try_register("full", &v2_without_default())
        .await
        .expect_error(409, 409);
    reg.register("full", &v2_with_default()).await;
    assert_eq!(reg.versions("full").await, json!([1, 2]));

    // The global level applies to subjects without their own.
    reg.set_level(None, "NONE").await;
    reg.register("global", &v1()).await;
    reg.register("global", &v2_without_default()).await;
    reg.shutdown().await;
}

#[tokio::test]
async fn transitive_levels_check_every_live_version() {
    let reg = registry().await;
    let v3 = v2_without_default();
    // v3 reads v2's data (b is present) but not v1's (b missing, no default).
    for (subject, level) in [("plain", "BACKWARD"), ("transitive", "BACKWARD_TRANSITIVE")] {
        reg.set_level(Some(subject), level).await;
        reg.register(subject, &v1()).await;
        reg.register(subject, &v2_with_default()).await;
    }
    reg.register("plain", &v3).await;
    let msg = reg
        .try_register("transitive", &v3)
        .await
        .expect_error(409, 409)
        .to_string();
    assert!(msg.contains("{oldSchemaVersion: 1}"), "{msg}");

    // FORWARD_TRANSITIVE and FULL_TRANSITIVE look at every version in the same way.
    reg.set_level(Some("transitive"), "FULL_TRANSITIVE").await;
    reg.try_register("transitive", &v3)
        .await
        .expect_error(409, 409);
    reg.set_level(Some("fwt"), "FORWARD_TRANSITIVE").await;
    // v1 has `b` without a default, v2 with one: a schema without `b` is readable by v2 but
    // not by v1.
    reg.register("fwt", &v2_without_default()).await;
    reg.set_level(Some("fwt"), "NONE").await;
    reg.register(
        "fwt",
        &record(&[
            field("a", "int"),
            field_with_default("b", "string", json!("x")),
        ]),
    )
    .await;
    reg.set_level(Some("fwt"), "FORWARD").await;
    let without_b = record(&[field("a", "int")]);
    let compat = reg
        .post(
            "/compatibility/subjects/fwt/versions",
            json!({ "schema": without_b }),
        )
        .await;
    assert_eq!(compat.expect_ok(), &json!({ "is_compatible": true }));
    reg.set_level(Some("fwt"), "FORWARD_TRANSITIVE").await;
    let compat = reg
        .post(
            "/compatibility/subjects/fwt/versions",
            json!({ "schema": without_b }),
        )
        .await;
    assert_eq!(compat.expect_ok(), &json!({ "is_compatible": false }));
    reg.shutdown().await;
}

#[tokio::test]
async fn compatibility_endpoint() {
    let reg = registry().await;
    reg.register("s", &v1()).await;

    let path = "/compatibility/subjects/s/versions/latest";
    let yes = reg.post(path, json!({ "schema": v2_with_default() })).await;
    assert_eq!(yes.expect_ok(), &json!({ "is_compatible": true }));
    let no = reg
        .post(path, json!({ "schema": v2_without_default() }))
        .await;
    assert_eq!(no.expect_ok(), &json!({ "is_compatible": false }));
    let verbose = reg
        .post(
            "/compatibility/subjects/s/versions/1?verbose=true",
            json!({ "schema": v2_without_default() }),
        )
        .await;
    let body = verbose.expect_ok();
    assert_eq!(body["is_compatible"], json!(false));
    let messages = body["messages"].as_array().expect("messages");
    assert!(messages.iter().any(|m| m
        .as_str()
        .is_some_and(|m| m.contains("READER_FIELD_MISSING_DEFAULT_VALUE"))));
    let verbose_yes = reg
        .post(
            "/compatibility/subjects/s/versions/1?verbose=true",
            json!({ "schema": v2_with_default() }),
        )
        .await;
    assert_eq!(
        verbose_yes.expect_ok(),
        &json!({ "is_compatible": true, "messages": [] })
    );

    reg.post(
        "/compatibility/subjects/nope/versions/latest",
        json!({ "schema": v1() }),
    )
    .await
    .expect_error(404, 40401);
    reg.post(
        "/compatibility/subjects/s/versions/7",
        json!({ "schema": v1() }),
    )
    .await
    .expect_error(404, 40402);
    reg.post(path, json!({ "schema": "{\"type\":\"record\"" }))
        .await
        .expect_error(422, 42201);
    reg.post(
        "/compatibility/subjects/s/versions/zero",
        json!({ "schema": v1() }),
    )
    .await
    .expect_error(422, 42202);
    // Checking is not registering.
    assert_eq!(reg.versions("s").await, json!([1]));
    reg.shutdown().await;
}

#[tokio::test]
async fn soft_and_hard_deletes() {
    let reg = registry().await;
    let id1 = reg.register("s", &v1()).await;
    let id2 = reg.register("s", &v2_with_default()).await;

    // A version must be soft-deleted before it can be hard-deleted.
    let msg = reg
        .delete("/subjects/s/versions/2?permanent=true")
        .await
        .expect_error(404, 40407)
        .to_string();
    assert!(msg.contains("not deleted first"), "{msg}");
    assert_eq!(
        reg.delete("/subjects/s/versions/2").await.expect_ok(),
        &json!(2)
    );
    reg.delete("/subjects/s/versions/2")
        .await
        .expect_error(404, 40406);

    // Soft-deleted: hidden from versions, latest and lookups, still there on request.
    assert_eq!(reg.versions("s").await, json!([1]));
    assert_eq!(
        reg.get("/subjects/s/versions?deleted=true")
            .await
            .expect_ok(),
        &json!([1, 2])
    );
    reg.get("/subjects/s/versions/2")
        .await
        .expect_error(404, 40402);
    assert_eq!(
        reg.get("/subjects/s/versions/2?deleted=true")
            .await
            .expect_ok()["id"],
        json!(id2)
    );
    assert_eq!(
        reg.get("/subjects/s/versions/latest").await.expect_ok()["version"],
        json!(1)
    );
    reg.post("/subjects/s", json!({ "schema": v2_with_default() }))
        .await
        .expect_error(404, 40403);
    // Data written with it must stay readable: the id is still served.
    reg.get(&format!("/schemas/ids/{id2}")).await.expect_ok();

    // A soft-deleted version takes no part in compatibility checks: against v1 alone, a
    // schema that is incompatible only with v2 is accepted.
    let only_breaks_v2 = record(&[field("a", "int"), field_with_default("b", "int", json!(0))]);
    let id3 = reg.register("s", &only_breaks_v2).await;
    assert_eq!(
        reg.get("/subjects/s/versions?deleted=true")
            .await
            .expect_ok(),
        &json!([1, 2, 3])
    );

    // Re-registering a soft-deleted schema makes a new version with the same id.
    reg.set_level(Some("s"), "NONE").await;
    assert_eq!(reg.register("s", &v2_with_default()).await, id2);
    assert_eq!(reg.versions("s").await, json!([1, 3, 4]));

    // Hard delete after soft delete.
    assert_eq!(
        reg.delete("/subjects/s/versions/2?permanent=true")
            .await
            .expect_ok(),
        &json!(2)
    );
    assert_eq!(
        reg.get("/subjects/s/versions?deleted=true")
            .await
            .expect_ok(),
        &json!([1, 3, 4])
    );

    // Subjects: soft first, then permanent.
    reg.delete("/subjects/s?permanent=true")
        .await
        .expect_error(404, 40405);
    assert_eq!(
        reg.delete("/subjects/s").await.expect_ok(),
        &json!([1, 3, 4])
    );
    reg.delete("/subjects/s").await.expect_error(404, 40404);
    assert_eq!(reg.get("/subjects").await.expect_ok(), &json!([]));
    assert_eq!(
        reg.get("/subjects?deleted=true").await.expect_ok(),
        &json!(["s"])
    );
    reg.get("/subjects/s/versions")
        .await
        .expect_error(404, 40401);
    assert_eq!(
        reg.delete("/subjects/s?permanent=true").await.expect_ok(),
        &json!([1, 3, 4])
    );
    assert_eq!(
        reg.get("/subjects?deleted=true").await.expect_ok(),
        &json!([])
    );
    reg.delete("/subjects/s").await.expect_error(404, 40401);
    reg.delete("/subjects/s/versions/1")
        .await
        .expect_error(404, 40401);
    // Nothing refers to these ids any more.
    for id in [id1, id2, id3] {
        reg.get(&format!("/schemas/ids/{id}"))
            .await
            .expect_error(404, 40403);
    }
    // Registering a hard-deleted schema again gets its old id back.
    assert_eq!(reg.register("s", &v1()).await, id1);
    assert_eq!(reg.versions("s").await, json!([1]));
    reg.shutdown().await;
}

#[tokio::test]
async fn invalid_requests() {
    let reg = registry().await;

    let msg = reg
        .try_register("s", r#"{"type":"record","name":"R"}"#)
        .await
        .expect_error(422, 42201)
        .to_string();
    assert!(msg.starts_with("Invalid schema"), "{msg}");
    assert!(msg.len() > "Invalid schema: ".len(), "no reason in {msg}");
    reg.try_register("s", "not json at all")
        .await
        .expect_error(422, 42201);
    reg.try_register("s", r#"{"type":"integer"}"#)
        .await
        .expect_error(422, 42201);

    let msg = reg
        .post(
            "/subjects/s/versions",
            json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" }),
        )
        .await
        .expect_error(422, 42201)
        .to_string();
    assert!(msg.contains("AVRO"), "{msg}");
    reg.post("/subjects/s/versions", json!({ "schema": 5 }))
        .await
        .expect_error(422, 42201);
    reg.post("/subjects/s/versions", json!({}))
        .await
        .expect_error(422, 42201);
    reg.post(
        "/subjects/s/versions",
        json!({ "schema": v1(), "references": [{ "name": "x", "subject": "y", "version": 1 }] }),
    )
    .await
    .expect_error(422, 42201);

    // Malformed JSON.
    let response = reg
        .http
        .post(format!("{}/subjects/s/versions", reg.base))
        .header(CONTENT_TYPE, MEDIA_TYPE)
        .body("{\"schema\": ")
        .send()
        .await
        .expect("answered");
    Answer::read(response).await.expect_error(422, 422);

    // Nothing was registered along the way.
    assert_eq!(reg.get("/subjects").await.expect_ok(), &json!([]));

    // Unknown routes and methods.
    let answer = reg.get("/no/such/route").await;
    assert_eq!(answer.expect_error(404, 404), "HTTP 404 Not Found");
    assert_eq!(answer.content_type, MEDIA_TYPE);
    reg.get("/schemas/ids/abc").await.expect_error(404, 404);
    reg.call(Method::PATCH, "/subjects", None)
        .await
        .expect_error(405, 405);
    assert_eq!(reg.get("/").await.expect_ok(), &json!({}));
    reg.shutdown().await;
}

#[tokio::test]
async fn content_types_and_body_limit() {
    let topic = fresh_topic();
    let mut config = config(&topic);
    config.max_body_bytes = 16 * 1024;
    let (reg, _) = start_timed(config).await;

    // Every answer carries Confluent's media type: successes, errors, raw schemas.
    reg.register("s", &v1()).await;
    for path in [
        "/subjects",
        "/subjects/s/versions/1",
        "/subjects/s/versions/1/schema",
        "/subjects/missing/versions",
        "/config",
    ] {
        let answer = reg.get(path).await;
        assert_eq!(answer.content_type, MEDIA_TYPE, "{path}");
    }

    // The request media types clients use are all accepted, as is none at all.
    let body = json!({ "schema": v2_with_default() }).to_string();
    for content_type in [
        Some("application/json"),
        Some("application/vnd.schemaregistry+json"),
        Some("application/vnd.schemaregistry.v1+json; charset=utf-8"),
        Some("application/octet-stream"),
        None,
    ] {
        let mut request = reg
            .http
            .post(format!(
                "{}/compatibility/subjects/s/versions/latest",
                reg.base
            ))
            .body(body.clone());
        if let Some(ct) = content_type {
            request = request.header(CONTENT_TYPE, ct);
        }
        let answer = Answer::read(request.send().await.expect("answered")).await;
        assert_eq!(
            answer.expect_ok(),
            &json!({ "is_compatible": true }),
            "{content_type:?}"
        );
    }
    let refused = reg
        .http
        .post(format!("{}/subjects/s/versions", reg.base))
        .header(CONTENT_TYPE, "text/plain")
        .body(body.clone())
        .send()
        .await
        .expect("answered");
    Answer::read(refused).await.expect_error(415, 415);

    // Over the limit: 413 with a Confluent body, and nothing registered.
    let padding = "x".repeat(20 * 1024);
    let big = record(&[field_with_default("a", "string", Value::String(padding))]);
    let answer = reg.try_register("big", &big).await;
    let msg = answer.expect_error(413, 413).to_string();
    assert!(msg.contains("16384"), "{msg}");
    assert_eq!(answer.content_type, MEDIA_TYPE);
    reg.get("/subjects/big/versions")
        .await
        .expect_error(404, 40401);
    // The server is fine afterwards.
    assert_eq!(reg.versions("s").await, json!([1]));
    reg.shutdown().await;
}

#[tokio::test]
async fn logical_types_and_defaults_are_part_of_a_schema() {
    let reg = registry().await;
    reg.set_level(None, "NONE").await;
    let plain = reg.register("t", r#""long""#).await;
    let timestamp = reg
        .register("t", r#"{"type":"long","logicalType":"timestamp-millis"}"#)
        .await;
    assert_ne!(plain, timestamp);
    let served = reg.get(&format!("/schemas/ids/{timestamp}")).await;
    assert!(served.expect_ok()["schema"]
        .as_str()
        .is_some_and(|s| s.contains("timestamp-millis")));
    reg.shutdown().await;
}

#[tokio::test]
async fn concurrent_registrations_are_serialised() {
    let reg = registry().await;
    reg.set_level(None, "NONE").await;
    // Ten distinct schemas and ten copies of one, all at once, into one subject.
    let distinct: Vec<String> = (0..10)
        .map(|i| record(&[field(&format!("f{i}"), "int")]))
        .collect();
    let same = record(&[field("same", "long")]);
    let requests = distinct
        .iter()
        .chain(std::iter::repeat_n(&same, 10))
        .map(|schema| reg.try_register("busy", schema));
    let answers = futures::future::join_all(requests).await;
    let ids: Vec<i64> = answers
        .iter()
        .map(|a| a.expect_ok()["id"].as_i64().expect("an id"))
        .collect();
    let mut distinct_ids = ids[..10].to_vec();
    distinct_ids.sort_unstable();
    distinct_ids.dedup();
    assert_eq!(distinct_ids.len(), 10, "{ids:?}");
    assert!(ids[10..].iter().all(|id| *id == ids[10]), "{ids:?}");
    assert!(!distinct_ids.contains(&ids[10]));
    // Eleven schemas, eleven versions, numbered without gaps.
    assert_eq!(
        reg.versions("busy").await,
        json!((1..=11).collect::<Vec<_>>())
    );
    reg.shutdown().await;
}

#[tokio::test]
async fn subjects_with_reserved_characters() {
    let reg = registry().await;
    // Clients escape a slash in a subject name as %2F (schema_registry_converter does).
    let id = reg.register("team%2Forders-value", &v1()).await;
    assert_eq!(
        reg.get("/subjects").await.expect_ok(),
        &json!(["team/orders-value"])
    );
    let fetched = reg
        .get("/subjects/team%2Forders-value/versions/latest")
        .await;
    assert_eq!(fetched.expect_ok()["id"], json!(id));
    assert_eq!(fetched.json["subject"], json!("team/orders-value"));
    reg.shutdown().await;
}
