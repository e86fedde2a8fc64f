//! Elasticsearch views against the local server (`TRIBUTARY_ELASTICSEARCH_URL`): projection +
//! writer + versioned indices. Every test uses its own index prefix and deletes its indices and
//! templates, pass or fail.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::Method;
use futures::FutureExt;
use serde_json::{json, Value};
use tributary_runtime::config::ELASTICSEARCH_URL;
use tributary_runtime::kafka::unique_name;
use tributary_schemas::types::*;
use tributary_sinks::change::{Change, Fields, Op, ViewWriter, WriteError, WriteOutcome};
use tributary_sinks::elasticsearch::indices::{drop_all, INDICES};
use tributary_sinks::elasticsearch::projection::{
    project_analytics, project_inventory, project_order, ANALYTICS, ORDERS, PRODUCTS,
};
use tributary_sinks::elasticsearch::{migrate, EsWriter};

const T0: i64 = 1_700_000_000_000;

/// Runs `body` with a writer over a fresh, migrated prefix, and deletes the prefix's indices
/// and templates afterwards, even on panic.
async fn with_prefix<F, Fut>(body: F)
where
    F: FnOnce(EsWriter) -> Fut,
    Fut: Future<Output = ()>,
{
    let prefix = format!("{}-", unique_name("tributary-test"));
    let writer = EsWriter::connect(&ELASTICSEARCH_URL.get(), prefix.clone()).expect("client");
    let result = AssertUnwindSafe(async {
        migrate(writer.client(), &prefix).await.expect("migrate");
        body(writer.clone()).await
    })
    .catch_unwind()
    .await;
    let _ = drop_all(writer.client(), &prefix).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn request(writer: &EsWriter, method: Method, path: &str, body: Option<Value>) -> Value {
    let response = writer
        .client()
        .send(
            method,
            path,
            HeaderMap::new(),
            Option::<&()>::None,
            body.map(|b| b.to_string()),
            None,
        )
        .await
        .expect("request");
    response.json::<Value>().await.unwrap_or(Value::Null)
}

/// Every document of every view: view → id → (`_version`, `_source`).
async fn snapshot(writer: &EsWriter) -> BTreeMap<&'static str, BTreeMap<String, (i64, Value)>> {
    let mut out = BTreeMap::new();
    for view in [PRODUCTS, ORDERS, ANALYTICS] {
        let alias = writer.alias(view);
        request(writer, Method::Post, &format!("/{alias}/_refresh"), None).await;
        let reply = request(
            writer,
            Method::Post,
            &format!("/{alias}/_search"),
            Some(json!({ "size": 1000, "version": true, "query": { "match_all": {} } })),
        )
        .await;
        let mut docs = BTreeMap::new();
        for hit in reply["hits"]["hits"].as_array().into_iter().flatten() {
            let id = hit["_id"].as_str().unwrap_or_default().to_string();
            docs.insert(
                id,
                (
                    hit["_version"].as_i64().unwrap_or(-1),
                    hit["_source"].clone(),
                ),
            );
        }
        out.insert(view, docs);
    }
    out
}

fn env<P>(aggregate: &str, sequence: i64, payload: impl Into<P>) -> Envelope<P> {
    Envelope {
        timestamp: T0 + sequence * 1000,
        ..Envelope::new(aggregate, "corr", payload).with_sequence(sequence)
    }
}

#[derive(Clone)]
enum Record {
    Inventory(String, Option<InventoryEventEnvelope>),
    Order(String, Option<OrderEventEnvelope>),
    Analytics(String, Option<AnalyticsEventEnvelope>),
}

impl Record {
    fn key(&self) -> &str {
        match self {
            Record::Inventory(k, _) | Record::Order(k, _) | Record::Analytics(k, _) => k,
        }
    }

    fn project(&self) -> Vec<Change> {
        match self {
            Record::Inventory(k, v) => project_inventory(k, v.as_ref()),
            Record::Order(k, v) => project_order(k, v.as_ref()),
            Record::Analytics(k, v) => project_analytics(k, v.as_ref()),
        }
    }
}

