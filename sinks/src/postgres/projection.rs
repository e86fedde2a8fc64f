//! What each event means for the PostgreSQL views.
//!
//! | event | changes |
//! |---|---|
//! | `UserRegistered` | upsert `users` |
//! | `ProfileUpdated`, `PreferencesUpdated` | patch `users` |
//! | `OrderPlaced` | upsert `orders` (PLACED) and its `order_items`, append `order_events` |
//! | `OrderConfirmed`, `OrderCancelled` | patch `orders` status, append `order_events` |
//! | `PaymentAuthorized` | upsert `payments` (AUTHORIZED) |
//! | `PaymentDeclined`, `PaymentCaptured` | patch `payments` |
//! | `PaymentRefunded` | patch `payments` (REFUNDED), upsert `refunds/<payment>/<sequence>` |
//! | `RevenueWindow`, `TopProducts` | upsert `revenue_windows`, `top_products` |
//! | tombstone on users / orders / payments | delete the user / order (and items) / payment |
//!
//! Every change carries the envelope's `sequence` as its version.

use serde_json::{json, Value};
use tributary_schemas::types::{
    AnalyticsEvent, Envelope, OrderEvent, PaymentEvent, TopicPayload, UserEvent,
};

use crate::change::{Change, Op};
use crate::runner::projection::build::{self, change, fields, require_id};
use crate::runner::{Event, EventStream, ProjectError, Projection, Tombstone};

/// The PostgreSQL projection.
#[derive(Debug, Clone, Default)]
pub struct PostgresProjection;

const STREAMS: &[EventStream] = &[
    EventStream::Users,
    EventStream::Orders,
    EventStream::Payments,
    EventStream::Analytics,
];

impl Projection for PostgresProjection {
    fn streams(&self) -> &[EventStream] {
        STREAMS
    }

    fn project(&self, event: &Event) -> Result<Vec<Change>, ProjectError> {
        match event {
            Event::User(e) => users(e),
            Event::Order(e) => orders(e),
            Event::Payment(e) => payments(e),
            Event::Analytics(e) => analytics(e),
            Event::Inventory(_) | Event::Notification(_) => Ok(Vec::new()),
        }
    }

    fn tombstone(&self, t: &Tombstone) -> Vec<Change> {
        let view = match t.stream {
            EventStream::Users => "users",
            // The order's items go with it (foreign key, ON DELETE CASCADE); its event store
            // entries are history and stay.
            EventStream::Orders => "orders",
            EventStream::Payments => "payments",
            _ => return Vec::new(),
        };
        vec![build::tombstone(t, view)]
    }
}

fn users(e: &Envelope<UserEvent>) -> Result<Vec<Change>, ProjectError> {
    Ok(match &e.payload {
        UserEvent::UserRegistered(p) => {
            require_id(e, &p.user_id, "user_id")?;
            vec![change(
                e,
                "users",
                &p.user_id,
                Op::Upsert(fields(json!({
                    "email": p.email,
                    "display_name": p.display_name,
                    "locale": p.locale,
                }))),
            )]
        }
        UserEvent::ProfileUpdated(p) => {
            require_id(e, &p.user_id, "user_id")?;
            vec![change(
                e,
                "users",
                &p.user_id,
                Op::Patch(fields(json!({
                    "display_name": p.display_name,
                    "avatar_url": p.avatar_url,
                    "locale": p.locale,
                }))),
            )]
        }
        UserEvent::PreferencesUpdated(p) => {
            require_id(e, &p.user_id, "user_id")?;
            vec![change(
                e,
                "users",
                &p.user_id,
                Op::Patch(fields(json!({
                    "preferred_channel": p.preferences.preferred_channel,
                    "marketing_opt_in": p.preferences.marketing_opt_in,
                    "preferred_currency": p.preferences.preferred_currency,
                }))),
            )]
        }
        // Sessions live in Redis.
        UserEvent::SessionStarted(_) | UserEvent::SessionEnded(_) => Vec::new(),
    })
}

