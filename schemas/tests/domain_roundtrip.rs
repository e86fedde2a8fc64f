//! Every topic schema parses and has the envelope shape, and every payload type survives real
//! Avro binary encoding.

// `to_avro_datum` / `from_avro_datum` are deprecated in apache-avro 0.22 in favour of
// `GenericDatumWriter` / `GenericDatumReader`, which they wrap; they stay the plainest
// reference path for a round trip.
#![allow(deprecated)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;

use apache_avro::schema::{RecordSchema, Schema};
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum};
use tributary_schemas::types::*;

const ENVELOPE_FIELDS: [&str; 7] = [
    "id",
    "aggregate_id",
    "sequence",
    "causation_id",
    "correlation_id",
    "timestamp",
    "payload",
];

fn record(schema: &Schema) -> &RecordSchema {
    match schema {
        Schema::Record(r) => r,
        other => panic!("expected a record schema, got {other:?}"),
    }
}

fn field<'a>(r: &'a RecordSchema, name: &str) -> &'a apache_avro::schema::RecordField {
    &r.fields[r.lookup[name]]
}

/// The payload union's branches, with references replaced by their definitions.
fn payload_branches(schema: &Schema) -> Vec<&RecordSchema> {
    let Schema::Union(union) = &field(record(schema), "payload").schema else {
        panic!("payload is not a union");
    };
    union.variants().iter().map(record).collect()
}

#[test]
fn every_schema_file_parses_and_is_listed_in_all_topics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    let listed: BTreeMap<&str, &str> = ALL_TOPICS.iter().copied().collect();
    assert_eq!(listed.len(), ALL_TOPICS.len(), "a topic is listed twice");

    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("schemas/avro is readable") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(topic) = name.strip_suffix(".avsc") else {
            panic!("unexpected file {name} in schemas/avro");
        };
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = Schema::parse_str(&text) {
            panic!("{name} does not parse: {e}");
        }
        assert_eq!(
            listed.get(topic).copied(),
            Some(text.as_str()),
            "{name} is not ALL_TOPICS' schema of topic `{topic}`"
        );
        on_disk.insert(topic.to_string());
    }
    let listed: BTreeSet<String> = listed.keys().map(|t| t.to_string()).collect();
    assert_eq!(on_disk, listed, "schema files and ALL_TOPICS differ");

    let parsed = all_schemas().expect("every listed schema parses");
    assert_eq!(parsed.len(), ALL_TOPICS.len());
}

#[test]
fn every_envelope_has_the_common_fields() {
    for (topic, schema) in all_schemas().unwrap() {
        let r = record(&schema);
        let names: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ENVELOPE_FIELDS, "{topic}: envelope fields");
        for name in ["id", "aggregate_id", "correlation_id"] {
            assert_eq!(field(r, name).schema, Schema::String, "{topic}.{name}");
        }
        assert_eq!(
            field(r, "sequence").schema,
            Schema::Long,
            "{topic}.sequence"
        );
        assert_eq!(
            field(r, "timestamp").schema,
            Schema::TimestampMillis,
            "{topic}.timestamp"
        );
        let causation = field(r, "causation_id");
        let Schema::Union(u) = &causation.schema else {
            panic!("{topic}.causation_id is not a union");
        };
        assert_eq!(
            u.variants(),
            [Schema::Null, Schema::String],
            "{topic}.causation_id"
        );
        assert_eq!(
            causation.default,
            Some(serde_json::Value::Null),
            "{topic}.causation_id"
        );
        assert!(
            !payload_branches(&schema).is_empty(),
            "{topic}: empty payload"
        );
    }
}

/// Walks a schema and reports every record, field and enum without a doc.
fn undocumented(schema: &Schema, path: &str, out: &mut Vec<String>) {
    match schema {
        Schema::Record(r) => {
            let path = format!("{path}/{}", r.name.name());
            if r.doc.is_none() {
                out.push(path.clone());
            }
            for f in &r.fields {
                let field_path = format!("{path}.{}", f.name);
                if f.doc.is_none() {
                    out.push(field_path.clone());
                }
                undocumented(&f.schema, &field_path, out);
            }
        }
        Schema::Enum(e) if e.doc.is_none() => out.push(format!("{path}/{}", e.name.name())),
        Schema::Union(u) => u.variants().iter().for_each(|v| undocumented(v, path, out)),
        Schema::Array(a) => undocumented(&a.items, path, out),
        Schema::Map(m) => undocumented(&m.types, path, out),
        _ => {}
    }
}

