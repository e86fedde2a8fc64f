//! `tributary dlq list|show|replay`, run as an operator would against the real broker, registry,
//! PostgreSQL and Redis (the repair lock): a PostgreSQL sink dead-letters a user's changes
//! while a constraint an operator added refuses them, the operator drops the constraint,
//! `dlq replay` re-drives them and the view has zero drift, with the user's later patch applied
//! over the registration it had missed. A processor's dead letter is re-driven to its command
//! topic. Each test has its own topic prefix and database.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_runtime::config::{DATABASE_URL, KAFKA_BROKERS, SCHEMA_REGISTRY_URL};
use tributary_runtime::dlq;
use tributary_runtime::kafka::{client_config, unique_name};
use tributary_schemas::domain::*;
use tributary_schemas::types::{Envelope, TopicPayload};
use tributary_schemas::Codec;

const WAIT: Duration = Duration::from_secs(90);

fn tributary(args: &[&str], db: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tributary"));
    c.args(args);
    if let Some(db) = db {
        c.env("TRIBUTARY_DATABASE_URL", db);
    }
    c.output().expect("the tributary binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A database of its own on the local server, and its URL.
async fn database(tag: &str) -> (sqlx::PgPool, String) {
    let name = unique_name(tag).replace('-', "_");
    let admin = sqlx::PgPool::connect(&DATABASE_URL.get())
        .await
        .expect("PostgreSQL reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    // The server's URL with the database swapped: `postgres://user@host:port/<name>`.
    let base = DATABASE_URL.get();
    let url = format!(
        "{}/{name}",
        &base[..base.rfind('/').expect("a URL with a database")]
    );
    let pool = sqlx::PgPool::connect(&url).await.expect("test database");
    (pool, url)
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn send<P: TopicPayload>(
    producer: &FutureProducer,
    codec: &Codec,
    topic: &str,
    key: &str,
    env: &Envelope<P>,
) {
    let bytes = codec.encode(env).await.expect("encodes");
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&bytes),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
}

fn user_event(user: &str, seq: i64, payload: impl Into<UserEvent>) -> Envelope<UserEvent> {
    Envelope::new(user, unique_name("flow"), payload).with_sequence(seq)
}

struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn row(pool: &sqlx::PgPool, id: &str) -> Option<(Option<String>, Option<String>, i64)> {
    sqlx::query_as("SELECT email, display_name, version FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sinks_dead_letters_are_replayed_through_a_repair_once_the_cause_is_fixed() {
    let prefix = format!("{}.", unique_name("dlq-replay"));
    let out = tributary(
        &[
            "topics",
            "create",
            "--partitions",
            "1",
            "--topic-prefix",
            &prefix,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let (pool, db) = database("dlq_replay").await;
    let sink = Sink(
        Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args([
                "sink",
                "--store",
                "postgres",
                "--topic-prefix",
                &prefix,
                "--batch-linger-ms",
                "20",
            ])
            .env("TRIBUTARY_DATABASE_URL", &db)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sink starts"),
    );
    eventually("the sink's tables", || async {
        sqlx::query("SELECT 1 FROM users LIMIT 1")
            .fetch_optional(&pool)
            .await
            .is_ok()
    })
    .await;
    // An operator's constraint the pipeline's data breaks: the sink dead-letters (a data
    // error, SQLSTATE 23514) what it refuses.
    sqlx::query(
        "ALTER TABLE users ADD CONSTRAINT no_blocked CHECK (email NOT LIKE '%@blocked.example')",
    )
    .execute(&pool)
    .await
    .expect("constraint");

    let codec = Codec::new(&SCHEMA_REGISTRY_URL.get());
    let producer: FutureProducer = client_config(&KAFKA_BROKERS.get())
        .create()
        .expect("producer");
    let topic = format!("{prefix}events.users");
    let registered = |user: &str, email: &str| UserRegistered {
        user_id: user.into(),
        email: email.into(),
        display_name: format!("User {user}"),
        locale: None,
    };
    send(
        &producer,
        &codec,
        &topic,
        "u1",
        &user_event("u1", 1, registered("u1", "u1@example.com")),
    )
    .await;
    send(
        &producer,
        &codec,
        &topic,
        "u2",
        &user_event("u2", 1, registered("u2", "u2@blocked.example")),
    )
    .await;
    // A patch behind the refused registration: applied to a row the registration never made.
    let profile = ProfileUpdated {
        user_id: "u2".into(),
        display_name: "Second".into(),
        avatar_url: None,
        locale: Some("fr-FR".into()),
    };
    send(
        &producer,
        &codec,
        &topic,
        "u2",
        &user_event("u2", 2, profile),
    )
    .await;
    send(
        &producer,
        &codec,
        &topic,
        "u3",
        &user_event("u3", 1, registered("u3", "u3@example.com")),
    )
    .await;
    eventually("u1 and u3 written", || async {
        row(&pool, "u1").await.is_some() && row(&pool, "u3").await.is_some()
    })
    .await;

    let list = || {
        let out = tributary(&["dlq", "list", "--topic-prefix", &prefix, "--json"], None);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .find(|t| t["topic"] == format!("{topic}.dlq"))
                    .map(|t| (t["letters"].as_i64(), t["pending"].as_i64()))
            })
            .unwrap_or((None, None))
    };
    eventually("u2's registration dead-lettered", || async {
        list().0 == Some(1)
    })
    .await;
    assert_eq!(list(), (Some(1), Some(1)));
    let show = tributary(&["dlq", "show", "--topic", &topic, "--json"], None);
    assert!(show.status.success(), "{}", text(&show));
    let letters: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
    let l = &letters[0];
    assert_eq!(l["key"], "u2");
    assert_eq!(l["group"], format!("{prefix}tributary-sink-postgres"));
    assert_eq!(l["source"]["topic"], topic.as_str());
    assert_eq!(l["source"]["offset"], "1");
    assert_eq!(l["class"], "rejected");
    assert_eq!(l["value"]["payload"]["email"], "u2@blocked.example", "{l}");

    // The patch behind the refused registration made a partial row at version 2, which the
    // registration (version 1) produced again would never fix: the version check drops it.
    let (email, name, version) = row(&pool, "u2").await.expect("u2's partial row");
    assert_eq!((email, name.as_deref(), version), (None, Some("Second"), 2));
    let dry = tributary(
        &[
            "dlq",
            "replay",
            "--topic",
            &topic,
            "--topic-prefix",
            &prefix,
            "--dry-run",
        ],
        Some(&db),
    );
    assert!(
        text(&dry).contains("would repair postgres"),
        "{}",
        text(&dry)
    );
    assert_eq!(list(), (Some(1), Some(1)), "a dry run changes nothing");

    // The cause fixed, the letters re-driven: the view is the log's again.
    sqlx::query("ALTER TABLE users DROP CONSTRAINT no_blocked")
        .execute(&pool)
        .await
        .expect("drop constraint");
    let replay = tributary(
        &[
            "dlq",
            "replay",
            "--topic",
            &topic,
            "--topic-prefix",
            &prefix,
        ],
        Some(&db),
    );
    assert!(replay.status.success(), "{}", text(&replay));
    assert!(
        text(&replay).contains("0 still drifting"),
        "{}",
        text(&replay)
    );
    let (email, name, version) = row(&pool, "u2").await.expect("u2 repaired");
    assert_eq!(email.as_deref(), Some("u2@blocked.example"));
    assert_eq!(name.as_deref(), Some("Second"), "the later patch kept");
    assert_eq!(version, 2);
    let reconcile = tributary(
        &[
            "reconcile",
            "--store",
            "postgres",
            "--topic-prefix",
            &prefix,
            "--lock-wait-secs",
            "60",
            "--json",
        ],
        Some(&db),
    );
    assert!(
        reconcile.status.success(),
        "zero drift: {}",
        text(&reconcile)
    );
    assert_eq!(
        list(),
        (Some(1), Some(0)),
        "nothing pending after the replay"
    );
    let again = tributary(
        &[
            "dlq",
            "replay",
            "--topic",
            &topic,
            "--topic-prefix",
            &prefix,
        ],
        Some(&db),
    );
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("0 pending letter(s)"),
        "{}",
        text(&again)
    );
    drop(sink);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processors_dead_letter_is_produced_again_to_its_source_topic_and_refusals_are_not() {
    let prefix = format!("{}.", unique_name("dlq-reproduce"));
    let out = tributary(
        &[
            "topics",
            "create",
            "--partitions",
            "1",
            "--topic-prefix",
            &prefix,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let source = format!("{prefix}commands.inventory");
    let codec = Codec::new(&SCHEMA_REGISTRY_URL.get());
    let add: Envelope<InventoryCommand> = Envelope::new(
        "p1",
        "flow-1",
        AddProduct {
            product_id: "p1".into(),
            sku: "SKU-1".into(),
            name: "p1".into(),
            description: None,
            unit_price_cents: 100,
            currency: "EUR".into(),
            initial_stock: 1,
        },
    );
    let bytes = codec.encode(&add).await.expect("encodes");
    let producer: FutureProducer = client_config(&KAFKA_BROKERS.get())
        .create()
        .expect("producer");
    // Two dead letters as the inventory app writes them: one failed while the registry was
    // away (replayable), one refused for a business reason (answered: not replayed).
    for (class, offset) in [("decode", "7"), (dlq::REJECTED_CLASS, "8")] {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trace-id",
                value: Some("t-1"),
            })
            .insert(Header {
                key: dlq::SOURCE_TOPIC,
                value: Some(source.as_str()),
            })
            .insert(Header {
                key: dlq::SOURCE_PARTITION,
                value: Some("0"),
            })
            .insert(Header {
                key: dlq::SOURCE_OFFSET,
                value: Some(offset),
            })
            .insert(Header {
                key: dlq::CONSUMER_GROUP,
                value: Some("tributary-inventory"),
            })
            .insert(Header {
                key: dlq::ERROR_CLASS,
                value: Some(class),
            })
            .insert(Header {
                key: dlq::ERROR_MESSAGE,
                value: Some("schema registry unavailable"),
            });
        producer
            .send(
                FutureRecord::to(&dlq::dlq_topic(&source))
                    .key("p1")
                    .payload(&bytes)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("dead letter written");
    }
    let replay = tributary(
        &[
            "dlq",
            "replay",
            "--topic",
            &source,
            "--topic-prefix",
            &prefix,
        ],
        None,
    );
    assert!(replay.status.success(), "{}", text(&replay));
    let t = text(&replay);
    assert!(
        t.contains("2 pending letter(s)") && t.contains("skipped 1: refused commands"),
        "{t}"
    );
    assert!(t.contains("produced 1 letter(s) again"), "{t}");

    // The command is back on its topic once, bytes, key and the producer's headers unchanged.
    let c: rdkafka::consumer::BaseConsumer = client_config(&KAFKA_BROKERS.get())
        .set("group.id", unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader");
    use rdkafka::consumer::Consumer;
    use rdkafka::message::{Headers, Message};
    c.subscribe(&[&source]).expect("subscribe");
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while Instant::now() < deadline && got.is_empty() {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let headers: Vec<(String, String)> = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                headers,
            ));
        }
    }
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(200)) {
            got.push((None, None, Vec::new()));
        }
    }
    assert_eq!(got.len(), 1, "one record re-driven");
    let (key, value, headers) = &got[0];
    assert_eq!(key.as_deref(), Some(&b"p1"[..]));
    assert_eq!(value.as_deref(), Some(bytes.as_slice()));
    assert!(headers.contains(&("trace-id".into(), "t-1".into())));
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == dlq::REPLAYED_FROM && v.starts_with(&format!("{source}.dlq/"))),
        "{headers:?}"
    );
    assert!(headers
        .iter()
        .all(|(k, _)| !k.starts_with("dlq.") || k == dlq::REPLAYED_FROM));

    // Nothing is pending any more; a second replay re-drives nothing.
    let again = tributary(
        &[
            "dlq",
            "replay",
            "--topic",
            &source,
            "--topic-prefix",
            &prefix,
        ],
        None,
    );
    assert!(
        text(&again).contains("0 pending letter(s)"),
        "{}",
        text(&again)
    );
}
