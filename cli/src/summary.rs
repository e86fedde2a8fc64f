//! `tributary summary`: what the log holds and what each store shows of it.
//!
//! Records per topic (and per dead-letter topic), each sink group's lag, and the size of every
//! view: rows per PostgreSQL table, documents per MongoDB collection, keys per Redis view and
//! documents per Elasticsearch alias. `--wait` polls until every sink group has caught up with
//! the event topics, which is how the demo knows the views are complete.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tributary_runtime::config::{
    DATABASE_URL, ELASTICSEARCH_URL, KAFKA_BROKERS, MONGODB_URL, REDIS_URL,
};
use tributary_runtime::kafka::client_config;
use tributary_schemas::types::ALL_TOPICS;

const SINKS: [&str; 4] = ["postgres", "mongodb", "redis", "elasticsearch"];
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(ClapArgs)]
pub struct Args {
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    brokers: String,
    /// Wait up to this many seconds for every sink group to catch up first.
    #[arg(long)]
    wait: Option<u64>,
    /// MongoDB database of the views.
    #[arg(long, default_value = "tributary")]
    mongodb_database: String,
    /// Prefix of the Elasticsearch aliases.
    #[arg(long, default_value = "tributary-")]
    index_prefix: String,
    /// Prefix of the Redis keys.
    #[arg(long, default_value = "tributary:v1:")]
    key_prefix: String,
}

/// Low and high watermark per partition.
type Watermarks = BTreeMap<i32, (i64, i64)>;

/// Records held per partition of `topic` (high − low watermark), empty when it does not exist.
fn held(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Watermarks> {
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("metadata of {topic}"))?;
    let mut out = BTreeMap::new();
    for t in md.topics() {
        if t.error().is_some() {
            continue;
        }
        for p in t.partitions() {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p.id(), TIMEOUT)
                .with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
            out.insert(p.id(), (lo, hi));
        }
    }
    Ok(out)
}

/// Records of the event topics not yet committed by `group`.
fn lag(brokers: &str, group: &str, events: &[(&str, Watermarks)]) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = client_config(brokers).set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for (topic, parts) in events {
        for p in parts.keys() {
            tpl.add_partition(topic, *p);
        }
    }
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .with_context(|| format!("committed offsets of group {group}"))?;
    let mut total = 0;
    for e in committed.elements() {
        let (lo, hi) = events
            .iter()
            .find(|(t, _)| *t == e.topic())
            .and_then(|(_, parts)| parts.get(&e.partition()))
            .copied()
            .unwrap_or((0, 0));
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => lo,
        };
        total += (hi - at).max(0);
    }
    // This consumer never joined the group nor fetched: dropping it does not stall.
    Ok(total)
}

async fn views(args: &Args) -> Vec<(String, String, Result<i64, String>)> {
    let mut out = Vec::new();
    // PostgreSQL: every table of the views' schema.
    match tributary_sinks::postgres::PostgresConfig::default().pool() {
        Ok(pool) => {
            let tables: Result<Vec<String>, _> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_%' ORDER BY 1",
            )
            .fetch_all(&pool)
            .await;
            match tables {
                Ok(tables) => {
                    for t in tables {
                        let n: Result<i64, _> = sqlx::query_scalar(&format!(
                            "SELECT count(*) FROM \"{}\"",
                            t.replace('"', "\"\"")
                        ))
                        .fetch_one(&pool)
                        .await;
                        out.push(("postgres".into(), t, n.map_err(|e| e.to_string())));
                    }
                }
                Err(e) => out.push(("postgres".into(), DATABASE_URL.get(), Err(e.to_string()))),
            }
        }
        Err(e) => out.push(("postgres".into(), DATABASE_URL.get(), Err(e.to_string()))),
    }
    // MongoDB: every collection.
    match tributary_sinks::mongodb::MongoWriter::connect(&MONGODB_URL.get(), &args.mongodb_database)
        .await
    {
        Ok(w) => match w.database().list_collection_names().await {
            Ok(mut names) => {
                names.sort();
                for c in names.into_iter().filter(|c| !c.starts_with('_')) {
                    let n = w
                        .database()
                        .collection::<mongodb::bson::Document>(&c)
                        .count_documents(mongodb::bson::doc! {})
                        .await
                        .map(|n| n as i64)
                        .map_err(|e| e.to_string());
                    out.push(("mongodb".into(), c, n));
                }
            }
            Err(e) => out.push(("mongodb".into(), MONGODB_URL.get(), Err(e.to_string()))),
        },
        Err(e) => out.push(("mongodb".into(), MONGODB_URL.get(), Err(e.to_string()))),
    }
    // Redis: keys per view, the segment after the prefix.
    match redis_counts(&args.key_prefix).await {
        Ok(counts) => {
            for (view, n) in counts {
                out.push(("redis".into(), view, Ok(n)));
            }
        }
        Err(e) => out.push(("redis".into(), REDIS_URL.get(), Err(e))),
    }
    // Elasticsearch: documents behind each alias.
    match tributary_sinks::elasticsearch::EsWriter::connect(
        &ELASTICSEARCH_URL.get(),
        args.index_prefix.clone(),
    ) {
        Ok(w) => {
            for spec in tributary_sinks::elasticsearch::indices::INDICES {
                let alias = w.alias(spec.view);
                let n = es_count(w.client(), &alias).await;
                out.push(("elasticsearch".into(), alias, n));
            }
        }
        Err(e) => out.push((
            "elasticsearch".into(),
            ELASTICSEARCH_URL.get(),
            Err(e.to_string()),
        )),
    }
    out
}

