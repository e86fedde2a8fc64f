//! The data-growth sampler against the real stores: each view's entity count as written by the
//! sinks' own writers, in a namespace of the test's own (PG schema, Mongo database, Redis key
//! prefix, ES index prefix).

mod runner_common;

use runner_common::*;
use tributary_runtime::config::{ELASTICSEARCH_URL, MONGODB_URL, REDIS_URL};
use tributary_runtime::kafka::unique_name;
use tributary_sinks::change::{coalesce, Change, ViewWriter};
use tributary_sinks::elasticsearch::{self as es, EsWriter};
use tributary_sinks::growth::{GrowthMetrics, ViewSize};
use tributary_sinks::mongodb::{self as mongo, MongoWriter};
use tributary_sinks::postgres::{PostgresConfig, PostgresProjection, PostgresWriter};
use tributary_sinks::redis::{RedisConfig, RedisProjection, RedisWriter};
use tributary_sinks::runner::{Event, Projection};

/// Three products and two users, through `projection`, written by `writer`.
async fn feed(projection: &dyn Projection, writer: &dyn ViewWriter) {
    let events = [
        Event::Inventory(product_added("p1", 1, 5)),
        Event::Inventory(product_added("p2", 1, 5)),
        Event::Inventory(product_added("p3", 1, 5)),
        Event::User(user_registered("u1", 1)),
        Event::User(user_registered("u2", 1)),
    ];
    let mut changes: Vec<Change> = Vec::new();
    for e in &events {
        changes.extend(projection.project(e).expect("projects"));
    }
    writer.write(&coalesce(changes)).await.expect("written");
}

fn entities(sizes: &[ViewSize], view: &str) -> Option<i64> {
    sizes
        .iter()
        .find(|s| s.view == view)
        .and_then(|s| s.entities)
}

#[tokio::test]
async fn every_store_reports_its_views_sizes() {
    // PostgreSQL: users only (products live elsewhere); exact and estimated counts, and bytes.
    let schema = unique_name("growth").replace('-', "_");
    let pg = PostgresWriter::connect(&PostgresConfig {
        schema: Some(schema.clone()),
        url: tributary_runtime::config::DATABASE_URL.get(),
        ..PostgresConfig::default()
    })
    .await
    .expect("postgres");
    feed(&PostgresProjection, &pg).await;
    let sizes = tributary_sinks::postgres::growth::sample(pg.pool(), true)
        .await
        .expect("pg sample");
    assert_eq!(entities(&sizes, "users"), Some(2), "{sizes:?}");
    assert_eq!(entities(&sizes, "orders"), Some(0));
    assert!(sizes.iter().all(|s| s.bytes.unwrap_or(0) > 0), "{sizes:?}");
    assert!(!sizes.iter().any(|s| s.view.starts_with('_')));

    // MongoDB: products.
    let mongo_w = MongoWriter::connect(&MONGODB_URL.get(), &unique_name("growth"))
        .await
        .expect("mongodb");
    mongo::migrate(mongo_w.database()).await.expect("migrate");
    feed(&mongo::projection::MongoProjection, &mongo_w).await;
    let sizes = mongo::growth::sample(mongo_w.database())
        .await
        .expect("mongo sample");
    assert_eq!(entities(&sizes, "products"), Some(3), "{sizes:?}");

    // Redis: product keys under the test's prefix, and the server's memory.
    let prefix = format!("{}:v1", unique_name("growth"));
    let redis_w = RedisWriter::connect(RedisConfig {
        url: REDIS_URL.get(),
        prefix: prefix.clone(),
        ..RedisConfig::default()
    })
    .await
    .expect("redis");
    feed(&RedisProjection::default(), &redis_w).await;
    let mut conn = redis_w.connection();
    let sizes = tributary_sinks::redis::growth::sample(&mut conn, &format!("{prefix}:"))
        .await
        .expect("redis sample");
    assert_eq!(entities(&sizes, "product"), Some(3), "{sizes:?}");
    assert!(sizes
        .iter()
        .any(|s| s.view.is_empty() && s.bytes.unwrap_or(0) > 0));

    // Elasticsearch: products behind the alias (after a refresh), and a missing alias is empty.
    let es_w = EsWriter::connect(
        &ELASTICSEARCH_URL.get(),
        format!("{}-", unique_name("growth")),
    )
    .expect("es");
    es::migrate(es_w.client(), es_w.prefix())
        .await
        .expect("indices");
    feed(&es::projection::EsProjection, &es_w).await;
    let aliases = vec![es_w.alias("products"), es_w.alias("no-such-view")];
    let _ = es_w
        .client()
        .indices()
        .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[
            aliases[0].as_str(),
        ]))
        .send()
        .await;
    let sizes = es::growth::sample(es_w.client(), &aliases)
        .await
        .expect("es sample");
    assert_eq!(entities(&sizes, &aliases[0]), Some(3), "{sizes:?}");
    assert_eq!(entities(&sizes, &aliases[1]), Some(0));

    // The gauges carry what was sampled.
    let registry = prometheus::Registry::new();
    let m = GrowthMetrics::new(&registry).expect("metrics");
    m.record(&sizes);
    let families = registry.gather();
    let entities_family = families
        .iter()
        .find(|f| f.name() == "tributary_sink_view_entities")
        .expect("entities gauge");
    assert!(entities_family
        .get_metric()
        .iter()
        .any(|x| x.get_gauge().value() == 3.0));

    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pg.pool())
        .await;
    let _ = mongo_w.database().drop().await;
}