#[test]
fn every_record_field_and_enum_has_a_doc() {
    let mut missing = Vec::new();
    for (topic, schema) in all_schemas().unwrap() {
        undocumented(&schema, topic, &mut missing);
    }
    assert!(missing.is_empty(), "without doc: {missing:#?}");
}

/// apache-avro's `Value::resolve` (which reading with a reader schema performs) puts a record
/// into the first union branch whose required fields it has, whatever branch it was written
/// as. So no branch's required fields may all appear in a later branch, or data of the later
/// branch would silently read back as the earlier one.
#[test]
fn no_payload_branch_is_absorbed_by_an_earlier_one() {
    for (topic, schema) in all_schemas().unwrap() {
        let branches = payload_branches(&schema);
        for (i, earlier) in branches.iter().enumerate() {
            let required: BTreeSet<&str> = earlier
                .fields
                .iter()
                .filter(|f| f.default.is_none())
                .map(|f| f.name.as_str())
                .collect();
            for later in &branches[i + 1..] {
                let fields: BTreeSet<&str> = later.fields.iter().map(|f| f.name.as_str()).collect();
                assert!(
                    !required.is_subset(&fields),
                    "{topic}: {} would be read back as {} (its required fields {required:?} are all in it)",
                    later.name.name(),
                    earlier.name.name(),
                );
            }
        }
    }
}

/// Encodes each payload in an envelope, decodes it both as written and through the schema
/// resolution a consumer performs, and returns the branches covered.
fn round_trip<P>(payloads: Vec<P>) -> BTreeSet<&'static str>
where
    P: TopicPayload + Clone + Debug + PartialEq,
{
    let schema = Envelope::<P>::schema();
    let mut covered = BTreeSet::new();
    for (i, payload) in payloads.into_iter().enumerate() {
        covered.insert(payload.branch_name());
        let mut sent = Envelope::<P>::new(format!("agg-{i}"), "corr-1", payload);
        sent.sequence = i as i64 + 1;
        // Alternate so every topic with two samples covers both forms.
        if i % 2 == 0 {
            sent.causation_id = Some(format!("cause-{i}"));
        }
        let what = format!("{} {}", P::TOPIC, sent.payload.branch_name());

        let value = sent
            .to_avro()
            .unwrap_or_else(|e| panic!("{what}: to_avro: {e}"));
        assert!(
            value.validate(schema),
            "{what}: to_avro's value does not validate"
        );
        let bytes = to_avro_datum(schema, value.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));

        let decoded = from_avro_datum(schema, &mut bytes.as_slice(), None).unwrap();
        assert_eq!(
            decoded, value,
            "{what}: decoded value differs from the encoded one"
        );
        let received = Envelope::<P>::from_avro(decoded).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(received, sent, "{what}: round trip");

        // The codec reads with the local schema as reader schema; that resolution must land
        // on the same branch.
        let resolved = from_avro_datum(schema, &mut bytes.as_slice(), Some(schema)).unwrap();
        let received = Envelope::<P>::from_avro(resolved).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(received, sent, "{what}: round trip through resolution");
    }
    covered
}

fn assert_all_branches<P: TopicPayload>(covered: BTreeSet<&'static str>) {
    let all: BTreeSet<&str> = P::BRANCHES.iter().copied().collect();
    assert_eq!(
        covered,
        all,
        "{}: samples must cover every branch",
        P::TOPIC
    );
}

fn prefs(channel: NotificationChannel) -> Preferences {
    Preferences {
        preferred_channel: channel,
        marketing_opt_in: channel == NotificationChannel::Email,
        preferred_currency: "EUR".into(),
    }
}

