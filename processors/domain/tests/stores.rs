//! The saga's paths end to end through the broker into the four stores: commands → domain
//! processors → event topics → the real sinks → PostgreSQL, MongoDB, Redis and Elasticsearch.
//! Every store is a namespace of its own (PG schema, Mongo database, Redis key prefix, ES index
//! prefix), and the topics carry the test's prefix.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mongodb::bson::{doc, Document};
use tokio_util::sync::CancellationToken;
use tributary_processors::DomainApp;
use tributary_runtime::config::{ELASTICSEARCH_URL, MONGODB_URL, REDIS_URL};
use tributary_runtime::kafka::unique_name;
use tributary_schemas::domain::*;
use tributary_sinks::change::ViewWriter;
use tributary_sinks::elasticsearch::{self as es, EsWriter};
use tributary_sinks::metrics::Metrics;
use tributary_sinks::mongodb::{self as mongo, MongoWriter};
use tributary_sinks::postgres::{PostgresConfig, PostgresProjection, PostgresWriter};
use tributary_sinks::redis::{RedisConfig, RedisProjection, RedisWriter};
use tributary_sinks::runner::{EventStream, Projection, Sink, SinkConfig, SourceTopic};

const WAIT: Duration = Duration::from_secs(90);

/// A sink's name, its store's projection and writer.
type NamedSink = (&'static str, Arc<dyn Projection>, Arc<dyn ViewWriter>);

struct Stores {
    pg: PostgresWriter,
    pg_schema: String,
    mongo: MongoWriter,
    redis: RedisWriter,
    es: EsWriter,
}

impl Stores {
    async fn fresh() -> Stores {
        let pg_schema = unique_name("saga").replace('-', "_");
        let pg = PostgresWriter::connect(&PostgresConfig {
            schema: Some(pg_schema.clone()),
            url: tributary_runtime::config::DATABASE_URL.get(),
            ..PostgresConfig::default()
        })
        .await
        .expect("postgres reachable and migrated");
        let mongo = MongoWriter::connect(&MONGODB_URL.get(), &unique_name("saga"))
            .await
            .expect("mongodb");
        mongo::migrate(mongo.database())
            .await
            .expect("mongo migrations");
        let redis = RedisWriter::connect(RedisConfig {
            url: REDIS_URL.get(),
            prefix: format!("{}:v1", unique_name("saga")),
            ..RedisConfig::default()
        })
        .await
        .expect("redis");
        let es = EsWriter::connect(
            &ELASTICSEARCH_URL.get(),
            format!("{}-", unique_name("saga")),
        )
        .expect("elasticsearch");
        es::migrate(es.client(), es.prefix())
            .await
            .expect("es indices");
        Stores {
            pg,
            pg_schema,
            mongo,
            redis,
            es,
        }
    }

    /// Starts the four sinks on the pipeline's event topics; returns their stop token.
    fn start_sinks(&self, p: &Pipeline) -> (CancellationToken, Vec<tokio::task::JoinHandle<()>>) {
        let t = &p.cfg.topics;
        let sources = [
            SourceTopic {
                topic: t.events_users(),
                stream: EventStream::Users,
            },
            SourceTopic {
                topic: t.events_inventory(),
                stream: EventStream::Inventory,
            },
            SourceTopic {
                topic: t.events_orders(),
                stream: EventStream::Orders,
            },
            SourceTopic {
                topic: t.events_payments(),
                stream: EventStream::Payments,
            },
            SourceTopic {
                topic: t.events_notifications(),
                stream: EventStream::Notifications,
            },
        ];
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).expect("sink metrics");
        let stop = CancellationToken::new();
        let sinks: Vec<NamedSink> = vec![
            (
                "postgres",
                Arc::new(PostgresProjection),
                Arc::new(self.pg.clone()),
            ),
            (
                "mongodb",
                Arc::new(mongo::projection::MongoProjection),
                Arc::new(self.mongo.clone()),
            ),
            (
                "redis",
                Arc::new(RedisProjection::default()),
                Arc::new(self.redis.clone()),
            ),
            (
                "elasticsearch",
                Arc::new(es::projection::EsProjection),
                Arc::new(self.es.clone()),
            ),
        ];
        let mut handles = Vec::new();
        for (name, projection, writer) in sinks {
            let streams = projection.streams().to_vec();
            let mut config = SinkConfig::new(name);
            config.brokers = tributary_runtime::config::KAFKA_BROKERS.get();
            config.group_id = format!("{}sink-{name}", t.prefix);
            config.sources = sources
                .iter()
                .filter(|s| streams.contains(&s.stream))
                .cloned()
                .collect();
            config.batch_linger = Duration::from_millis(20);
            let sink = Sink::new(config, p.codec.clone(), projection, writer, &metrics);
            let stop = stop.clone();
            handles.push(tokio::spawn(async move {
                sink.run(stop)
                    .await
                    .unwrap_or_else(|e| panic!("the {name} sink ran cleanly: {e}"));
            }));
        }
        (stop, handles)
    }

    async fn pg_status(&self, table: &str, id: &str) -> Option<String> {
        sqlx::query_scalar::<_, Option<String>>(&format!(
            "SELECT status FROM \"{}\".{table} WHERE id = $1",
            self.pg_schema
        ))
        .bind(id)
        .fetch_optional(self.pg.pool())
        .await
        .expect("pg query")
        .flatten()
    }

    async fn pg_order_events(&self, id: &str) -> Vec<String> {
        sqlx::query_scalar::<_, String>(&format!(
            "SELECT type FROM \"{}\".order_events WHERE aggregate_id = $1 ORDER BY sequence",
            self.pg_schema
        ))
        .bind(id)
        .fetch_all(self.pg.pool())
        .await
        .expect("pg query")
    }

    async fn mongo_product(&self, id: &str) -> Option<(i64, i64)> {
        let d: Document = self
            .mongo
            .database()
            .collection::<Document>("products")
            .find_one(doc! { "_id": id })
            .await
            .expect("mongo query")?;
        let num = |f: &str| {
            d.get_i64(f)
                .ok()
                .or_else(|| d.get_i32(f).ok().map(i64::from))
        };
        Some((num("available")?, num("reserved")?))
    }

    async fn mongo_notifications(&self, user: &str) -> u64 {
        self.mongo
            .database()
            .collection::<Document>("notifications")
            .count_documents(doc! { "user_id": user })
            .await
            .expect("mongo count")
    }

    async fn redis_status(&self, order: &str) -> Option<String> {
        let mut conn = self.redis.connection();
        let v: Option<String> = redis::cmd("HGET")
            .arg(self.redis.key("order", order))
            .arg("status")
            .query_async(&mut conn)
            .await
            .expect("redis HGET");
        v.map(|s| s.trim_matches('"').to_string())
    }

    async fn es_status(&self, order: &str) -> Option<String> {
        let resp = self
            .es
            .client()
            .get(elasticsearch::GetParts::IndexId(
                &self.es.alias("orders"),
                order,
            ))
            .send()
            .await
            .expect("es get");
        if resp.status_code().as_u16() == 404 {
            return None;
        }
        let body: serde_json::Value = resp.json().await.expect("es body");
        body["_source"]["status"].as_str().map(str::to_string)
    }

    async fn drop(self) {
        let _ = sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.pg_schema
        ))
        .execute(self.pg.pool())
        .await;
        let _ = self.mongo.database().drop().await;
    }
}

