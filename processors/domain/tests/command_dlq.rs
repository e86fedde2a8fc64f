//! Hostile records written straight to every command topic, against the real broker and
//! registry: each is dead-lettered on `<that topic>.dlq` with the partition, offset and key its
//! producer wrote (whichever internal hop refused it), the failing app and a reason, and the
//! valid commands behind it on the same partition are processed.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tributary_processors::DomainApp;
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::dlq;
use tributary_runtime::kafka::{client_config, close_consumer, unique_name};
use tributary_schemas::domain::*;
use tributary_schemas::types::{Envelope, TopicPayload};
use tributary_schemas::Codec;

/// One record as written: where it landed and what it was.
struct Written {
    what: &'static str,
    partition: i32,
    offset: i64,
}

async fn encode<P: TopicPayload>(codec: &Codec, env: &Envelope<P>) -> Vec<u8> {
    codec.encode(env).await.expect("encodes")
}

/// The malformed values of one topic, given a valid encoding of one of its commands and a
/// valid encoding of another topic's.
fn malformed(valid: &[u8], other_topic: Vec<u8>) -> Vec<(&'static str, Option<Vec<u8>>)> {
    let id = &valid[1..5];
    let mut wrong_magic = valid.to_vec();
    wrong_magic[0] = 1;
    let mut trailing = valid.to_vec();
    trailing.extend_from_slice(&[0, 0, 0]);
    let mut huge = vec![0];
    huge.extend_from_slice(id);
    // The envelope's first field is a string: a length of about 2^31 bytes, then nothing.
    huge.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
    vec![
        ("no magic byte", Some(br#"{"json": true}"#.to_vec())),
        ("empty", Some(Vec::new())),
        ("no value", None),
        ("wrong magic", Some(wrong_magic)),
        (
            "unknown schema id",
            Some([&[0u8, 0x7f, 0xff, 0xff, 0xf0][..], &valid[5..]].concat()),
        ),
        ("truncated", Some(valid[..valid.len() / 2].to_vec())),
        ("trailing bytes", Some(trailing)),
        ("another topic's schema", Some(other_topic)),
        ("huge length prefix", Some(huge)),
    ]
}

async fn write(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: Option<&[u8]>,
    what: &'static str,
) -> Written {
    let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
    if let Some(v) = value {
        r = r.payload(v);
    }
    let d = producer
        .send(r, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
    Written {
        what,
        partition: d.partition,
        offset: d.offset,
    }
}

/// A dead letter as read: key, value and headers.
struct Letter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: BTreeMap<String, String>,
}

fn read_letters(topic: &str, want: usize) -> Vec<Letter> {
    let c: BaseConsumer = client_config(&KAFKA_BROKERS.get())
        .set("group.id", unique_name("dlq-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let partitions = tributary_runtime::kafka::partition_count(&c, topic, Duration::from_secs(10))
        .expect("metadata")
        .max(1);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let headers = m
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
            out.push(Letter {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    // Nothing more than expected arrives (e.g. a valid command dead-lettered too).
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(200)) {
            out.push(Letter {
                key: None,
                value: None,
                headers: BTreeMap::new(),
            });
        }
    }
    close_consumer(&c, Duration::from_secs(5));
    out
}

/// Every record of `written` is on `topic`'s DLQ, at its producer's coordinates and key.
fn assert_dead_lettered(topic: &str, key: &str, group: &str, written: &[Written]) {
    let letters = read_letters(&dlq::dlq_topic(topic), written.len());
    assert_eq!(
        letters.len(),
        written.len(),
        "{topic}: one dead letter per bad record"
    );
    for w in written {
        let l = letters
            .iter()
            .find(|l| {
                l.headers.get(dlq::SOURCE_PARTITION) == Some(&w.partition.to_string())
                    && l.headers.get(dlq::SOURCE_OFFSET) == Some(&w.offset.to_string())
            })
            .unwrap_or_else(|| panic!("{topic}: no dead letter for the {} record", w.what));
        let h = |n: &str| l.headers.get(n).map(String::as_str);
        assert_eq!(h(dlq::SOURCE_TOPIC), Some(topic), "{}", w.what);
        assert_eq!(l.key.as_deref(), Some(key.as_bytes()), "{}: key", w.what);
        assert_eq!(h(dlq::CONSUMER_GROUP), Some(group), "{}", w.what);
        assert!(
            h(dlq::ERROR_CLASS).is_some_and(|c| !c.is_empty()),
            "{}: class",
            w.what
        );
        assert!(
            h(dlq::ERROR_MESSAGE).is_some_and(|c| !c.is_empty()),
            "{}: reason",
            w.what
        );
        assert!(
            l.headers.keys().all(|k| k != dlq::ORIGIN),
            "{}: origin headers folded into dlq.source.*",
            w.what
        );
        if w.what == "no value" {
            assert!(l.value.is_none());
        }
        if w.what == "business-invalid" {
            assert_eq!(h(dlq::ERROR_CLASS), Some(dlq::REJECTED_CLASS));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_on_every_command_topic_are_dead_lettered_at_their_producers_coordinates() {
    let mut p = Pipeline::new("command-dlq", Duration::from_secs(30)).await;
    // An unknown schema id is retried for this long (a registry failing over) before it is
    // dead-lettered; the default minute would only make the test slow.
    p.cfg.unknown_schema_grace = Duration::from_secs(2);
    for app in [
        DomainApp::Users,
        DomainApp::Inventory,
        DomainApp::Payments,
        DomainApp::Orders,
    ] {
        p.start(app);
    }
    let producer: FutureProducer = client_config(&KAFKA_BROKERS.get())
        .create()
        .expect("producer");
    let t = p.cfg.topics.clone();
    let codec = p.codec.clone();
    let flow = || unique_name("flow");

    // A valid command of each topic, encoded, to mangle; and the commands behind the bad ones.
    let register = |id: &str, email: &str| -> Envelope<UserCommand> {
        Envelope::new(
            "u-dlq",
            flow(),
            RegisterUser {
                user_id: "u-dlq".into(),
                email: email.into(),
                display_name: id.into(),
                locale: None,
            },
        )
    };
    let add = |price: i64| -> Envelope<InventoryCommand> {
        Envelope::new(
            "p-dlq",
            flow(),
            AddProduct {
                product_id: "p-dlq".into(),
                sku: "SKU-DLQ".into(),
                name: "p".into(),
                description: None,
                unit_price_cents: price,
                currency: "EUR".into(),
                initial_stock: 10,
            },
        )
    };
    let order = |id: &str, lines: Vec<PlaceOrderLine>| -> Envelope<OrderCommand> {
        Envelope::new(
            id,
            flow(),
            PlaceOrder {
                order_id: id.into(),
                user_id: "u-dlq".into(),
                currency: "EUR".into(),
                lines,
            },
        )
    };
    let line = || PlaceOrderLine {
        product_id: "p-dlq".into(),
        quantity: 1,
    };
    let authorize: Envelope<PaymentCommand> = Envelope::new(
        "pay-dlq",
        flow(),
        AuthorizePayment {
            payment_id: "pay-dlq".into(),
            order_id: "o-pay".into(),
            user_id: "u-dlq".into(),
            amount_cents: 100,
            currency: "EUR".into(),
        },
    );
    let capture_unknown: Envelope<PaymentCommand> = Envelope::new(
        "pay-none",
        flow(),
        CapturePayment {
            payment_id: "pay-none".into(),
            order_id: "o-pay".into(),
            authorization_code: "x".into(),
            amount_cents: 100,
            currency: "EUR".into(),
        },
    );

    let users_valid = encode(&codec, &register("U", "u@example.com")).await;
    let inventory_valid = encode(&codec, &add(250)).await;
    let orders_valid = encode(&codec, &order("o-dlq", vec![line()])).await;
    let payments_valid = encode(&codec, &authorize).await;
    let cases = [
        (
            t.commands_users(),
            "u-dlq",
            DomainApp::Users,
            users_valid.clone(),
            encode(&codec, &register("bad", "not-an-email")).await,
            orders_valid.clone(),
        ),
        (
            t.commands_inventory(),
            "p-dlq",
            DomainApp::Inventory,
            inventory_valid.clone(),
            encode(&codec, &add(-5)).await,
            users_valid.clone(),
        ),
        (
            t.commands_orders(),
            "o-dlq",
            DomainApp::Orders,
            orders_valid.clone(),
            encode(&codec, &order("o-dlq-bad", Vec::new())).await,
            payments_valid.clone(),
        ),
        (
            t.commands_payments(),
            "o-pay",
            DomainApp::Payments,
            payments_valid.clone(),
            encode(&codec, &capture_unknown).await,
            inventory_valid.clone(),
        ),
    ];

    let mut written: Vec<Vec<Written>> = Vec::new();
    for (topic, key, _, valid, invalid, other) in &cases {
        let mut w = Vec::new();
        for (what, value) in malformed(valid, other.clone()) {
            w.push(write(&producer, topic, key, value.as_deref(), what).await);
        }
        w.push(write(&producer, topic, key, Some(invalid), "business-invalid").await);
        // The valid command behind them, on the same partition (same key). The order needs the
        // product, which the inventory case adds: it is written last.
        if topic != &t.commands_orders() {
            write(&producer, topic, key, Some(valid), "valid").await;
        }
        written.push(w);
    }

    // Valid commands behind the bad ones are processed.
    let mut products = p.reader::<InventoryEvent>(t.events_inventory());
    products
        .until("p-dlq added", |e| {
            e.iter()
                .any(|e| matches!(&e.payload, InventoryEvent::ProductAdded(a) if a.product_id == "p-dlq"))
        })
        .await;
    write(
        &producer,
        &t.commands_orders(),
        "o-dlq",
        Some(&orders_valid),
        "valid",
    )
    .await;
    let mut users = p.reader::<UserEvent>(t.events_users());
    users
        .until("u-dlq registered", |e| {
            e.iter()
                .any(|e| matches!(&e.payload, UserEvent::UserRegistered(u) if u.user_id == "u-dlq"))
        })
        .await;
    let mut payments = p.reader::<PaymentEvent>(t.events_payments());
    payments
        .until("pay-dlq answered", |e| {
            e.iter().any(|e| e.aggregate_id == "pay-dlq")
        })
        .await;
    let mut orders = p.reader::<OrderEvent>(t.events_orders());
    orders
        .until("o-dlq's outcome", |e| has_outcomes(e, &["o-dlq"]))
        .await;

    for ((topic, key, app, ..), w) in cases.iter().zip(&written) {
        let (topic, key, group) = (topic.clone(), key.to_string(), app.application_id(&p.cfg));
        let w: Vec<Written> = w
            .iter()
            .map(|w| Written {
                what: w.what,
                partition: w.partition,
                offset: w.offset,
            })
            .collect();
        tokio::task::spawn_blocking(move || assert_dead_lettered(&topic, &key, &group, &w))
            .await
            .expect("checked");
    }
    p.stop_all().await;
}