#[test]
fn user_commands_round_trip() {
    let covered = round_trip(vec![
        UserCommand::RegisterUser(RegisterUser {
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
            display_name: "Ada Lovelace".into(),
            locale: Some("en-GB".into()),
        }),
        UserCommand::RegisterUser(RegisterUser {
            user_id: "u-2".into(),
            email: "zoë@example.com".into(),
            display_name: "Zoë 🚀".into(),
            locale: None,
        }),
        UserCommand::UpdateProfile(UpdateProfile {
            user_id: "u-1".into(),
            display_name: Some("Ada".into()),
            avatar_url: None,
            locale: Some("fr-FR".into()),
        }),
        UserCommand::UpdateProfile(UpdateProfile {
            user_id: "u-1".into(),
            display_name: None,
            avatar_url: Some("https://cdn.example.com/a.png".into()),
            locale: None,
        }),
        UserCommand::UpdatePreferences(UpdatePreferences {
            user_id: "u-1".into(),
            preferences: prefs(NotificationChannel::InApp),
        }),
        UserCommand::StartSession(StartSession {
            session_id: "s-1".into(),
            user_id: "u-1".into(),
            user_agent: Some("curl/8".into()),
        }),
        UserCommand::StartSession(StartSession {
            session_id: "s-2".into(),
            user_id: "u-1".into(),
            user_agent: None,
        }),
        UserCommand::EndSession(EndSession {
            session_id: "s-1".into(),
            user_id: "u-1".into(),
        }),
    ]);
    assert_all_branches::<UserCommand>(covered);
}

#[test]
fn user_events_round_trip() {
    let covered = round_trip(vec![
        UserEvent::UserRegistered(UserRegistered {
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            locale: None,
        }),
        UserEvent::ProfileUpdated(ProfileUpdated {
            user_id: "u-1".into(),
            display_name: "Ada L.".into(),
            avatar_url: Some("https://cdn.example.com/a.png".into()),
            locale: Some("en".into()),
        }),
        UserEvent::PreferencesUpdated(PreferencesUpdated {
            user_id: "u-1".into(),
            preferences: prefs(NotificationChannel::Email),
        }),
        UserEvent::PreferencesUpdated(PreferencesUpdated {
            user_id: "u-1".into(),
            preferences: prefs(NotificationChannel::Sms),
        }),
        UserEvent::SessionStarted(SessionStarted {
            session_id: "s-1".into(),
            user_id: "u-1".into(),
            user_agent: None,
        }),
        UserEvent::SessionEnded(SessionEnded {
            session_id: "s-1".into(),
            user_id: "u-1".into(),
            reason: SessionEndReason::Logout,
        }),
        UserEvent::SessionEnded(SessionEnded {
            session_id: "s-2".into(),
            user_id: "u-1".into(),
            reason: SessionEndReason::Expired,
        }),
    ]);
    assert_all_branches::<UserEvent>(covered);
}

#[test]
fn inventory_commands_round_trip() {
    let covered = round_trip(vec![
        InventoryCommand::AddProduct(AddProduct {
            product_id: "p-1".into(),
            sku: "SKU-001".into(),
            name: "Widget".into(),
            description: Some("A fine widget".into()),
            unit_price_cents: 1999,
            currency: "EUR".into(),
            initial_stock: 10,
        }),
        InventoryCommand::AddProduct(AddProduct {
            product_id: "p-2".into(),
            sku: "SKU-002".into(),
            name: "Gadget".into(),
            description: None,
            unit_price_cents: i64::MAX,
            currency: "JPY".into(),
            initial_stock: 0,
        }),
        InventoryCommand::RestockProduct(RestockProduct {
            product_id: "p-1".into(),
            quantity: i32::MAX,
        }),
        InventoryCommand::UpdateProduct(UpdateProduct {
            product_id: "p-1".into(),
            name: None,
            description: None,
            unit_price_cents: Some(2499),
            currency: Some("EUR".into()),
        }),
        InventoryCommand::UpdateProduct(UpdateProduct {
            product_id: "p-1".into(),
            name: Some("Widget Pro".into()),
            description: Some(String::new()),
            unit_price_cents: None,
            currency: None,
        }),
        InventoryCommand::ReserveStock(ReserveStock {
            order_id: "o-1".into(),
            items: items(2),
        }),
        InventoryCommand::ReleaseStock(ReleaseStock {
            order_id: "o-1".into(),
            reason: StockReleaseReason::Timeout,
        }),
        InventoryCommand::CommitStock(CommitStock {
            order_id: "o-1".into(),
            payment_id: "pay-1".into(),
        }),
    ]);
    assert_all_branches::<InventoryCommand>(covered);
}