fn inv(aggregate: &str, sequence: i64, payload: impl Into<InventoryEvent>) -> Record {
    Record::Inventory(aggregate.into(), Some(env(aggregate, sequence, payload)))
}

fn order(aggregate: &str, sequence: i64, payload: impl Into<OrderEvent>) -> Record {
    Record::Order(aggregate.into(), Some(env(aggregate, sequence, payload)))
}

fn analytics(aggregate: &str, sequence: i64, payload: impl Into<AnalyticsEvent>) -> Record {
    Record::Analytics(aggregate.into(), Some(env(aggregate, sequence, payload)))
}

fn added(id: &str, sku: &str, stock: i32) -> ProductAdded {
    ProductAdded {
        product_id: id.into(),
        sku: sku.into(),
        name: format!("name {id}"),
        description: None,
        unit_price_cents: 1000,
        currency: "EUR".into(),
        initial_stock: stock,
    }
}

fn placed(id: &str, user: &str, lines: &[(&str, i32, i64)]) -> OrderPlaced {
    OrderPlaced {
        order_id: id.into(),
        user_id: user.into(),
        lines: lines
            .iter()
            .map(|(p, q, c)| OrderLine {
                product_id: (*p).into(),
                quantity: *q,
                unit_price_cents: *c,
            })
            .collect(),
        currency: "EUR".into(),
        total_cents: lines.iter().map(|(_, q, c)| i64::from(*q) * c).sum(),
    }
}

fn revenue(orders: i64, cents: i64) -> RevenueWindow {
    RevenueWindow {
        window_start: T0,
        window_end: T0 + 60_000,
        currency: "EUR".into(),
        order_count: orders,
        revenue_cents: cents,
    }
}

/// The fixed log: two products, two orders, a revised revenue window, a top-products window.
fn log() -> Vec<Record> {
    vec![
        inv("p1", 1, added("p1", "SKU-1", 10)),
        order("o1", 1, placed("o1", "u1", &[("p1", 2, 1000)])),
        inv("p2", 1, added("p2", "SKU-2", 3)),
        analytics("w1", 1, revenue(1, 2000)),
        inv(
            "p1",
            2,
            ProductUpdated {
                product_id: "p1".into(),
                name: "Widget".into(),
                description: Some("a blue widget".into()),
                unit_price_cents: 1299,
                currency: "EUR".into(),
            },
        ),
        order(
            "o2",
            1,
            placed("o2", "u2", &[("p1", 1, 1000), ("p2", 3, 500)]),
        ),
        order(
            "o1",
            2,
            OrderConfirmed {
                order_id: "o1".into(),
                user_id: "u1".into(),
                payment_id: "pay1".into(),
                total_cents: 2000,
                currency: "EUR".into(),
            },
        ),
        inv(
            "p1",
            3,
            ProductRestocked {
                product_id: "p1".into(),
                quantity: 5,
                available: 13,
                reserved: 2,
            },
        ),
        analytics("w1", 2, revenue(2, 4500)),
        order(
            "o2",
            2,
            OrderCancelled {
                order_id: "o2".into(),
                user_id: "u2".into(),
                reason: CancelReason::UserCancelled,
                detail: None,
            },
        ),
        analytics(
            "w2",
            1,
            TopProducts {
                window_start: T0,
                window_end: T0 + 60_000,
                products: vec![ProductQuantity {
                    product_id: "p1".into(),
                    quantity: 3,
                }],
            },
        ),
        // Ignored by this store: stock movements are order-versioned deltas.
        inv(
            "o1",
            2,
            StockReserved {
                order_id: "o1".into(),
                reserved_items: vec![StockItem {
                    product_id: "p1".into(),
                    quantity: 2,
                }],
            },
        ),
    ]
}

