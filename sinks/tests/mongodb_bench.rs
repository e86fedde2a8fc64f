//! Throughput of the MongoDB writer against the server's own bulk path (`insert_many` of the same
//! documents in the same batches, unconditional: the ceiling of what this server takes) and an
//! `insert_one` loop.
//! Ignored by default (timing, not correctness):
//! `cargo test -p tributary-sinks --release --test mongodb_bench -- --ignored --nocapture`.

use std::time::Instant;

use mongodb::bson::Document;
use serde_json::json;
use tributary_runtime::config::MONGODB_URL;
use tributary_runtime::kafka::unique_name;
use tributary_sinks::change::{Change, Op, ViewWriter};
use tributary_sinks::mongodb::projection::PRODUCTS;
use tributary_sinks::mongodb::{migrate, to_document, MongoWriter};

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
                    "description": "a thing", "unit_price_cents": 1000 + i,
                    "currency": "EUR", "available": 10, "reserved": 0,
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
async fn mongodb_writer_throughput_vs_insert_one_loop() {
    let writer = MongoWriter::connect(&MONGODB_URL.get(), &unique_name("tributary-bench"))
        .await
        .expect("client");
    migrate(writer.database()).await.expect("migrate");
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

    let plain = writer.database().collection::<Document>("plain");
    let started = Instant::now();
    for c in &all {
        let Op::Upsert(fields) = &c.op else { continue };
        let mut d = to_document(fields);
        d.insert("_id", &c.key);
        plain.insert_one(d).await.expect("insert");
    }
    let loop_secs = started.elapsed().as_secs_f64();

    let bulk = writer.database().collection::<Document>("bulk");
    let started = Instant::now();
    for batch in all.chunks(BATCH) {
        let docs = batch.iter().filter_map(|c| {
            let Op::Upsert(fields) = &c.op else {
                return None;
            };
            let mut d = to_document(fields);
            d.insert("_id", &c.key);
            Some(d)
        });
        bulk.insert_many(docs).await.expect("insert_many");
    }
    let bulk_secs = started.elapsed().as_secs_f64();
    let _ = writer.database().drop().await;

    let rate = |secs: f64| RECORDS as f64 / secs;
    println!(
        "mongodb: writer {:.0}/s, replay (all stale) {:.0}/s, server's bulk insert_many {:.0}/s, insert_one loop {:.0}/s; writer/bulk = {:.2}, writer/loop = {:.2}",
        rate(writer_secs),
        rate(replay_secs),
        rate(bulk_secs),
        rate(loop_secs),
        bulk_secs / writer_secs,
        loop_secs / writer_secs
    );
}