fn order_event(e: &Envelope<OrderEvent>) -> Change {
    let payload = match &e.payload {
        OrderEvent::OrderPlaced(p) => serde_json::to_value(p),
        OrderEvent::OrderConfirmed(p) => serde_json::to_value(p),
        OrderEvent::OrderCancelled(p) => serde_json::to_value(p),
    }
    .unwrap_or(Value::Null);
    change(
        e,
        "order_events",
        &e.aggregate_id,
        Op::Append(fields(json!({
            "event_id": e.id,
            "type": e.payload.branch_name(),
            "payload": payload,
            "correlation_id": e.correlation_id,
            "causation_id": e.causation_id,
        }))),
    )
}

fn orders(e: &Envelope<OrderEvent>) -> Result<Vec<Change>, ProjectError> {
    if e.aggregate_id.trim().is_empty() {
        return Err(ProjectError::Invalid {
            event_type: e.payload.branch_name(),
            aggregate_id: String::new(),
            reason: "aggregate_id is empty".into(),
        });
    }
    let mut out = Vec::new();
    match &e.payload {
        OrderEvent::OrderPlaced(p) => {
            require_id(e, &p.order_id, "order_id")?;
            out.push(change(
                e,
                "orders",
                &p.order_id,
                Op::Upsert(fields(json!({
                    "user_id": p.user_id,
                    "status": "PLACED",
                    "currency": p.currency,
                    "total_cents": p.total_cents,
                    "placed_at": iso8601(e.timestamp),
                }))),
            ));
            for (n, line) in p.lines.iter().enumerate() {
                out.push(change(
                    e,
                    "order_items",
                    &format!("{}/{}", p.order_id, n + 1),
                    Op::Upsert(fields(json!({
                        "order_id": p.order_id,
                        "line_no": n + 1,
                        "product_id": line.product_id,
                        "quantity": line.quantity,
                        "unit_price_cents": line.unit_price_cents,
                    }))),
                ));
            }
        }
        OrderEvent::OrderConfirmed(p) => {
            require_id(e, &p.order_id, "order_id")?;
            out.push(change(
                e,
                "orders",
                &p.order_id,
                Op::Patch(fields(json!({
                    "user_id": p.user_id,
                    "status": "CONFIRMED",
                    "payment_id": p.payment_id,
                    "total_cents": p.total_cents,
                    "currency": p.currency,
                }))),
            ));
        }
        OrderEvent::OrderCancelled(p) => {
            require_id(e, &p.order_id, "order_id")?;
            out.push(change(
                e,
                "orders",
                &p.order_id,
                Op::Patch(fields(json!({
                    "user_id": p.user_id,
                    "status": "CANCELLED",
                    "cancel_reason": p.reason,
                    "cancel_detail": p.detail,
                }))),
            ));
        }
    }
    out.push(order_event(e));
    Ok(out)
}

fn payments(e: &Envelope<PaymentEvent>) -> Result<Vec<Change>, ProjectError> {
    Ok(match &e.payload {
        PaymentEvent::PaymentAuthorized(p) => {
            require_id(e, &p.payment_id, "payment_id")?;
            vec![change(
                e,
                "payments",
                &p.payment_id,
                Op::Upsert(fields(json!({
                    "order_id": p.order_id,
                    "user_id": p.user_id,
                    "status": "AUTHORIZED",
                    "amount_cents": p.amount_cents,
                    "currency": p.currency,
                    "authorization_code": p.authorization_code,
                }))),
            )]
        }
        PaymentEvent::PaymentDeclined(p) => {
            require_id(e, &p.payment_id, "payment_id")?;
            vec![change(
                e,
                "payments",
                &p.payment_id,
                Op::Patch(fields(json!({
                    "order_id": p.order_id,
                    "user_id": p.user_id,
                    "status": "DECLINED",
                    "amount_cents": p.amount_cents,
                    "currency": p.currency,
                    "decline_reason": p.reason,
                    "decline_detail": p.detail,
                }))),
            )]
        }
        PaymentEvent::PaymentCaptured(p) => {
            require_id(e, &p.payment_id, "payment_id")?;
            vec![change(
                e,
                "payments",
                &p.payment_id,
                Op::Patch(fields(json!({
                    "order_id": p.order_id,
                    "status": "CAPTURED",
                    "authorization_code": p.authorization_code,
                    "amount_cents": p.amount_cents,
                    "currency": p.currency,
                }))),
            )]
        }
        PaymentEvent::PaymentRefunded(p) => {
            require_id(e, &p.payment_id, "payment_id")?;
            vec![
                change(
                    e,
                    "payments",
                    &p.payment_id,
                    Op::Patch(fields(json!({ "status": "REFUNDED" }))),
                ),
                change(
                    e,
                    "refunds",
                    &format!("{}/{}", p.payment_id, e.sequence),
                    Op::Upsert(fields(json!({
                        "payment_id": p.payment_id,
                        "order_id": p.order_id,
                        "amount_cents": p.amount_cents,
                        "currency": p.currency,
                        "reason": p.reason,
                    }))),
                ),
            ]
        }
    })
}