fn expected() -> BTreeMap<&'static str, BTreeMap<String, (i64, Value)>> {
    let docs = |list: Vec<(&str, i64, Value)>| {
        list.into_iter()
            .map(|(id, v, d)| (id.to_string(), (v, d)))
            .collect::<BTreeMap<_, _>>()
    };
    BTreeMap::from([
        (
            PRODUCTS,
            docs(vec![
                (
                    "p1",
                    3,
                    json!({"sku": "SKU-1", "name": "Widget", "description": "a blue widget",
                           "price_cents": 1299, "currency": "EUR", "stock": 13}),
                ),
                (
                    "p2",
                    1,
                    json!({"sku": "SKU-2", "name": "name p2", "description": null,
                           "price_cents": 1000, "currency": "EUR", "stock": 3}),
                ),
            ]),
        ),
        (
            ORDERS,
            docs(vec![
                (
                    "o1",
                    2,
                    json!({"user_id": "u1", "status": "CONFIRMED", "total_cents": 2000,
                           "currency": "EUR", "placed_at": T0 + 1000, "product_ids": ["p1"],
                           "item_count": 2, "payment_id": "pay1"}),
                ),
                (
                    "o2",
                    2,
                    json!({"user_id": "u2", "status": "CANCELLED", "total_cents": 2500,
                           "currency": "EUR", "placed_at": T0 + 1000,
                           "product_ids": ["p1", "p2"], "item_count": 4,
                           "cancel_reason": "USER_CANCELLED"}),
                ),
            ]),
        ),
        (
            ANALYTICS,
            docs(vec![
                (
                    &format!("revenue:EUR:{T0}"),
                    2,
                    json!({"kind": "revenue", "window_start": T0, "window_end": T0 + 60_000,
                           "currency": "EUR", "order_count": 2, "revenue_cents": 4500}),
                ),
                (
                    &format!("top_products:{T0}"),
                    1,
                    json!({"kind": "top_products", "window_start": T0,
                           "window_end": T0 + 60_000,
                           "products": [{"product_id": "p1", "quantity": 3}]}),
                ),
            ]),
        ),
    ])
}

/// The same records interleaved differently across keys, each key's order kept.
fn shuffled(log: &[Record]) -> Vec<Record> {
    let mut queues: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for r in log {
        queues
            .entry(r.key().to_string())
            .or_default()
            .push(r.clone());
    }
    let mut keys: Vec<String> = queues.keys().rev().cloned().collect();
    let mut out = Vec::new();
    let mut seed = 5usize;
    while !keys.is_empty() {
        seed = (seed * 31 + 11) % 97;
        let k = keys[seed % keys.len()].clone();
        let q = queues.get_mut(&k).expect("queue");
        out.push(q.remove(0));
        if q.is_empty() {
            keys.retain(|x| *x != k);
        }
    }
    out
}

async fn apply(writer: &EsWriter, log: &[Record], records_per_batch: usize) -> WriteOutcome {
    let mut total = WriteOutcome::default();
    for chunk in log.chunks(records_per_batch) {
        let changes: Vec<Change> = chunk.iter().flat_map(Record::project).collect();
        let out = writer.write(&changes).await.expect("write");
        total.applied += out.applied;
        total.stale += out.stale;
    }
    total
}

#[tokio::test]
async fn elasticsearch_fixed_log_produces_expected_documents() {
    with_prefix(|writer| async move {
        let out = apply(&writer, &log(), 4).await;
        assert_eq!(out.stale, 0);
        assert_eq!(snapshot(&writer).await, expected());
        // Searchable as mapped: full text on description, a keyword filter, a date range.
        let alias = writer.alias(PRODUCTS);
        let hits = request(
            &writer,
            Method::Post,
            &format!("/{alias}/_search"),
            Some(json!({"query": {"match": {"description": "blue"}}})),
        )
        .await;
        assert_eq!(hits["hits"]["hits"][0]["_id"], "p1", "{hits}");
        let alias = writer.alias(ORDERS);
        let hits = request(
            &writer,
            Method::Post,
            &format!("/{alias}/_search"),
            Some(json!({"query": {"bool": {"filter": [
                {"term": {"user_id": "u2"}},
                {"range": {"placed_at": {"gte": T0, "lt": T0 + 5000}}},
            ]}}})),
        )
        .await;
        assert_eq!(hits["hits"]["hits"][0]["_id"], "o2", "{hits}");
    })
    .await;
}