fn items(n: i32) -> Vec<StockItem> {
    (1..=n)
        .map(|i| StockItem {
            product_id: format!("p-{i}"),
            quantity: i,
        })
        .collect()
}

#[test]
fn inventory_events_round_trip() {
    let covered = round_trip(vec![
        InventoryEvent::ProductAdded(ProductAdded {
            product_id: "p-1".into(),
            sku: "SKU-001".into(),
            name: "Widget".into(),
            description: None,
            unit_price_cents: 1999,
            currency: "EUR".into(),
            initial_stock: 10,
        }),
        InventoryEvent::ProductRestocked(ProductRestocked {
            product_id: "p-1".into(),
            quantity: 5,
            available: 15,
            reserved: 2,
        }),
        InventoryEvent::StockReserved(StockReserved {
            order_id: "o-1".into(),
            reserved_items: items(3),
        }),
        InventoryEvent::StockReserved(StockReserved {
            order_id: "o-empty".into(),
            reserved_items: vec![],
        }),
        InventoryEvent::StockReservationFailed(StockReservationFailed {
            order_id: "o-2".into(),
            shortages: vec![StockShortage {
                product_id: "p-1".into(),
                requested: 20,
                available: 15,
            }],
        }),
        InventoryEvent::StockReleased(StockReleased {
            order_id: "o-1".into(),
            released_items: items(2),
            reason: StockReleaseReason::PaymentDeclined,
        }),
        InventoryEvent::StockReleased(StockReleased {
            order_id: "o-3".into(),
            released_items: items(1),
            reason: StockReleaseReason::Timeout,
        }),
        InventoryEvent::StockCommitted(StockCommitted {
            order_id: "o-4".into(),
            committed_items: items(1),
        }),
        InventoryEvent::ProductUpdated(ProductUpdated {
            product_id: "p-1".into(),
            name: "Widget Pro".into(),
            description: Some("Better".into()),
            unit_price_cents: 2499,
            currency: "EUR".into(),
        }),
        InventoryEvent::ProductStockChanged(ProductStockChanged {
            product_id: "p-1".into(),
            available: 12,
            reserved: 3,
        }),
    ]);
    assert_all_branches::<InventoryEvent>(covered);
}

#[test]
fn order_commands_round_trip() {
    let covered = round_trip(vec![
        OrderCommand::PlaceOrder(PlaceOrder {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            lines: vec![
                PlaceOrderLine {
                    product_id: "p-1".into(),
                    quantity: 2,
                },
                PlaceOrderLine {
                    product_id: "p-2".into(),
                    quantity: 1,
                },
            ],
            currency: "EUR".into(),
        }),
        OrderCommand::CancelOrder(CancelOrder {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            note: Some("changed my mind".into()),
        }),
        OrderCommand::CancelOrder(CancelOrder {
            order_id: "o-2".into(),
            user_id: "u-1".into(),
            note: None,
        }),
    ]);
    assert_all_branches::<OrderCommand>(covered);
}

fn order_events() -> Vec<OrderEvent> {
    let cancelled = |reason, detail: Option<&str>| {
        OrderEvent::OrderCancelled(OrderCancelled {
            order_id: "o-2".into(),
            user_id: "u-1".into(),
            reason,
            detail: detail.map(Into::into),
        })
    };
    vec![
        OrderEvent::OrderPlaced(OrderPlaced {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            lines: vec![
                OrderLine {
                    product_id: "p-1".into(),
                    quantity: 2,
                    unit_price_cents: 1999,
                },
                OrderLine {
                    product_id: "p-2".into(),
                    quantity: 1,
                    unit_price_cents: 500,
                },
            ],
            currency: "EUR".into(),
            total_cents: 4498,
        }),
        OrderEvent::OrderConfirmed(OrderConfirmed {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            payment_id: "pay-1".into(),
            total_cents: 4498,
            currency: "EUR".into(),
        }),
        cancelled(CancelReason::StockOut, Some("p-1 short by 5")),
        cancelled(CancelReason::PaymentDeclined, None),
        cancelled(CancelReason::Timeout, None),
        cancelled(CancelReason::UserCancelled, Some("by user")),
        cancelled(CancelReason::Invalid, None),
    ]
}

#[test]
fn order_events_round_trip() {
    assert_all_branches::<OrderEvent>(round_trip(order_events()));
}