fn analytics(e: &Envelope<AnalyticsEvent>) -> Result<Vec<Change>, ProjectError> {
    Ok(match &e.payload {
        AnalyticsEvent::RevenueWindow(p) => {
            require_id(e, &p.currency, "currency")?;
            vec![change(
                e,
                "revenue_windows",
                &format!("{}/{}", p.window_start, p.currency),
                Op::Upsert(fields(json!({
                    "window_start": iso8601(p.window_start),
                    "window_end": iso8601(p.window_end),
                    "currency": p.currency,
                    "order_count": p.order_count,
                    "revenue_cents": p.revenue_cents,
                }))),
            )]
        }
        AnalyticsEvent::TopProducts(p) => vec![change(
            e,
            "top_products",
            &p.window_start.to_string(),
            Op::Upsert(fields(json!({
                "window_start": iso8601(p.window_start),
                "window_end": iso8601(p.window_end),
                "products": p.products,
            }))),
        )],
    })
}

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp, which PostgreSQL reads as
/// `timestamptz`.
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::TOMBSTONE_VERSION;
    use tributary_schemas::types::{OrderLine, OrderPlaced};

    #[test]
    fn iso8601_formats_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_764_066_000_123), "2025-11-25T10:20:00.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn an_order_placed_makes_the_order_its_items_and_an_event_store_entry() {
        let mut e: Envelope<OrderEvent> = Envelope::new(
            "o1",
            "c",
            OrderPlaced {
                order_id: "o1".into(),
                user_id: "u1".into(),
                lines: vec![
                    OrderLine {
                        product_id: "p1".into(),
                        quantity: 2,
                        unit_price_cents: 100,
                    },
                    OrderLine {
                        product_id: "p2".into(),
                        quantity: 1,
                        unit_price_cents: 50,
                    },
                ],
                currency: "EUR".into(),
                total_cents: 250,
            },
        )
        .with_sequence(1);
        e.timestamp = 0;
        let changes = PostgresProjection.project(&Event::Order(e)).expect("valid");
        let ids: Vec<(&str, &str)> = changes.iter().map(|c| (c.view, c.key.as_str())).collect();
        assert_eq!(
            ids,
            [
                ("orders", "o1"),
                ("order_items", "o1/1"),
                ("order_items", "o1/2"),
                ("order_events", "o1"),
            ]
        );
        assert!(changes.iter().all(|c| c.version == 1));
        let Op::Upsert(order) = &changes[0].op else {
            panic!("an upsert");
        };
        assert_eq!(order.get("status"), Some(&json!("PLACED")));
        assert_eq!(
            order.get("placed_at"),
            Some(&json!("1970-01-01T00:00:00.000Z"))
        );
        let Op::Append(entry) = &changes[3].op else {
            panic!("an append");
        };
        assert_eq!(entry.get("type"), Some(&json!("OrderPlaced")));
        assert_eq!(entry["payload"]["total_cents"], json!(250));
    }

    #[test]
    fn a_tombstone_deletes_for_good() {
        let changes = PostgresProjection.tombstone(&Tombstone {
            stream: EventStream::Orders,
            key: "o1".into(),
            timestamp_ms: 5,
        });
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].op, Op::Delete);
        assert_eq!(changes[0].version, TOMBSTONE_VERSION);
        assert!(PostgresProjection
            .tombstone(&Tombstone {
                stream: EventStream::Inventory,
                key: "p1".into(),
                timestamp_ms: 5,
            })
            .is_empty());
    }
}