#[tokio::test]
async fn elasticsearch_replay_and_shuffle_leave_the_same_documents() {
    with_prefix(|writer| async move {
        apply(&writer, &log(), 3).await;
        assert_eq!(snapshot(&writer).await, expected());
        let again = apply(&writer, &log(), 5).await;
        assert_eq!(again.applied, 0, "{again:?}");
        assert!(again.stale > 0);
        apply(&writer, &shuffled(&log()), 1).await;
        assert_eq!(snapshot(&writer).await, expected());
    })
    .await;
    with_prefix(|writer| async move {
        let order = shuffled(&log());
        assert_ne!(
            order.iter().map(Record::key).collect::<Vec<_>>(),
            log().iter().map(Record::key).collect::<Vec<_>>()
        );
        apply(&writer, &order, 2).await;
        assert_eq!(snapshot(&writer).await, expected());
    })
    .await;
}

fn change(key: &str, version: i64, op: Op) -> Change {
    Change {
        view: PRODUCTS,
        key: key.into(),
        version,
        event_time_ms: version,
        op,
    }
}

fn fields(v: Value) -> Fields {
    v.as_object().cloned().expect("object")
}

#[tokio::test]
async fn elasticsearch_stale_versions_are_skipped_and_counted() {
    with_prefix(|writer| async move {
        let out = writer
            .write(&[change(
                "p1",
                5,
                Op::Upsert(fields(json!({"name": "five", "stock": 5}))),
            )])
            .await
            .expect("write");
        assert_eq!(
            out,
            WriteOutcome {
                applied: 1,
                stale: 0
            }
        );
        // An older upsert (409 from the server), an equal patch (seen in _mget), an older
        // delete (409): all stale. q1's patch creates it.
        let out = writer
            .write(&[
                change("p1", 3, Op::Upsert(fields(json!({"name": "three"})))),
                change("q1", 1, Op::Patch(fields(json!({"stock": 1})))),
            ])
            .await
            .expect("write");
        assert_eq!(
            out,
            WriteOutcome {
                applied: 1,
                stale: 1
            }
        );
        let out = writer
            .write(&[change("p1", 5, Op::Patch(fields(json!({"stock": 7}))))])
            .await
            .expect("write");
        assert_eq!(
            out,
            WriteOutcome {
                applied: 0,
                stale: 1
            }
        );
        let out = writer
            .write(&[change("p1", 4, Op::Delete)])
            .await
            .expect("write");
        assert_eq!(
            out,
            WriteOutcome {
                applied: 0,
                stale: 1
            }
        );
        // A newer patch merges into the stored document.
        let out = writer
            .write(&[change("p1", 6, Op::Patch(fields(json!({"stock": 6}))))])
            .await
            .expect("write");
        assert_eq!(
            out,
            WriteOutcome {
                applied: 1,
                stale: 0
            }
        );
        let docs = snapshot(&writer).await;
        assert_eq!(
            docs[PRODUCTS]["p1"],
            (6, json!({"name": "five", "stock": 6}))
        );
        assert_eq!(docs[PRODUCTS]["q1"], (1, json!({"stock": 1})));
    })
    .await;
}

#[tokio::test]
async fn elasticsearch_tombstone_deletes() {
    with_prefix(|writer| async move {
        apply(&writer, &log(), 20).await;
        let out = writer
            .write(&project_order("o1", None))
            .await
            .expect("write");
        assert_eq!(out.applied, 1);
        let out = writer
            .write(&project_inventory("p2", None))
            .await
            .expect("write");
        assert_eq!(out.applied, 1);
        let docs = snapshot(&writer).await;
        assert_eq!(docs[ORDERS].keys().collect::<Vec<_>>(), vec!["o2"]);
        assert_eq!(docs[PRODUCTS].keys().collect::<Vec<_>>(), vec!["p1"]);
    })
    .await;
}

