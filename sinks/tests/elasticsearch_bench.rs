//! Throughput of the Elasticsearch writer against a raw `_bulk` of the same documents (no
//! versions). Ignored by default (timing, not correctness):
//! `cargo test -p tributary-sinks --release --test elasticsearch_bench -- --ignored --nocapture`.

use std::time::Instant;

use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::Method;
use serde_json::json;
use tributary_runtime::config::ELASTICSEARCH_URL;
use tributary_runtime::kafka::unique_name;
use tributary_sinks::change::{Change, Op, ViewWriter};
use tributary_sinks::elasticsearch::indices::drop_all;
use tributary_sinks::elasticsearch::projection::PRODUCTS;
use tributary_sinks::elasticsearch::{migrate, EsWriter};

const RECORDS: i64 = 5_000;
const BATCH: usize = 500;

fn changes() -> Vec<Change> {
    (0..RECORDS)
        .map(|i| Change {
            view: PRODUCTS,
            key: format!("p{i}"),
            version: 1,
            event_time_ms: i,
            op: Op::Upsert(
                json!({
                    "sku": format!("SKU-{i}"), "name": format!("product {i}"),
                    "description": "a thing", "price_cents": 1000 + i,
                    "currency": "EUR", "stock": 10,
                })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ),
        })
        .collect()
}

#[tokio::test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn elasticsearch_writer_throughput_vs_raw_bulk() {
    let prefix = format!("{}-", unique_name("tributary-bench"));
    let writer = EsWriter::connect(&ELASTICSEARCH_URL.get(), prefix.clone()).expect("client");
    migrate(writer.client(), &prefix).await.expect("migrate");
    let all = changes();

    let started = Instant::now();
    for batch in all.chunks(BATCH) {
        writer.write(batch).await.expect("write");
    }
    let writer_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    for batch in all.chunks(BATCH) {
        writer.write(batch).await.expect("replay");
    }
    let replay_secs = started.elapsed().as_secs_f64();

    // The same documents as a plain `_bulk` into a second copy of the index.
    let raw_alias = format!("{prefix}raw-");
    migrate(writer.client(), &raw_alias)
        .await
        .expect("migrate raw");
    let index = format!("{raw_alias}{PRODUCTS}");
    let started = Instant::now();
    for batch in all.chunks(BATCH) {
        let mut body = String::new();
        for c in batch {
            let Op::Upsert(fields) = &c.op else { continue };
            body.push_str(&json!({"index": {"_index": index, "_id": c.key}}).to_string());
            body.push('\n');
            body.push_str(&serde_json::Value::Object(fields.clone()).to_string());
            body.push('\n');
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        writer
            .client()
            .send(
                Method::Post,
                "/_bulk",
                headers,
                Option::<&()>::None,
                Some(body),
                None,
            )
            .await
            .expect("bulk");
    }
    let raw_secs = started.elapsed().as_secs_f64();
    let _ = drop_all(writer.client(), &prefix).await;
    let _ = drop_all(writer.client(), &raw_alias).await;

    let rate = |secs: f64| RECORDS as f64 / secs;
    println!(
        "elasticsearch: writer {:.0}/s, replay (all stale) {:.0}/s, raw _bulk {:.0}/s; writer/raw = {:.2}",
        rate(writer_secs),
        rate(replay_secs),
        rate(raw_secs),
        raw_secs / writer_secs
    );
}