#[test]
fn payment_commands_round_trip() {
    let covered = round_trip(vec![
        PaymentCommand::AuthorizePayment(AuthorizePayment {
            payment_id: "pay-1".into(),
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            amount_cents: 4498,
            currency: "EUR".into(),
        }),
        PaymentCommand::CapturePayment(CapturePayment {
            payment_id: "pay-1".into(),
            order_id: "o-1".into(),
            authorization_code: "AUTH-42".into(),
            amount_cents: 4498,
            currency: "EUR".into(),
        }),
        PaymentCommand::RefundPayment(RefundPayment {
            payment_id: "pay-1".into(),
            order_id: "o-1".into(),
            amount_cents: 1000,
            currency: "EUR".into(),
            reason: Some("damaged".into()),
        }),
        PaymentCommand::RefundPayment(RefundPayment {
            payment_id: "pay-1".into(),
            order_id: "o-1".into(),
            amount_cents: 0,
            currency: "EUR".into(),
            reason: None,
        }),
    ]);
    assert_all_branches::<PaymentCommand>(covered);
}

#[test]
fn payment_events_round_trip() {
    let declined = |reason| {
        PaymentEvent::PaymentDeclined(PaymentDeclined {
            payment_id: "pay-2".into(),
            order_id: "o-2".into(),
            user_id: "u-1".into(),
            amount_cents: 100,
            currency: "USD".into(),
            reason,
            detail: (reason == DeclineReason::Other).then(|| "provider says no".into()),
        })
    };
    let covered = round_trip(vec![
        PaymentEvent::PaymentAuthorized(PaymentAuthorized {
            payment_id: "pay-1".into(),
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            amount_cents: 4498,
            currency: "EUR".into(),
            authorization_code: "AUTH-42".into(),
        }),
        declined(DeclineReason::InsufficientFunds),
        declined(DeclineReason::CardExpired),
        declined(DeclineReason::FraudSuspected),
        declined(DeclineReason::LimitExceeded),
        declined(DeclineReason::Other),
        PaymentEvent::PaymentCaptured(PaymentCaptured {
            payment_id: "pay-1".into(),
            order_id: "o-1".into(),
            authorization_code: "AUTH-42".into(),
            amount_cents: 4498,
            currency: "EUR".into(),
        }),
        PaymentEvent::PaymentRefunded(PaymentRefunded {
            payment_id: "pay-1".into(),
            order_id: "o-1".into(),
            amount_cents: 4498,
            currency: "EUR".into(),
            reason: None,
        }),
    ]);
    assert_all_branches::<PaymentEvent>(covered);
}

#[test]
fn notification_events_round_trip() {
    let sent = |channel, text: &str| {
        NotificationEvent::NotificationSent(NotificationSent {
            notification_id: "n-1".into(),
            user_id: "u-1".into(),
            template_id: "order-confirmed".into(),
            channel,
            rendered_text: text.into(),
        })
    };
    let covered = round_trip(vec![
        sent(NotificationChannel::Email, "Your order o-1 is confirmed."),
        sent(NotificationChannel::Sms, ""),
        sent(NotificationChannel::Push, "Ω ≈ ç √ ∫"),
        sent(NotificationChannel::InApp, "line 1\nline 2"),
    ]);
    assert_all_branches::<NotificationEvent>(covered);
}

#[test]
fn analytics_events_round_trip() {
    let covered = round_trip(vec![
        AnalyticsEvent::RevenueWindow(RevenueWindow {
            window_start: 1_700_000_000_000,
            window_end: 1_700_000_060_000,
            currency: "EUR".into(),
            order_count: 42,
            revenue_cents: 123_456,
        }),
        AnalyticsEvent::RevenueWindow(RevenueWindow {
            window_start: 0,
            window_end: 60_000,
            currency: "USD".into(),
            order_count: 0,
            revenue_cents: 0,
        }),
        AnalyticsEvent::TopProducts(TopProducts {
            window_start: 1_700_000_000_000,
            window_end: 1_700_003_600_000,
            products: vec![
                ProductQuantity {
                    product_id: "p-1".into(),
                    quantity: 90,
                },
                ProductQuantity {
                    product_id: "p-2".into(),
                    quantity: 7,
                },
            ],
        }),
    ]);
    assert_all_branches::<AnalyticsEvent>(covered);
}

