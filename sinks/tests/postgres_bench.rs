//! Throughput of the PostgreSQL writer against two references on the same server: a raw `COPY`
//! of the same rows (the ceiling) and a row-by-row `INSERT ... ON CONFLICT` loop (the floor).
//! Run with `cargo test -p tributary-sinks --release --test postgres_bench -- --ignored --nocapture`.

use std::time::Instant;

use serde_json::json;
use tributary_runtime::kafka::unique_name;
use tributary_sinks::change::{Change, Op, ViewWriter};
use tributary_sinks::postgres::{PostgresConfig, PostgresWriter};

const ROWS: usize = 20_000;
const BATCH: usize = 1_000;
const ROW_BY_ROW: usize = 2_000;

fn order(i: usize) -> Change {
    Change {
        view: "orders",
        key: format!("o{i}"),
        version: 1,
        event_time_ms: 1_764_000_000_000,
        op: Op::Upsert(
            json!({"user_id": format!("u{}", i % 100), "status": "PLACED", "currency": "EUR",
                   "total_cents": i as i64, "placed_at": "2025-11-24T16:00:00Z"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        ),
    }
}

#[tokio::test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn postgres_writer_throughput() {
    let config = PostgresConfig {
        schema: Some(unique_name("bench").replace('-', "_")),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    let writer = PostgresWriter::connect(&config).await.expect("postgres");
    let pool = writer.pool().clone();
    let changes: Vec<Change> = (0..ROWS).map(order).collect();

    let started = Instant::now();
    for chunk in changes.chunks(BATCH) {
        writer.write(chunk).await.expect("write");
    }
    let sink_rate = ROWS as f64 / started.elapsed().as_secs_f64();

    sqlx::query("CREATE TABLE copy_ceiling (LIKE orders INCLUDING ALL)")
        .execute(&pool)
        .await
        .expect("table");
    let mut text = String::new();
    for i in 0..ROWS {
        text.push_str(&format!(
            "o{i}\tu{}\tPLACED\tEUR\t{i}\t\\N\t\\N\t\\N\t2025-11-24T16:00:00Z\t1\t2025-11-24T16:00:00Z\n",
            i % 100
        ));
    }
    let started = Instant::now();
    let mut conn = pool.acquire().await.expect("connection");
    let mut copy = conn
        .copy_in_raw("COPY copy_ceiling FROM STDIN")
        .await
        .expect("copy");
    copy.send(text.into_bytes()).await.expect("send");
    copy.finish().await.expect("finish");
    drop(conn);
    let copy_rate = ROWS as f64 / started.elapsed().as_secs_f64();

    sqlx::query("CREATE TABLE row_by_row (LIKE orders INCLUDING ALL)")
        .execute(&pool)
        .await
        .expect("table");
    let started = Instant::now();
    for i in 0..ROW_BY_ROW {
        sqlx::query(
            "INSERT INTO row_by_row (id, user_id, status, currency, total_cents, version, updated_at) \
             VALUES ($1, $2, 'PLACED', 'EUR', $3, 1, now()) \
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, version = EXCLUDED.version \
             WHERE row_by_row.version < EXCLUDED.version",
        )
        .bind(format!("o{i}"))
        .bind(format!("u{}", i % 100))
        .bind(i as i64)
        .execute(&pool)
        .await
        .expect("insert");
    }
    let row_rate = ROW_BY_ROW as f64 / started.elapsed().as_secs_f64();

    println!(
        "postgres sink: {sink_rate:.0} rows/s; COPY ceiling {copy_rate:.0} rows/s (sink = {:.2}x of COPY); \
         row-by-row INSERT {row_rate:.0} rows/s (sink = {:.1}x row-by-row)",
        sink_rate / copy_rate,
        sink_rate / row_rate
    );
    let _ = sqlx::query(&format!(
        "DROP SCHEMA \"{}\" CASCADE",
        config.schema.as_deref().unwrap_or_default()
    ))
    .execute(&pool)
    .await;
}
