//! What each event means for the Redis keys.
//!
//! | event | key (under the prefix) | change |
//! |---|---|---|
//! | `OrderPlaced` | `order:<id>` | upsert status PLACED, user, total |
//! | `OrderPlaced` | `ratelimit:orders:<user>:<window start>` | append the order id (the count is `HLEN`) |
//! | `OrderConfirmed`, `OrderCancelled` | `order:<id>` | patch status |
//! | `ProductAdded` | `product:<id>` | upsert catalog data and stock |
//! | `ProductRestocked`, `ProductUpdated` | `product:<id>` | patch stock / catalog data |
//! | `SessionStarted` | `session:<id>` | upsert, expiring `session_ttl` after the event |
//! | `SessionEnded` | `session:<id>` | delete |
//! | tombstone on orders / inventory | `order:<key>` / `product:<key>` | delete |
//!
//! Expiry is absolute (event time + TTL, in the reserved field [`EXPIRE_AT_FIELD`]), so replaying
//! an old session or rate window creates nothing that outlives its time.

use std::time::Duration;

use serde_json::json;
use tributary_schemas::types::{Envelope, InventoryEvent, OrderEvent, UserEvent};

use crate::change::{Change, Op};
use crate::runner::projection::build::{self, change, fields, require_id};
use crate::runner::{Event, EventStream, ProjectError, Projection, Tombstone};

/// Reserved field: absolute expiry of the key in ms since the epoch; the writer turns it into
/// `PEXPIREAT` instead of storing it.
pub const EXPIRE_AT_FIELD: &str = "_expire_at_ms";
/// Reserved field of appends: the member to add to the key's hash.
pub const MEMBER_FIELD: &str = "_member";

pub const VIEW_ORDER: &str = "order";
pub const VIEW_PRODUCT: &str = "product";
pub const VIEW_SESSION: &str = "session";
pub const VIEW_ORDER_RATE: &str = "ratelimit:orders";

/// The Redis projection.
#[derive(Debug, Clone)]
pub struct RedisProjection {
    /// A session expires this long after it started unless it ends first.
    pub session_ttl: Duration,
    /// Width of the per-user order rate windows.
    pub rate_window: Duration,
}

impl Default for RedisProjection {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(30 * 60),
            rate_window: Duration::from_secs(60),
        }
    }
}

const STREAMS: &[EventStream] = &[
    EventStream::Users,
    EventStream::Inventory,
    EventStream::Orders,
];

impl Projection for RedisProjection {
    fn streams(&self) -> &[EventStream] {
        STREAMS
    }

    fn project(&self, event: &Event) -> Result<Vec<Change>, ProjectError> {
        match event {
            Event::Order(e) => self.orders(e),
            Event::Inventory(e) => products(e),
            Event::User(e) => self.sessions(e),
            _ => Ok(Vec::new()),
        }
    }