#[test]
fn rejection_events_round_trip() {
    let rejected = |reason| {
        RejectionEvent::CommandRejected(CommandRejected {
            command_topic: "commands.orders".into(),
            command_id: "cmd-1".into(),
            command_type: "PlaceOrder".into(),
            reason,
            message: "order has no lines".into(),
        })
    };
    let covered = round_trip(vec![
        rejected(RejectionReason::ValidationFailed),
        rejected(RejectionReason::NotFound),
        rejected(RejectionReason::AlreadyExists),
        rejected(RejectionReason::InvalidState),
        rejected(RejectionReason::Other),
    ]);
    assert_all_branches::<RejectionEvent>(covered);
}

#[test]
fn envelope_helpers_fill_the_common_fields() {
    let placed = OrderPlaced {
        order_id: "o-1".into(),
        user_id: "u-1".into(),
        lines: vec![],
        currency: "EUR".into(),
        total_cents: 0,
    };
    let cause = OrderEventEnvelope::new("o-1", "corr-9", placed).with_sequence(3);
    assert!(uuid::Uuid::parse_str(&cause.id).is_ok());
    assert_eq!(cause.sequence, 3);
    assert_eq!(cause.causation_id, None);
    assert!(
        cause.timestamp > 1_600_000_000_000,
        "timestamp is now in millis"
    );

    let effect = InventoryEventEnvelope::caused_by(
        &cause,
        "o-1",
        StockReserved {
            order_id: "o-1".into(),
            reserved_items: items(1),
        },
    );
    assert_ne!(effect.id, cause.id);
    assert_eq!(effect.causation_id.as_deref(), Some(cause.id.as_str()));
    assert_eq!(effect.correlation_id, "corr-9");
    assert_eq!(effect.sequence, 0);
}

/// `events.orders` as a later version might have it: a branch appended to the payload union
/// and a nullable field with a default added to an existing record.
fn evolved_order_events() -> Schema {
    let mut json: serde_json::Value =
        serde_json::from_str(OrderEventEnvelope::SCHEMA_TEXT).unwrap();
    let fields = json["fields"].as_array_mut().unwrap();
    let payload = fields.iter_mut().find(|f| f["name"] == "payload").unwrap();
    let branches = payload["type"].as_array_mut().unwrap();
    branches[0]["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "coupon_code", "type": ["null", "string"], "default": null,
            "doc": "Coupon applied to the order, if any."
        }));
    branches.push(serde_json::json!({
        "type": "record", "name": "OrderShipped", "doc": "An order left the warehouse.",
        "fields": [
            {"name": "order_id", "type": "string", "doc": "Id of the order."},
            {"name": "tracking_code", "type": "string", "doc": "Carrier's tracking code."}
        ]
    }));
    Schema::parse_str(&json.to_string()).unwrap()
}

#[test]
fn a_newer_schema_with_an_appended_branch_reads_old_data() {
    let original = OrderEventEnvelope::schema();
    let evolved = evolved_order_events();
    let compatibility = SchemaCompatibility::can_read(original, &evolved).unwrap();
    assert_eq!(
        compatibility,
        Compatibility::Full,
        "new reader reads all old data"
    );

    for payload in order_events() {
        let sent = OrderEventEnvelope::new("o-1", "corr-1", payload);
        let bytes = to_avro_datum(original, sent.to_avro().unwrap()).unwrap();
        let read = from_avro_datum(original, &mut bytes.as_slice(), Some(&evolved)).unwrap();
        // The evolved reader adds `coupon_code: null` to OrderPlaced; the current Rust type
        // ignores fields it does not know.
        assert_eq!(OrderEventEnvelope::from_avro(read).unwrap(), sent);
    }
}