#[tokio::test]
async fn elasticsearch_invalid_documents_are_rejected() {
    with_prefix(|writer| async move {
        // `price_cents` is mapped as long.
        let bad = change("p9", 1, Op::Upsert(fields(json!({"price_cents": "lots"}))));
        match writer.write(&[bad]).await {
            Err(WriteError::Rejected { view, key, .. }) => {
                assert_eq!((view, key.as_str()), (PRODUCTS, "p9"));
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        // The mapping is strict: an unmapped field is refused, and the good change of the
        // same batch still applies.
        let batch = [
            change("p1", 1, Op::Upsert(fields(json!({"name": "ok"})))),
            change("p8", 1, Op::Upsert(fields(json!({"colour": "red"})))),
        ];
        match writer.write(&batch).await {
            Err(WriteError::Rejected { key, .. }) => assert_eq!(key, "p8"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        let docs = snapshot(&writer).await;
        assert_eq!(docs[PRODUCTS].keys().collect::<Vec<_>>(), vec!["p1"]);
    })
    .await;
}

#[tokio::test]
async fn elasticsearch_unreachable_server_is_unavailable() {
    let writer = EsWriter::connect("http://127.0.0.1:1", "nowhere-").expect("client");
    let batch = [
        change("p1", 1, Op::Upsert(fields(json!({"name": "x"})))),
        change("p2", 1, Op::Patch(fields(json!({"name": "y"})))),
    ];
    match writer.write(&batch).await {
        Err(e @ WriteError::Unavailable { .. }) => assert!(e.retriable()),
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn elasticsearch_indices_are_versioned_behind_aliases() {
    with_prefix(|writer| async move {
        let prefix = writer.prefix().to_string();
        // `with_prefix` migrated once; again is a no-op, also from two runners at once.
        let (a, b) = tokio::join!(
            migrate(writer.client(), &prefix),
            migrate(writer.client(), &prefix)
        );
        for report in [a.expect("runner a"), b.expect("runner b")] {
            assert!(report.created.is_empty(), "{report:?}");
            assert!(report.outdated.is_empty(), "{report:?}");
            assert_eq!(report.current.len(), INDICES.len());
        }
        for spec in INDICES {
            let alias = spec.alias(&prefix);
            let reply = request(&writer, Method::Get, &format!("/_alias/{alias}"), None).await;
            let indices: Vec<&String> = reply.as_object().expect("aliases").keys().collect();
            assert_eq!(indices, vec![&spec.index(&prefix)]);
            let mapping = request(
                &writer,
                Method::Get,
                &format!("/{}/_mapping", spec.index(&prefix)),
                None,
            )
            .await;
            assert_eq!(
                mapping[spec.index(&prefix)]["mappings"]["dynamic"],
                "strict",
                "{mapping}"
            );
            let template = request(
                &writer,
                Method::Get,
                &format!("/_index_template/{alias}"),
                None,
            )
            .await;
            assert_eq!(
                template["index_templates"][0]["index_template"]["version"],
                spec.version
            );
        }
    })
    .await;
}

#[tokio::test]
async fn elasticsearch_fresh_prefix_is_created() {
    let prefix = format!("{}-", unique_name("tributary-test"));
    let writer = EsWriter::connect(&ELASTICSEARCH_URL.get(), prefix.clone()).expect("client");
    let result = AssertUnwindSafe(async {
        let report = migrate(writer.client(), &prefix).await.expect("migrate");
        let mut created = report.created.clone();
        created.sort();
        let mut want: Vec<String> = INDICES.iter().map(|s| s.index(&prefix)).collect();
        want.sort();
        assert_eq!(created, want);
    })
    .catch_unwind()
    .await;
    let _ = drop_all(writer.client(), &prefix).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn elasticsearch_projection_follows_the_runner_interface() {
    use tributary_sinks::elasticsearch::projection::{EsProjection, TOMBSTONE_VERSION};
    use tributary_sinks::runner::{Event, EventStream, Projection, Tombstone};
    let p = EsProjection;
    for record in log() {
        let via_trait = match &record {
            Record::Inventory(_, Some(e)) => p.project(&Event::Inventory(e.clone())),
            Record::Order(_, Some(e)) => p.project(&Event::Order(e.clone())),
            Record::Analytics(_, Some(e)) => p.project(&Event::Analytics(e.clone())),
            _ => continue,
        };
        assert_eq!(via_trait.expect("project"), record.project());
    }
    let deleted = p.tombstone(&Tombstone {
        stream: EventStream::Orders,
        key: "o1".into(),
        timestamp_ms: 42,
    });
    assert_eq!(
        deleted,
        vec![Change {
            view: ORDERS,
            key: "o1".into(),
            version: TOMBSTONE_VERSION,
            event_time_ms: 42,
            op: Op::Delete,
        }]
    );
    assert!(p
        .tombstone(&Tombstone {
            stream: EventStream::Analytics,
            key: "w1".into(),
            timestamp_ms: 42,
        })
        .is_empty());
}

#[tokio::test]
async fn elasticsearch_missing_alias_is_unavailable_not_a_new_index() {
    // No migration: the alias does not exist.
    let prefix = format!("{}-", unique_name("tributary-test"));
    let writer = EsWriter::connect(&ELASTICSEARCH_URL.get(), prefix.clone()).expect("client");
    let result = AssertUnwindSafe(async {
        for batch in [
            vec![change("p1", 1, Op::Upsert(fields(json!({"name": "x"}))))],
            vec![change("p1", 1, Op::Patch(fields(json!({"name": "x"}))))],
        ] {
            match writer.write(&batch).await {
                Err(e @ WriteError::Unavailable { .. }) => assert!(e.retriable()),
                other => panic!("expected unavailable, got {other:?}"),
            }
        }
        let alias = writer.alias(PRODUCTS);
        let reply = request(&writer, Method::Get, &format!("/{alias}"), None).await;
        assert_eq!(reply["status"], 404, "no index was auto-created: {reply}");
    })
    .catch_unwind()
    .await;
    let _ = drop_all(writer.client(), &prefix).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn elasticsearch_rebuild_swaps_the_alias() {
    use tributary_sinks::elasticsearch::indices::{alias_target, create_index, swap_alias};
    with_prefix(|writer| async move {
        let prefix = writer.prefix().to_string();
        apply(&writer, &log(), 20).await;
        let v1 = INDICES[0];
        assert_eq!(v1.view, PRODUCTS);
        // A rebuild: the next version's index, filled while v1 serves, then swapped in.
        let v2 = tributary_sinks::elasticsearch::indices::IndexSpec { version: 2, ..v1 };
        assert!(create_index(writer.client(), &prefix, &v2, false)
            .await
            .expect("create v2"));
        let client = writer.client();
        let result = AssertUnwindSafe(async {
            swap_alias(client, &prefix, &v2, &v1.index(&prefix))
                .await
                .expect("swap");
            let alias = v1.alias(&prefix);
            assert_eq!(
                alias_target(client, &alias).await.expect("alias"),
                Some(v2.index(&prefix))
            );
            // Reads through the alias now see the (empty) new index; replaying fills it.
            assert!(snapshot(&writer).await[PRODUCTS].is_empty());
            apply(&writer, &log(), 20).await;
            assert_eq!(snapshot(&writer).await, expected());
            let report = migrate(client, &prefix).await.expect("migrate");
            assert_eq!(report.outdated, vec![alias]);
        })
        .catch_unwind()
        .await;
        // drop_all removes the alias target (v2) and the current version's index (v1).
        let _ = request(
            &writer,
            Method::Delete,
            &format!("/{}", v1.index(&prefix)),
            None,
        )
        .await;
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    })
    .await;
}
