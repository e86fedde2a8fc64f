//! A record whose schema id the registry does not know (yet) against the real broker, a
//! registry of the test's own and PostgreSQL: retried through the grace period, so a schema
//! registered meanwhile (a registry that failed over and caught up) loses nothing; dead-lettered
//! once the grace is over.

mod runner_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_common::*;
use tributary_registry::{Compatibility, RegistryConfig, RunningRegistry};
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::dlq::{dlq_topic, ERROR_CLASS, ERROR_MESSAGE};
use tributary_runtime::kafka::unique_name;
use tributary_schemas::codec::{frame, split_header};
use tributary_schemas::types::UserEventEnvelope;
use tributary_schemas::{AvroRecord, Codec};
use tributary_sinks::postgres::{PostgresConfig, PostgresProjection, PostgresWriter};
use tributary_sinks::runner::EventStream;

const WAIT: Duration = Duration::from_secs(60);

async fn registry() -> RunningRegistry {
    tributary_registry::start(RegistryConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        brokers: KAFKA_BROKERS.get(),
        topic: unique_name("_schemas-unknown-id-test"),
        max_body_bytes: 1 << 20,
        default_compatibility: Compatibility::Backward,
    })
    .await
    .expect("registry starts against the broker")
}

/// `event` as the wire format would carry it with schema id `id`, without asking a registry.
fn framed(id: u32, event: &UserEventEnvelope) -> Vec<u8> {
    let value = event.to_avro().expect("to avro");
    let writer =
        apache_avro::writer::datum::GenericDatumWriter::builder(UserEventEnvelope::schema())
            .build()
            .expect("datum writer");
    let mut datum = Vec::new();
    writer.write_value(&mut datum, value).expect("datum");
    frame(id, &datum)
}

async fn fresh_store() -> PostgresWriter {
    let config = PostgresConfig {
        schema: Some(unique_name("grace").replace('-', "_")),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    };
    PostgresWriter::connect(&config)
        .await
        .expect("postgres reachable and migrated")
}

async fn user_row(writer: &PostgresWriter, id: &str) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(writer.pool())
        .await
        .expect("query")
        == 1
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_registered_within_the_grace_is_not_dead_lettered() {
    let reg = registry().await;
    let url = format!("http://{}", reg.addr);
    // The registry hands out ids in order: a probe subject's id says which one the users
    // schema will get when it is registered.
    let probe = Codec::new(&url);
    let probe_bytes = probe
        .encode_value(
            &unique_name("probe"),
            r#"{"type":"record","name":"Probe","fields":[{"name":"n","type":"long"}]}"#,
            apache_avro::types::Value::Record(vec![(
                "n".into(),
                apache_avro::types::Value::Long(1),
            )]),
        )
        .await
        .expect("probe registered");
    let next_id = split_header(&probe_bytes).expect("header").0 + 1;

    let sources = topics("grace", &[EventStream::Users], 1).await;
    let writer = fresh_store().await;
    let codec = Arc::new(Codec::new(&url).with_unknown_schema_grace(WAIT));
    let config = sink_config("grace", &sources);
    let group = config.group_id.clone();
    let sink = Running::start_with_codec(
        config,
        codec,
        Arc::new(PostgresProjection),
        Arc::new(writer.clone()),
    );
    let event = user_registered("u-grace", 1);
    produce(
        &sources,
        &[Rec {
            stream: EventStream::Users,
            key: "u-grace".into(),
            value: Some(framed(next_id, &event)),
        }],
    )
    .await;

    // Retried, not dead-lettered, while the registry does not know the id.
    eventually("the sink to retry the unknown id", WAIT, || async {
        (sink.metrics.retries() >= 2).then_some(())
    })
    .await;
    assert_eq!(sink.metrics.dlq(), 0);
    assert!(!user_row(&writer, "u-grace").await);

    // The registry learns the schema (it got the id the record was framed with): the record
    // goes through, and nothing was dead-lettered.
    let registered = Codec::new(&url).encode(&event).await.expect("registered");
    assert_eq!(split_header(&registered).expect("header").0, next_id);
    eventually("the row once the schema is known", WAIT, || async {
        user_row(&writer, "u-grace").await.then_some(())
    })
    .await;
    wait_caught_up(&group, &sources, WAIT).await;
    assert_eq!(sink.metrics.dlq(), 0);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_still_unknown_after_the_grace_is_dead_lettered() {
    let reg = registry().await;
    let url = format!("http://{}", reg.addr);
    let grace = Duration::from_secs(4);
    let sources = topics("grace-over", &[EventStream::Users], 1).await;
    let writer = fresh_store().await;
    let codec = Arc::new(Codec::new(&url).with_unknown_schema_grace(grace));
    let config = sink_config("grace-over", &sources);
    let group = config.group_id.clone();
    let sink = Running::start_with_codec(
        config,
        codec,
        Arc::new(PostgresProjection),
        Arc::new(writer.clone()),
    );
    let event = user_registered("u-never", 1);
    let started = Instant::now();
    produce(
        &sources,
        &[Rec {
            stream: EventStream::Users,
            key: "u-never".into(),
            value: Some(framed(4_000_000, &event)),
        }],
    )
    .await;
    eventually("the sink to retry the unknown id", WAIT, || async {
        (sink.metrics.retries() >= 1).then_some(())
    })
    .await;
    assert_eq!(sink.metrics.dlq(), 0, "not within the grace");

    let topic = topic_of(&sources, EventStream::Users);
    let letters = read_topic(&dlq_topic(&topic), 1, WAIT);
    assert_eq!(letters.len(), 1);
    assert!(
        started.elapsed() >= grace,
        "dead-lettered after {:?}, before the {grace:?} grace",
        started.elapsed()
    );
    assert_eq!(
        letters[0].headers.get(ERROR_CLASS).map(String::as_str),
        Some("decode")
    );
    assert!(
        letters[0].headers[ERROR_MESSAGE].contains("4000000"),
        "{:?}",
        letters[0].headers
    );
    wait_caught_up(&group, &sources, WAIT).await;
    assert!(!user_row(&writer, "u-never").await);
    sink.stop().await;
}