#[test]
fn old_readers_reject_a_branch_they_do_not_know() {
    let original = OrderEventEnvelope::schema();
    let evolved = evolved_order_events();
    let shipped = Value::Record(vec![
        ("id".into(), Value::String("r-1".into())),
        ("aggregate_id".into(), Value::String("o-1".into())),
        ("sequence".into(), Value::Long(4)),
        (
            "causation_id".into(),
            Value::Union(0, Box::new(Value::Null)),
        ),
        ("correlation_id".into(), Value::String("corr-1".into())),
        ("timestamp".into(), Value::TimestampMillis(1)),
        (
            "payload".into(),
            Value::Union(
                3,
                Box::new(Value::Record(vec![
                    ("order_id".into(), Value::String("o-1".into())),
                    ("tracking_code".into(), Value::String("TRACK".into())),
                ])),
            ),
        ),
    ]);
    // Partial: old readers read every branch they know, and only those.
    let compatibility = SchemaCompatibility::can_read(&evolved, original).unwrap();
    assert_eq!(compatibility, Compatibility::Partial);
    let bytes = to_avro_datum(&evolved, shipped).unwrap();
    assert!(from_avro_datum(&evolved, &mut bytes.as_slice(), Some(original)).is_err());

    // Decoded with the writer's schema alone, the value reaches from_avro with a union index
    // the Rust type does not know: an error, not a panic or a wrong variant.
    let value = from_avro_datum(&evolved, &mut bytes.as_slice(), None).unwrap();
    assert!(matches!(
        OrderEventEnvelope::from_avro(value),
        Err(DomainError::UnknownBranch { index: 3, .. })
    ));
}

fn envelope_with(field: &str, replacement: Value) -> Value {
    let sent = OrderEventEnvelope::new("o-1", "corr-1", order_events().remove(0));
    let Value::Record(mut fields) = sent.to_avro().unwrap() else {
        unreachable!("to_avro returns a record");
    };
    for (name, value) in &mut fields {
        if name == field {
            *value = replacement.clone();
        }
    }
    Value::Record(fields)
}

#[test]
fn from_avro_rejects_wrongly_shaped_values() {
    let err = |value: Value| OrderEventEnvelope::from_avro(value).unwrap_err();

    assert!(matches!(err(Value::Null), DomainError::WrongShape { .. }));
    assert!(matches!(
        err(Value::Record(vec![])),
        DomainError::MissingField { field: "id", .. }
    ));
    assert!(matches!(
        err(envelope_with("id", Value::Long(1))),
        DomainError::WrongShape { field: "id", .. }
    ));
    assert!(matches!(
        err(envelope_with("sequence", Value::String("1".into()))),
        DomainError::WrongShape {
            field: "sequence",
            ..
        }
    ));
    assert!(matches!(
        err(envelope_with("timestamp", Value::Boolean(true))),
        DomainError::WrongShape {
            field: "timestamp",
            ..
        }
    ));
    assert!(matches!(
        err(envelope_with(
            "causation_id",
            Value::Union(1, Box::new(Value::Int(3)))
        )),
        DomainError::WrongShape {
            field: "causation_id",
            ..
        }
    ));
    assert!(matches!(
        err(envelope_with(
            "payload",
            Value::String("OrderPlaced".into())
        )),
        DomainError::WrongShape {
            field: "payload",
            ..
        }
    ));
    assert!(matches!(
        err(envelope_with(
            "payload",
            Value::Union(99, Box::new(Value::Null))
        )),
        DomainError::UnknownBranch { index: 99, .. }
    ));
    assert!(matches!(
        err(envelope_with(
            "payload",
            Value::Union(0, Box::new(Value::Null))
        )),
        DomainError::WrongShape {
            field: "payload",
            ..
        }
    ));
    // A record of the wrong branch: OrderConfirmed's fields where OrderPlaced is expected.
    let confirmed = Value::Record(vec![
        ("order_id".into(), Value::String("o-1".into())),
        ("payment_id".into(), Value::String("pay-1".into())),
    ]);
    assert!(matches!(
        err(envelope_with(
            "payload",
            Value::Union(0, Box::new(confirmed))
        )),
        DomainError::Payload {
            branch: "OrderPlaced",
            action: "decode",
            ..
        }
    ));
    // An enum symbol the type does not know.
    let cancelled = Value::Record(vec![
        ("order_id".into(), Value::String("o-1".into())),
        ("user_id".into(), Value::String("u-1".into())),
        ("reason".into(), Value::Enum(9, "LOST_IN_SPACE".into())),
        ("detail".into(), Value::Union(0, Box::new(Value::Null))),
    ]);
    let e = err(envelope_with(
        "payload",
        Value::Union(2, Box::new(cancelled)),
    ));
    assert!(
        matches!(
            e,
            DomainError::Payload {
                branch: "OrderCancelled",
                ..
            }
        ),
        "{e}"
    );
}
