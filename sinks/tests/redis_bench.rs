//! Throughput of the Redis writer (versioned compare-and-set script, pipelined per batch)
//! against a raw pipeline of plain `HSET`s of the same fields, and redis-benchmark's pipelined
//! `HSET` when it is installed.
//! Run with `cargo test -p tributary-sinks --release --test redis_bench -- --ignored --nocapture`.

use std::time::Instant;

use redis::aio::ConnectionManager;
use serde_json::json;
use tributary_runtime::config::REDIS_URL;
use tributary_runtime::kafka::unique_name;
use tributary_sinks::change::{Change, Op, ViewWriter};
use tributary_sinks::redis::{RedisConfig, RedisWriter};

const KEYS: usize = 20_000;
const BATCH: usize = 1_000;

fn order(i: usize) -> Change {
    Change {
        view: "order",
        key: format!("o{i}"),
        version: 1,
        event_time_ms: 1_764_000_000_000,
        op: Op::Upsert(
            json!({"status": "PLACED", "user_id": format!("u{}", i % 100), "total_cents": i, "currency": "EUR"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
    }
}

#[tokio::test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn redis_writer_throughput() {
    let prefix = unique_name("bench-redis") + ":v1";
    let writer = RedisWriter::connect(RedisConfig {
        url: REDIS_URL.get(),
        prefix: prefix.clone(),
        ..RedisConfig::default()
    })
    .await
    .expect("redis");
    let changes: Vec<Change> = (0..KEYS).map(order).collect();
    let started = Instant::now();
    for chunk in changes.chunks(BATCH) {
        writer.write(chunk).await.expect("write");
    }
    let sink_rate = KEYS as f64 / started.elapsed().as_secs_f64();

    let client = redis::Client::open(REDIS_URL.get()).expect("url");
    let mut conn = ConnectionManager::new(client).await.expect("redis");
    let started = Instant::now();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(BATCH) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("HSET")
                .arg(format!("{prefix}:raw:o{i}"))
                .arg("status")
                .arg("PLACED")
                .arg("user_id")
                .arg(format!("u{}", i % 100))
                .arg("total_cents")
                .arg(i)
                .arg("currency")
                .arg("EUR")
                .arg("_version")
                .arg(1)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.expect("pipeline");
    }
    let raw_rate = KEYS as f64 / started.elapsed().as_secs_f64();
    println!(
        "redis sink: {sink_rate:.0} keys/s; raw pipelined HSET {raw_rate:.0} keys/s (sink = {:.2}x)",
        sink_rate / raw_rate
    );

    let url = REDIS_URL.get();
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "6379"));
    if let Ok(out) = std::process::Command::new("redis-benchmark")
        .args([
            "-h", host, "-p", port, "-t", "hset", "-n", "100000", "-P", "1000", "-q",
        ])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        println!("redis-benchmark: {}", text.trim());
        if let Some(rps) = text
            .split_whitespace()
            .zip(text.split_whitespace().skip(1))
            .find(|(_, unit)| unit.starts_with("requests"))
            .and_then(|(n, _)| n.parse::<f64>().ok())
        {
            println!(
                "sink = {:.2}x of redis-benchmark pipelined HSET",
                sink_rate / rps
            );
        }
    }

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}