async fn redis_counts(prefix: &str) -> Result<BTreeMap<String, i64>, String> {
    let client = redis::Client::open(REDIS_URL.get()).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let mut counts = BTreeMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        for k in keys {
            let view = k[prefix.len()..]
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            *counts.entry(view).or_insert(0) += 1;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(counts)
}

async fn es_count(client: &elasticsearch::Elasticsearch, alias: &str) -> Result<i64, String> {
    let resp = client
        .count(elasticsearch::CountParts::Index(&[alias]))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status_code();
    if status.as_u16() == 404 {
        // No sink has created the index yet: an empty view, not a failure.
        return Ok(0);
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    body["count"]
        .as_i64()
        .ok_or_else(|| format!("{status}: {body}"))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let brokers = args.brokers.clone();
    let deadline = args.wait.map(|s| Instant::now() + Duration::from_secs(s));
    let (topics, lags) = loop {
        let b = brokers.clone();
        let (topics, lags) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let consumer: BaseConsumer = client_config(&b).create()?;
            let mut topics = Vec::new();
            for (topic, _) in ALL_TOPICS {
                topics.push((*topic, held(&consumer, topic)?));
            }
            let events: Vec<_> = topics
                .iter()
                .filter(|(t, _)| t.starts_with("events."))
                .cloned()
                .collect();
            let mut lags = Vec::new();
            for sink in SINKS {
                lags.push((sink, lag(&b, &format!("tributary-sink-{sink}"), &events)?));
            }
            Ok((topics, lags))
        })
        .await??;
        let behind: i64 = lags.iter().map(|(_, l)| *l).sum();
        match deadline {
            Some(d) if behind > 0 && Instant::now() < d => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => break (topics, lags),
        }
    };

    println!("topics (records held)");
    let consumer: BaseConsumer = client_config(&brokers).create()?;
    for (topic, parts) in &topics {
        let n: i64 = parts.values().map(|(lo, hi)| hi - lo).sum();
        let dlq_topic = format!("{topic}.dlq");
        let dlq: i64 = held(&consumer, &dlq_topic)?
            .values()
            .map(|(lo, hi)| hi - lo)
            .sum();
        println!("  {topic:<24} {n:>9}   dlq {dlq}");
    }
    println!("sink groups (records behind)");
    for (sink, lag) in &lags {
        println!("  tributary-sink-{sink:<14} {lag:>9}");
    }
    println!("views");
    let mut failed = false;
    for (store, view, n) in views(&args).await {
        match n {
            Ok(n) => println!("  {store:<14} {view:<32} {n:>9}"),
            Err(e) => {
                failed = true;
                println!("  {store:<14} {view:<32} unavailable: {e}");
            }
        }
    }
    let behind: i64 = lags.iter().map(|(_, l)| *l).sum();
    if args.wait.is_some() && behind > 0 {
        eprintln!("the sinks are still {behind} records behind");
        return Ok(ExitCode::from(1));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
