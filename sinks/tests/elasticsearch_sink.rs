//! The Elasticsearch sink end to end: records on the real broker → runner → search indices,
//! replayed twice and with a tombstone. Own topics, group and index prefix.

mod runner_common;

use std::sync::Arc;
use std::time::Duration;

use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::Method;
use runner_common::*;
use serde_json::{json, Value};
use tributary_runtime::config::ELASTICSEARCH_URL;
use tributary_runtime::kafka::unique_name;
use tributary_sinks::elasticsearch::indices::drop_all;
use tributary_sinks::elasticsearch::projection::{EsProjection, ORDERS, PRODUCTS};
use tributary_sinks::elasticsearch::{migrate, EsWriter};
use tributary_sinks::runner::EventStream;

/// `(id, _version, status-or-stock)` of every document of `view`, sorted by id.
async fn docs(writer: &EsWriter, view: &str) -> Vec<(String, i64, Value)> {
    let alias = writer.alias(view);
    let send = |method, path: String, body: Option<String>| async move {
        let response = writer
            .client()
            .send(
                method,
                &path,
                HeaderMap::new(),
                Option::<&()>::None,
                body,
                None,
            )
            .await
            .ok()?;
        response.json::<Value>().await.ok()
    };
    send(Method::Post, format!("/{alias}/_refresh"), None).await;
    let body = json!({ "size": 100, "version": true }).to_string();
    let Some(reply) = send(Method::Post, format!("/{alias}/_search"), Some(body)).await else {
        return Vec::new();
    };
    let mut out: Vec<(String, i64, Value)> = reply["hits"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let source = &h["_source"];
            let field = if view == ORDERS {
                source["status"].clone()
            } else {
                source["stock"].clone()
            };
            (
                h["_id"].as_str().unwrap_or_default().to_string(),
                h["_version"].as_i64().unwrap_or(-1),
                field,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn elasticsearch_sink_applies_the_log_replayed_twice() {
    let prefix = format!("{}-", unique_name("tributary-test"));
    let writer = EsWriter::connect(&ELASTICSEARCH_URL.get(), prefix.clone()).expect("client");
    migrate(writer.client(), &prefix).await.expect("migrate");
    let sources = topics("es", &[EventStream::Inventory, EventStream::Orders], 1).await;
    let codec = codec();
    let inv = EventStream::Inventory;
    let ord = EventStream::Orders;
    let log = vec![
        encode(&codec, inv, "p1", &product_added("p1", 1, 10)).await,
        encode(&codec, ord, "o1", &order_placed("o1", "u1", 1, 2500)).await,
        encode(&codec, ord, "o2", &order_placed("o2", "u2", 1, 900)).await,
        encode(&codec, inv, "p2", &product_added("p2", 1, 4)).await,
        encode(&codec, ord, "o1", &order_confirmed("o1", "u1", 2, 2500)).await,
        encode(&codec, inv, "p1", &product_restocked("p1", 2, 15)).await,
        encode(&codec, ord, "o2", &order_cancelled("o2", "u2", 2)).await,
        Rec {
            stream: inv,
            key: "p2".into(),
            value: None,
        },
    ];
    // The log, then the same log again (a replay): the second pass must change nothing.
    let twice = [log.clone(), log].concat();
    produce(&sources, &twice).await;

    let running = Running::start(
        sink_config("elasticsearch", &sources),
        Arc::new(EsProjection),
        Arc::new(writer.clone()),
    );
    let result = tokio::spawn({
        let writer = writer.clone();
        async move {
            let want_orders = vec![
                ("o1".to_string(), 2, json!("CONFIRMED")),
                ("o2".to_string(), 2, json!("CANCELLED")),
            ];
            let want_products = vec![("p1".to_string(), 2, json!(15))];
            eventually("the views", Duration::from_secs(60), || {
                let writer = writer.clone();
                let (want_orders, want_products) = (want_orders.clone(), want_products.clone());
                async move {
                    (docs(&writer, ORDERS).await == want_orders
                        && docs(&writer, PRODUCTS).await == want_products)
                        .then_some(())
                }
            })
            .await;
        }
    })
    .await;
    running.stop().await;
    let _ = drop_all(writer.client(), &prefix).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
