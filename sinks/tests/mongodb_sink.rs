//! The MongoDB sink end to end: records on the real broker → runner → MongoDB views, with a
//! store rejection dead-lettered and a tombstone applied. Own topics, group and database.

mod runner_common;

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use runner_common::*;
use tributary_runtime::config::MONGODB_URL;
use tributary_runtime::dlq::{dlq_topic, ERROR_CLASS};
use tributary_runtime::kafka::unique_name;
use tributary_schemas::types::*;
use tributary_sinks::mongodb::projection::{MongoProjection, NOTIFICATIONS, PRODUCTS};
use tributary_sinks::mongodb::{migrate, MongoWriter};
use tributary_sinks::runner::EventStream;

async fn ids(writer: &MongoWriter, collection: &str) -> Vec<String> {
    let mut cursor = match writer
        .database()
        .collection::<Document>(collection)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
    {
        Ok(c) => c,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    while let Ok(true) = cursor.advance().await {
        if let Ok(d) = cursor.deserialize_current() {
            out.push(d.get_str("_id").unwrap_or_default().to_string());
        }
    }
    out
}

#[tokio::test]
async fn mongodb_sink_applies_the_log_and_dead_letters_a_rejected_record() {
    let writer = MongoWriter::connect(&MONGODB_URL.get(), &unique_name("tributary-test"))
        .await
        .expect("client");
    migrate(writer.database()).await.expect("migrate");
    let sources = topics(
        "mongo",
        &[EventStream::Inventory, EventStream::Notifications],
        1,
    )
    .await;
    let codec = codec();
    // p3 reuses p1's sku: the unique index refuses it, a poison record for this store.
    let mut p3 = product_added("p3", 1, 1);
    if let InventoryEvent::ProductAdded(e) = &mut p3.payload {
        e.sku = "SKU-p1".into();
    }
    let notification = env::<NotificationEvent>(
        "u1",
        1,
        NotificationSent {
            notification_id: "n1".into(),
            user_id: "u1".into(),
            template_id: "welcome".into(),
            channel: NotificationChannel::Email,
            rendered_text: "Welcome!".into(),
        },
    );
    let inv = EventStream::Inventory;
    let records = vec![
        encode(&codec, inv, "p1", &product_added("p1", 1, 10)).await,
        encode(&codec, inv, "p2", &product_added("p2", 1, 4)).await,
        encode(&codec, inv, "p3", &p3).await,
        encode(&codec, EventStream::Notifications, "u1", &notification).await,
        encode(&codec, inv, "p1", &product_restocked("p1", 2, 15)).await,
        Rec {
            stream: inv,
            key: "p2".into(),
            value: None,
        },
    ];
    produce(&sources, &records).await;

    let running = Running::start(
        sink_config("mongodb", &sources),
        Arc::new(MongoProjection),
        Arc::new(writer.clone()),
    );
    let result = tokio::spawn({
        let writer = writer.clone();
        let sources = sources.clone();
        async move {
            eventually(
                "products p1 restocked, p2 deleted",
                Duration::from_secs(60),
                || {
                    let writer = writer.clone();
                    async move {
                        let p1 = writer
                            .database()
                            .collection::<Document>(PRODUCTS)
                            .find_one(doc! { "_id": "p1", "version": 2_i64 })
                            .await
                            .ok()
                            .flatten()?;
                        let products = ids(&writer, PRODUCTS).await;
                        (products == ["p1"]).then_some(p1)
                    }
                },
            )
            .await;
            assert_eq!(ids(&writer, NOTIFICATIONS).await, vec!["n1"]);
            let p1 = writer
                .database()
                .collection::<Document>(PRODUCTS)
                .find_one(doc! { "_id": "p1" })
                .await
                .expect("find")
                .expect("p1");
            assert_eq!(p1.get_i64("available"), Ok(15));
            assert_eq!(p1.get_i64("reserved"), Ok(2));
            let letters = read_topic(
                &dlq_topic(&topic_of(&sources, EventStream::Inventory)),
                1,
                Duration::from_secs(30),
            );
            assert_eq!(letters.len(), 1);
            assert_eq!(letters[0].key.as_deref(), Some(&b"p3"[..]));
            assert_eq!(
                letters[0].headers.get(ERROR_CLASS).map(String::as_str),
                Some("rejected")
            );
        }
    })
    .await;
    running.stop().await;
    let _ = writer.database().drop().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