/// Polls `check` until it returns true, or panics naming `what` at the deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_path_ends_in_all_four_stores() {
    // A timeout long enough for the orders that do get answers, short enough for the test.
    let mut p = Pipeline::new("saga-stores", Duration::from_secs(8)).await;
    let stores = Stores::fresh().await;
    let (stop_sinks, sinks) = stores.start_sinks(&p);

    // Timeout first: inventory answers, payments is not running, the saga gives up.
    p.start(DomainApp::Inventory);
    p.start(DomainApp::Orders);
    p.start(DomainApp::Notifications);
    p.add_product("p-a", 250, 10).await;
    p.add_product("p-b", 1000, 1).await;
    p.send(Pipeline::place_order("o-slow", "u-1", &[("p-a", 1)]))
        .await;
    let mut orders = p.reader::<OrderEvent>(p.cfg.topics.events_orders());
    orders
        .until("o-slow's outcome", |e| has_outcomes(e, &["o-slow"]))
        .await;

    // Now with payments: success, stock-out, decline.
    p.start(DomainApp::Payments);
    p.send(Pipeline::place_order(
        "o-ok",
        "u-1",
        &[("p-a", 2), ("p-b", 1)],
    ))
    .await;
    orders
        .until("o-ok's outcome", |e| has_outcomes(e, &["o-ok"]))
        .await;
    p.send(Pipeline::place_order("o-out", "u-1", &[("p-b", 1)]))
        .await;
    p.send(Pipeline::place_order(
        "o-decl",
        "u-2-declines",
        &[("p-a", 3)],
    ))
    .await;
    let all = ["o-slow", "o-ok", "o-out", "o-decl"];
    orders
        .until("every outcome", |e| has_outcomes(e, &all))
        .await;

    let want = [
        ("o-slow", "CANCELLED"),
        ("o-ok", "CONFIRMED"),
        ("o-out", "CANCELLED"),
        ("o-decl", "CANCELLED"),
    ];
    for (order, status) in want {
        eventually(&format!("{order} {status} in PostgreSQL"), || async {
            stores.pg_status("orders", order).await.as_deref() == Some(status)
        })
        .await;
        eventually(&format!("{order} {status} in Redis"), || async {
            stores.redis_status(order).await.as_deref() == Some(status)
        })
        .await;
        eventually(&format!("{order} {status} in Elasticsearch"), || async {
            stores.es_status(order).await.as_deref() == Some(status)
        })
        .await;
    }
    // PostgreSQL also keeps the order event store and the payments.
    assert_eq!(
        stores.pg_order_events("o-ok").await,
        vec!["OrderPlaced", "OrderConfirmed"]
    );
    eventually("o-ok's payment captured in PostgreSQL", || async {
        stores.pg_status("payments", "pay-o-ok").await.as_deref() == Some("CAPTURED")
    })
    .await;
    eventually("o-decl's payment declined in PostgreSQL", || async {
        stores.pg_status("payments", "pay-o-decl").await.as_deref() == Some("DECLINED")
    })
    .await;
    // The timed-out order's late authorization is refunded when payments comes up.
    eventually("o-slow's payment refunded in PostgreSQL", || async {
        stores.pg_status("payments", "pay-o-slow").await.as_deref() == Some("REFUNDED")
    })
    .await;
    assert_eq!(stores.pg_status("payments", "pay-o-out").await, None);

    // MongoDB: stock levels after all of it. p-a: 10 - 2 sold (o-slow and o-decl released);
    // p-b: its one unit sold to o-ok, o-out got none.
    eventually("stock levels in MongoDB", || async {
        stores.mongo_product("p-a").await == Some((8, 0))
            && stores.mongo_product("p-b").await == Some((0, 0))
    })
    .await;
    // One notification per order outcome: u-1 had three orders, u-2 one.
    eventually("notifications in MongoDB", || async {
        stores.mongo_notifications("u-1").await == 3
            && stores.mongo_notifications("u-2-declines").await == 1
    })
    .await;

    p.stop_all().await;
    stop_sinks.cancel();
    for h in sinks {
        tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("sinks stop within 30 s")
            .expect("sink task");
    }
    stores.drop().await;
}