    fn tombstone(&self, t: &Tombstone) -> Vec<Change> {
        let view = match t.stream {
            EventStream::Orders => VIEW_ORDER,
            EventStream::Inventory => VIEW_PRODUCT,
            _ => return Vec::new(),
        };
        vec![build::tombstone(t, view)]
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl RedisProjection {
    fn orders(&self, e: &Envelope<OrderEvent>) -> Result<Vec<Change>, ProjectError> {
        Ok(match &e.payload {
            OrderEvent::OrderPlaced(p) => {
                require_id(e, &p.order_id, "order_id")?;
                require_id(e, &p.user_id, "user_id")?;
                let window = millis(self.rate_window);
                let start = e.timestamp.div_euclid(window) * window;
                vec![
                    change(
                        e,
                        VIEW_ORDER,
                        &p.order_id,
                        Op::Upsert(fields(json!({
                            "status": "PLACED",
                            "user_id": p.user_id,
                            "total_cents": p.total_cents,
                            "currency": p.currency,
                        }))),
                    ),
                    change(
                        e,
                        VIEW_ORDER_RATE,
                        &format!("{}:{start}", p.user_id),
                        Op::Append(fields(json!({
                            MEMBER_FIELD: p.order_id,
                            // Kept one extra window so a reader at a window's edge still sees it.
                            EXPIRE_AT_FIELD: start.saturating_add(window.saturating_mul(2)),
                        }))),
                    ),
                ]
            }
            OrderEvent::OrderConfirmed(p) => {
                require_id(e, &p.order_id, "order_id")?;
                vec![change(
                    e,
                    VIEW_ORDER,
                    &p.order_id,
                    Op::Patch(fields(json!({
                        "status": "CONFIRMED",
                        "payment_id": p.payment_id,
                    }))),
                )]
            }
            OrderEvent::OrderCancelled(p) => {
                require_id(e, &p.order_id, "order_id")?;
                vec![change(
                    e,
                    VIEW_ORDER,
                    &p.order_id,
                    Op::Patch(fields(json!({
                        "status": "CANCELLED",
                        "cancel_reason": p.reason,
                    }))),
                )]
            }
        })
    }

    fn sessions(&self, e: &Envelope<UserEvent>) -> Result<Vec<Change>, ProjectError> {
        Ok(match &e.payload {
            UserEvent::SessionStarted(p) => {
                require_id(e, &p.session_id, "session_id")?;
                vec![change(
                    e,
                    VIEW_SESSION,
                    &p.session_id,
                    Op::Upsert(fields(json!({
                        "user_id": p.user_id,
                        "user_agent": p.user_agent,
                        "started_at_ms": e.timestamp,
                        EXPIRE_AT_FIELD: e.timestamp.saturating_add(millis(self.session_ttl)),
                    }))),
                )]
            }
            UserEvent::SessionEnded(p) => {
                require_id(e, &p.session_id, "session_id")?;
                vec![change(e, VIEW_SESSION, &p.session_id, Op::Delete)]
            }
            _ => Vec::new(),
        })
    }
}

fn products(e: &Envelope<InventoryEvent>) -> Result<Vec<Change>, ProjectError> {
    Ok(match &e.payload {
        InventoryEvent::ProductAdded(p) => {
            require_id(e, &p.product_id, "product_id")?;
            vec![change(
                e,
                VIEW_PRODUCT,
                &p.product_id,
                Op::Upsert(fields(json!({
                    "sku": p.sku,
                    "name": p.name,
                    "description": p.description,
                    "unit_price_cents": p.unit_price_cents,
                    "currency": p.currency,
                    "available": p.initial_stock,
                    "reserved": 0,
                }))),
            )]
        }
        InventoryEvent::ProductRestocked(p) => {
            require_id(e, &p.product_id, "product_id")?;
            vec![change(
                e,
                VIEW_PRODUCT,
                &p.product_id,
                Op::Patch(fields(json!({
                    "available": p.available,
                    "reserved": p.reserved,
                }))),
            )]
        }
        InventoryEvent::ProductUpdated(p) => {
            require_id(e, &p.product_id, "product_id")?;
            vec![change(
                e,
                VIEW_PRODUCT,
                &p.product_id,
                Op::Patch(fields(json!({
                    "name": p.name,
                    "description": p.description,
                    "unit_price_cents": p.unit_price_cents,
                    "currency": p.currency,
                }))),
            )]
        }
        // Reservations are versioned by the order's sequence, not the product's: they cannot
        // be applied to a product key by version, so the cache takes stock levels only from
        // the product's own events (restocks carry the levels after the change).
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_schemas::types::{SessionStarted, UserEventEnvelope};

    #[test]
    fn a_session_expires_a_ttl_after_it_started_whenever_it_is_applied() {
        let mut e: UserEventEnvelope = Envelope::new(
            "u1",
            "c",
            SessionStarted {
                session_id: "s1".into(),
                user_id: "u1".into(),
                user_agent: None,
            },
        )
        .with_sequence(4);
        e.timestamp = 1_000_000;
        let p = RedisProjection {
            session_ttl: Duration::from_secs(60),
            rate_window: Duration::from_secs(60),
        };
        let changes = p.project(&Event::User(e)).expect("valid");
        assert_eq!(changes.len(), 1);
        let c = &changes[0];
        assert_eq!((c.view, c.key.as_str(), c.version), (VIEW_SESSION, "s1", 4));
        let Op::Upsert(f) = &c.op else {
            panic!("an upsert, not {:?}", c.op);
        };
        assert_eq!(f.get(EXPIRE_AT_FIELD), Some(&json!(1_060_000)));
        assert_eq!(f.get("user_agent"), Some(&serde_json::Value::Null));
    }

    #[test]
    fn an_empty_id_is_invalid() {
        let e: UserEventEnvelope = Envelope::new(
            "u1",
            "c",
            SessionStarted {
                session_id: " ".into(),
                user_id: "u1".into(),
                user_agent: None,
            },
        );
        assert!(RedisProjection::default().project(&Event::User(e)).is_err());
    }
}
