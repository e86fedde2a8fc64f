//! MongoDB views against the local server (`TRIBUTARY_MONGODB_URL`): projection + writer +
//! migrations. Every test uses its own database and drops it, pass or fail.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;
use serde_json::json;
use tributary_runtime::config::MONGODB_URL;
use tributary_runtime::kafka::unique_name;
use tributary_schemas::types::*;
use tributary_sinks::change::{Change, Op, ViewWriter, WriteError, WriteOutcome};
use tributary_sinks::mongodb::migrations::{migrate_with, MigrateOptions, CHANGELOG, LOCK};
use tributary_sinks::mongodb::projection::{
    project_inventory, project_notification, NOTIFICATIONS, NOTIFICATION_TEMPLATES, PRODUCTS,
    STOCK_RESERVATIONS,
};
use tributary_sinks::mongodb::{migrate, MongoWriter};

const T0: i64 = 1_700_000_000_000;

/// Runs `body` against a fresh database and drops the database afterwards, even on panic.
async fn with_db<F, Fut>(body: F)
where
    F: FnOnce(MongoWriter) -> Fut,
    Fut: Future<Output = ()>,
{
    let name = unique_name("tributary-test");
    let writer = MongoWriter::connect(&MONGODB_URL.get(), &name)
        .await
        .expect("client");
    let result = AssertUnwindSafe(body(writer.clone())).catch_unwind().await;
    let _ = writer.database().drop().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn env<P>(aggregate: &str, sequence: i64, payload: impl Into<P>) -> Envelope<P> {
    Envelope {
        timestamp: T0 + sequence * 1000,
        ..Envelope::new(aggregate, "corr", payload).with_sequence(sequence)
    }
}

/// One record of the log: its topic's projection, key and value.
#[derive(Clone)]
enum Record {
    Inventory(String, Option<InventoryEventEnvelope>),
    Notification(String, Option<NotificationEventEnvelope>),
}

impl Record {
    fn key(&self) -> &str {
        match self {
            Record::Inventory(k, _) | Record::Notification(k, _) => k,
        }
    }

    fn project(&self) -> Vec<Change> {
        match self {
            Record::Inventory(k, v) => project_inventory(k, v.as_ref()),
            Record::Notification(k, v) => project_notification(k, v.as_ref()),
        }
    }
}

fn inv(aggregate: &str, sequence: i64, payload: impl Into<InventoryEvent>) -> Record {
    Record::Inventory(aggregate.into(), Some(env(aggregate, sequence, payload)))
}

fn items(list: &[(&str, i32)]) -> Vec<StockItem> {
    list.iter()
        .map(|(p, q)| StockItem {
            product_id: (*p).into(),
            quantity: *q,
        })
        .collect()
}

fn sent(user: &str, sequence: i64, id: &str) -> Record {
    Record::Notification(
        user.into(),
        Some(env(
            user,
            sequence,
            NotificationSent {
                notification_id: id.into(),
                user_id: user.into(),
                template_id: "order_confirmed".into(),
                channel: NotificationChannel::Email,
                rendered_text: format!("hello {id}"),
            },
        )),
    )
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

/// The fixed log: two products, two orders' holds, three notifications.
fn log() -> Vec<Record> {
    vec![
        inv("p1", 1, added("p1", "SKU-1", 10)),
        inv("p2", 1, added("p2", "SKU-2", 3)),
        inv(
            "o1",
            2,
            StockReserved {
                order_id: "o1".into(),
                reserved_items: items(&[("p1", 2), ("p2", 1)]),
            },
        ),
        inv(
            "p1",
            2,
            ProductUpdated {
                product_id: "p1".into(),
                name: "Widget".into(),
                description: Some("a widget".into()),
                unit_price_cents: 1299,
                currency: "EUR".into(),
            },
        ),
        sent("u1", 1, "n1"),
        inv(
            "o2",
            2,
            StockReserved {
                order_id: "o2".into(),
                reserved_items: items(&[("p1", 1)]),
            },
        ),
        inv(
            "p1",
            3,
            ProductRestocked {
                product_id: "p1".into(),
                quantity: 5,
                available: 12,
                reserved: 3,
            },
        ),
        sent("u2", 1, "n3"),
        inv(
            "o1",
            4,
            StockCommitted {
                order_id: "o1".into(),
                committed_items: items(&[("p1", 2), ("p2", 1)]),
            },
        ),
        inv(
            "o2",
            3,
            StockReleased {
                order_id: "o2".into(),
                released_items: items(&[("p1", 1)]),
                reason: StockReleaseReason::PaymentDeclined,
            },
        ),
        sent("u1", 2, "n2"),
    ]
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
    let mut seed = 7usize;
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

/// Projects `log` and writes it in batches of `records_per_batch` records.
async fn apply(writer: &MongoWriter, log: &[Record], records_per_batch: usize) -> WriteOutcome {
    let mut total = WriteOutcome::default();
    for chunk in log.chunks(records_per_batch) {
        let changes: Vec<Change> = chunk.iter().flat_map(Record::project).collect();
        let out = writer.write(&changes).await.expect("write");
        total.applied += out.applied;
        total.stale += out.stale;
    }
    total
}

async fn snapshot(writer: &MongoWriter, collection: &str) -> Vec<Document> {
    let mut cursor = writer
        .database()
        .collection::<Document>(collection)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .expect("find");
    let mut docs = Vec::new();
    while cursor.advance().await.expect("cursor") {
        docs.push(cursor.deserialize_current().expect("doc"));
    }
    docs
}

async fn all_views(writer: &MongoWriter) -> Vec<Vec<Document>> {
    let mut out = Vec::new();
    for c in [PRODUCTS, STOCK_RESERVATIONS, NOTIFICATIONS] {
        out.push(snapshot(writer, c).await);
    }
    out
}

fn hold(order: &str, product: &str, qty: i64, state: &str, reason: Bson, version: i64) -> Document {
    doc! {
        "_id": format!("{order}:{product}"),
        "order_id": order,
        "product_id": product,
        "quantity": qty,
        "state": state,
        "reason": reason,
        "version": version,
        "event_time_ms": T0 + version * 1000,
    }
}

fn notification(id: &str, user: &str, version: i64) -> Document {
    doc! {
        "_id": id,
        "user_id": user,
        "template_id": "order_confirmed",
        "channel": "EMAIL",
        "rendered_text": format!("hello {id}"),
        "sent_at_ms": T0 + version * 1000,
        "version": version,
        "event_time_ms": T0 + version * 1000,
    }
}

fn expected() -> Vec<Vec<Document>> {
    vec![
        vec![
            doc! {
                "_id": "p1", "sku": "SKU-1", "name": "Widget", "description": "a widget",
                "unit_price_cents": 1299_i64, "currency": "EUR", "available": 12_i64,
                "reserved": 3_i64, "version": 3_i64, "event_time_ms": T0 + 3000,
            },
            doc! {
                "_id": "p2", "sku": "SKU-2", "name": "name p2", "description": Bson::Null,
                "unit_price_cents": 1000_i64, "currency": "EUR", "available": 3_i64,
                "reserved": 0_i64, "version": 1_i64, "event_time_ms": T0 + 1000,
            },
        ],
        vec![
            hold("o1", "p1", 2, "COMMITTED", Bson::Null, 4),
            hold("o1", "p2", 1, "COMMITTED", Bson::Null, 4),
            hold("o2", "p1", 1, "RELEASED", "PAYMENT_DECLINED".into(), 3),
        ],
        vec![
            notification("n1", "u1", 1),
            notification("n2", "u1", 2),
            notification("n3", "u2", 1),
        ],
    ]
}

/// Documents compare field by field, in any field order (a replaced document may reorder).
fn normalized(views: Vec<Vec<Document>>) -> Vec<Vec<BTreeMap<String, Bson>>> {
    views
        .into_iter()
        .map(|docs| docs.into_iter().map(|d| d.into_iter().collect()).collect())
        .collect()
}

#[tokio::test]
async fn mongodb_fixed_log_produces_expected_documents() {
    with_db(|writer| async move {
        migrate(writer.database()).await.expect("migrate");
        let out = apply(&writer, &log(), 4).await;
        assert_eq!(out.stale, 0);
        assert_eq!(normalized(all_views(&writer).await), normalized(expected()));
    })
    .await;
}

#[tokio::test]
async fn mongodb_replay_and_shuffle_leave_the_same_documents() {
    with_db(|writer| async move {
        migrate(writer.database()).await.expect("migrate");
        apply(&writer, &log(), 3).await;
        let first = normalized(all_views(&writer).await);
        assert_eq!(first, normalized(expected()));
        // The whole log again, in other batch sizes: nothing applies, everything is stale.
        let again = apply(&writer, &log(), 5).await;
        assert_eq!(again.applied, 0, "{again:?}");
        assert!(again.stale > 0);
        assert_eq!(normalized(all_views(&writer).await), first);
        // Shuffled across keys and replayed one record per batch over the same database.
        apply(&writer, &shuffled(&log()), 1).await;
        assert_eq!(normalized(all_views(&writer).await), first);
    })
    .await;
    // The shuffled log alone, into a fresh database.
    with_db(|writer| async move {
        migrate(writer.database()).await.expect("migrate");
        let order = shuffled(&log());
        assert_ne!(
            order.iter().map(Record::key).collect::<Vec<_>>(),
            log().iter().map(Record::key).collect::<Vec<_>>()
        );
        apply(&writer, &order, 2).await;
        assert_eq!(normalized(all_views(&writer).await), normalized(expected()));
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

fn fields(v: serde_json::Value) -> tributary_sinks::change::Fields {
    v.as_object().cloned().expect("object")
}

#[tokio::test]
async fn mongodb_stale_versions_are_skipped_and_counted() {
    with_db(|writer| async move {
        migrate(writer.database()).await.expect("migrate");
        let v5 = change(
            "p1",
            5,
            Op::Upsert(fields(json!({"sku": "S", "available": 5}))),
        );
        let out = writer.write(&[v5]).await.expect("write");
        assert_eq!(
            out,
            WriteOutcome {
                applied: 1,
                stale: 0
            }
        );
        // p1's older upsert does not apply; q1 is new, so its patch does.
        let out = writer
            .write(&[
                change(
                    "p1",
                    3,
                    Op::Upsert(fields(json!({"sku": "S", "available": 3}))),
                ),
                change("q1", 1, Op::Patch(fields(json!({"available": 1})))),
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
        // An equal version is stale too; a delete at the stored version applies.
        let out = writer
            .write(&[
                change("p1", 5, Op::Patch(fields(json!({"available": 7})))),
                change("q1", 1, Op::Delete),
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
        // An older delete leaves the newer document in place.
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
        let p1 = writer
            .database()
            .collection::<Document>(PRODUCTS)
            .find_one(doc! {"_id": "p1"})
            .await
            .expect("find")
            .expect("p1");
        assert_eq!(p1.get_i64("available"), Ok(5));
        assert_eq!(p1.get_i64("version"), Ok(5));
        let out = writer
            .write(&[change("p1", 6, Op::Patch(fields(json!({"available": 6}))))])
            .await
            .expect("write");
        assert_eq!(
            out,
            WriteOutcome {
                applied: 1,
                stale: 0
            }
        );
    })
    .await;
}

#[tokio::test]
async fn mongodb_tombstone_deletes() {
    with_db(|writer| async move {
        migrate(writer.database()).await.expect("migrate");
        apply(&writer, &log(), 20).await;
        let out = writer
            .write(&project_inventory("p1", None))
            .await
            .expect("write");
        assert_eq!(out.applied, 1);
        let ids = |docs: Vec<Document>| {
            docs.iter()
                .map(|d| d.get_str("_id").unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(snapshot(&writer, PRODUCTS).await), vec!["p2"]);
        // A redelivery of the product's records up to and including the tombstone: still gone.
        let p1: Vec<Record> = log().into_iter().filter(|r| r.key() == "p1").collect();
        apply(&writer, &p1, 1).await;
        writer
            .write(&project_inventory("p1", None))
            .await
            .expect("write");
        assert_eq!(ids(snapshot(&writer, PRODUCTS).await), vec!["p2"]);
    })
    .await;
}

#[tokio::test]
async fn mongodb_invalid_documents_are_rejected() {
    with_db(|writer| async move {
        migrate(writer.database()).await.expect("migrate");
        // The validator wants a long stock level.
        let bad = change("p9", 1, Op::Patch(fields(json!({"available": "many"}))));
        match writer.write(&[bad]).await {
            Err(WriteError::Rejected { view, key, .. }) => {
                assert_eq!((view, key.as_str()), (PRODUCTS, "p9"));
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        // A second product with an existing sku breaks the unique index: a rejection, not a
        // stale write.
        apply(&writer, &log(), 20).await;
        let dup = change("p3", 1, Op::Upsert(fields(json!({"sku": "SKU-1"}))));
        match writer.write(&[dup]).await {
            Err(WriteError::Rejected { key, message, .. }) => {
                assert_eq!(key, "p3");
                assert!(message.contains("11000"), "{message}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn mongodb_unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let writer = MongoWriter::connect(
        "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500&connectTimeoutMS=500",
        "nowhere",
    )
    .await
    .expect("client");
    let result = writer
        .write(&[change("p1", 1, Op::Upsert(fields(json!({"sku": "S"}))))])
        .await;
    match result {
        Err(e @ WriteError::Unavailable { .. }) => assert!(e.retriable()),
        other => panic!("expected unavailable, got {other:?}"),
    }
}

async fn changelog(writer: &MongoWriter) -> Vec<i64> {
    snapshot(writer, CHANGELOG)
        .await
        .iter()
        .filter_map(|d| d.get_i64("_id").ok())
        .collect()
}

#[tokio::test]
async fn mongodb_migrations_apply_once() {
    with_db(|writer| async move {
        let db = writer.database();
        let first = migrate(db).await.expect("migrate");
        assert_eq!(first.applied, vec![1, 2, 3]);
        assert_eq!(changelog(&writer).await, vec![1, 2, 3]);
        let again = migrate(db).await.expect("migrate again");
        assert!(again.applied.is_empty());
        assert_eq!(again.skipped, vec![1, 2, 3]);
        // What the migrations made: collections, the unique sku index, the templates.
        let names = db.list_collection_names().await.expect("list");
        for c in [
            PRODUCTS,
            STOCK_RESERVATIONS,
            NOTIFICATIONS,
            NOTIFICATION_TEMPLATES,
        ] {
            assert!(names.iter().any(|n| n == c), "{c} missing from {names:?}");
        }
        let indexes = db
            .collection::<Document>(PRODUCTS)
            .list_index_names()
            .await
            .expect("indexes");
        assert!(indexes.iter().any(|i| i == "sku_unique"), "{indexes:?}");
        assert!(!snapshot(&writer, NOTIFICATION_TEMPLATES).await.is_empty());
        assert!(snapshot(&writer, LOCK).await.is_empty(), "lock released");
    })
    .await;
}

#[tokio::test]
async fn mongodb_concurrent_migrations_apply_each_once() {
    with_db(|writer| async move {
        // A second client, so the two runners do not share a connection pool.
        let other = Client::with_uri_str(MONGODB_URL.get())
            .await
            .expect("client")
            .database(writer.database().name());
        let a = MigrateOptions {
            owner: "runner-a".into(),
            ..Default::default()
        };
        let b = MigrateOptions {
            owner: "runner-b".into(),
            ..Default::default()
        };
        let (ra, rb) = tokio::join!(
            migrate_with(writer.database(), &a),
            migrate_with(&other, &b)
        );
        let (ra, rb) = (ra.expect("runner a"), rb.expect("runner b"));
        let mut applied = [ra.applied.clone(), rb.applied.clone()].concat();
        applied.sort();
        assert_eq!(applied, vec![1, 2, 3], "a: {ra:?}, b: {rb:?}");
        assert_eq!(changelog(&writer).await, vec![1, 2, 3]);
        assert!(snapshot(&writer, LOCK).await.is_empty(), "lock released");
    })
    .await;
}

#[tokio::test]
async fn mongodb_expired_lock_is_taken_over_and_a_live_one_waited_for() {
    use mongodb::bson::DateTime;
    use std::time::Duration;
    use tributary_sinks::mongodb::MigrationError;
    with_db(|writer| async move {
        let db = writer.database();
        let locks = db.collection::<Document>(LOCK);
        // A live lock of another runner: this one gives up after its wait.
        let far = DateTime::from_millis(DateTime::now().timestamp_millis() + 600_000);
        locks
            .insert_one(doc! {"_id": "migrations", "owner": "other", "expires_at": far})
            .await
            .expect("lock");
        let impatient = MigrateOptions {
            wait: Duration::from_millis(300),
            ..Default::default()
        };
        match migrate_with(db, &impatient).await {
            Err(MigrationError::LockBusy { owner, .. }) => assert_eq!(owner, "other"),
            other => panic!("expected LockBusy, got {other:?}"),
        }
        assert!(changelog(&writer).await.is_empty());
        // The holder died: once its lease ran out the lock is taken over.
        let past = DateTime::from_millis(DateTime::now().timestamp_millis() - 1);
        locks
            .update_one(
                doc! {"_id": "migrations"},
                doc! {"$set": {"expires_at": past}},
            )
            .await
            .expect("expire");
        let report = migrate_with(db, &impatient).await.expect("migrate");
        assert_eq!(report.applied, vec![1, 2, 3]);
        assert!(snapshot(&writer, LOCK).await.is_empty(), "lock released");
    })
    .await;
}

#[test]
fn mongodb_projection_follows_the_runner_interface() {
    use tributary_sinks::mongodb::projection::{MongoProjection, TOMBSTONE_VERSION};
    use tributary_sinks::runner::{Event, EventStream, Projection, Tombstone};
    let p = MongoProjection;
    assert_eq!(
        p.streams(),
        &[EventStream::Inventory, EventStream::Notifications]
    );
    for record in log() {
        let via_trait = match &record {
            Record::Inventory(_, Some(e)) => p.project(&Event::Inventory(e.clone())),
            Record::Notification(_, Some(e)) => p.project(&Event::Notification(e.clone())),
            _ => continue,
        };
        assert_eq!(via_trait.expect("project"), record.project());
    }
    let deleted = p.tombstone(&Tombstone {
        stream: EventStream::Inventory,
        key: "p1".into(),
        timestamp_ms: 42,
    });
    assert_eq!(
        deleted,
        vec![Change {
            view: PRODUCTS,
            key: "p1".into(),
            version: TOMBSTONE_VERSION,
            event_time_ms: 42,
            op: Op::Delete,
        }]
    );
    // Other streams are not this store's.
    let order = Envelope::new(
        "o1",
        "c",
        OrderCancelled {
            order_id: "o1".into(),
            user_id: "u".into(),
            reason: CancelReason::Timeout,
            detail: None,
        },
    );
    assert!(p.project(&Event::Order(order)).expect("project").is_empty());
}

#[tokio::test]
async fn mongodb_migrations_validate_a_collection_written_before_them() {
    with_db(|writer| async move {
        // A write before the migrations creates `products` implicitly, without a validator.
        let early = change(
            "p1",
            1,
            Op::Upsert(fields(json!({"sku": "S", "available": 1}))),
        );
        writer.write(&[early]).await.expect("write");
        migrate(writer.database()).await.expect("migrate");
        let bad = change("p2", 1, Op::Patch(fields(json!({"available": "many"}))));
        assert!(matches!(
            writer.write(&[bad]).await,
            Err(WriteError::Rejected { .. })
        ));
    })
    .await;
}
