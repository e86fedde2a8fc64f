//! Events → changes of the MongoDB views.
//!
//! | collection | key | from |
//! |---|---|---|
//! | `products` | product id | `ProductAdded` (whole entry, stock = initial), `ProductUpdated` (catalog fields), `ProductRestocked` (absolute `available`/`reserved`) |
//! | `stock_reservations` | `<order id>:<product id>` | `StockReserved`, `StockReleased`, `StockCommitted` (state of that order's hold on that product) |
//! | `notifications` | notification id | `NotificationSent` (history, queried per user) |
//!
//! Why stock movements are not folded into `products.available/reserved`: `StockReserved`,
//! `StockReleased` and `StockCommitted` are facts about an *order* (one record names several
//! products) and carry deltas, versioned by the order's sequence, not the product's. A `$inc`
//! guarded by that version would not be idempotent per product (the product document holds its
//! own sequence), and deltas do not commute with the absolute levels `ProductRestocked` carries
//! (a restock's level already includes every reservation the inventory owner had processed, which
//! the sink may see before or after it, since the two live under different keys). So each order's
//! hold on a product is its own versioned entity, which is exactly replay-proof; the product
//! document's levels are the owner's last absolute levels (add, restock).

pub(crate) use crate::runner::projection::build::fields;
use serde_json::{json, Value};
use tributary_schemas::types::{
    InventoryEvent, InventoryEventEnvelope, NotificationEvent, NotificationEventEnvelope, StockItem,
};

use crate::change::{Change, Fields, Op};
use crate::runner::{Event, EventStream, ProjectError, Projection, Tombstone};

/// Collection of the product catalog with stock levels.
pub const PRODUCTS: &str = "products";
/// Collection of per-order holds on products.
pub const STOCK_RESERVATIONS: &str = "stock_reservations";
/// Collection of sent notifications (history per user).
pub const NOTIFICATIONS: &str = "notifications";
/// Collection of notification templates (seeded by a migration, not fed by events).
pub const NOTIFICATION_TEMPLATES: &str = "notification_templates";

pub use crate::runner::TOMBSTONE_VERSION;

/// The MongoDB sink's [`Projection`]: `events.inventory` and `events.notifications`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MongoProjection;

impl Projection for MongoProjection {
    fn streams(&self) -> &[EventStream] {
        &[EventStream::Inventory, EventStream::Notifications]
    }

    fn project(&self, event: &Event) -> Result<Vec<Change>, ProjectError> {
        Ok(match event {
            Event::Inventory(e) => project_inventory(&e.aggregate_id, Some(e)),
            Event::Notification(e) => project_notification(&e.aggregate_id, Some(e)),
            _ => Vec::new(),
        })
    }

    fn tombstone(&self, t: &Tombstone) -> Vec<Change> {
        let changes = match t.stream {
            EventStream::Inventory => project_inventory(&t.key, None),
            EventStream::Notifications => project_notification(&t.key, None),
            _ => Vec::new(),
        };
        with_time(changes, t.timestamp_ms)
    }
}

/// Changes for one `events.inventory` record; `value` is `None` for a tombstone of `key` (a
/// product id), which deletes that product.
pub fn project_inventory(key: &str, value: Option<&InventoryEventEnvelope>) -> Vec<Change> {
    let Some(env) = value else {
        return vec![tombstone(PRODUCTS, key)];
    };
    let change = |view: &'static str, key: String, op: Op| Change {
        view,
        key,
        version: env.sequence,
        event_time_ms: env.timestamp,
        op,
    };
    match &env.payload {
        InventoryEvent::ProductAdded(e) => vec![change(
            PRODUCTS,
            e.product_id.clone(),
            Op::Upsert(fields(json!({
                "sku": e.sku,
                "name": e.name,
                "description": e.description,
                "unit_price_cents": e.unit_price_cents,
                "currency": e.currency,
                "available": e.initial_stock,
                "reserved": 0,
            }))),
        )],
        InventoryEvent::ProductUpdated(e) => vec![change(
            PRODUCTS,
            e.product_id.clone(),
            Op::Patch(fields(json!({
                "name": e.name,
                "description": e.description,
                "unit_price_cents": e.unit_price_cents,
                "currency": e.currency,
            }))),
        )],
        InventoryEvent::ProductRestocked(e) => vec![change(
            PRODUCTS,
            e.product_id.clone(),
            Op::Patch(fields(json!({
                "available": e.available,
                "reserved": e.reserved,
            }))),
        )],
        InventoryEvent::StockReserved(e) => holds(&e.order_id, &e.reserved_items, "RESERVED", None)
            .map(|(key, f)| change(STOCK_RESERVATIONS, key, Op::Upsert(f)))
            .collect(),
        InventoryEvent::StockReleased(e) => {
            let reason = serde_json::to_value(e.reason).unwrap_or(Value::Null);
            holds(&e.order_id, &e.released_items, "RELEASED", Some(reason))
                .map(|(key, f)| change(STOCK_RESERVATIONS, key, Op::Upsert(f)))
                .collect()
        }
        InventoryEvent::StockCommitted(e) => {
            holds(&e.order_id, &e.committed_items, "COMMITTED", None)
                .map(|(key, f)| change(STOCK_RESERVATIONS, key, Op::Upsert(f)))
                .collect()
        }
        // A product's absolute levels after a reservation, release or sale, versioned by the
        // product's own sequence like the product events above.
        InventoryEvent::ProductStockChanged(e) => vec![change(
            PRODUCTS,
            e.product_id.clone(),
            Op::Patch(fields(json!({
                "available": e.available,
                "reserved": e.reserved,
            }))),
        )],
        // Nothing was reserved, so no view changes.
        InventoryEvent::StockReservationFailed(_) => Vec::new(),
    }
}

/// Changes for one `events.notifications` record. A tombstone changes nothing: the topic is
/// keyed by user, and a user's history is many documents, which one [`Change`] cannot remove.
pub fn project_notification(_key: &str, value: Option<&NotificationEventEnvelope>) -> Vec<Change> {
    let Some(env) = value else {
        return Vec::new();
    };
    match &env.payload {
        NotificationEvent::NotificationSent(e) => vec![Change {
            view: NOTIFICATIONS,
            key: e.notification_id.clone(),
            version: env.sequence,
            event_time_ms: env.timestamp,
            op: Op::Upsert(fields(json!({
                "user_id": e.user_id,
                "template_id": e.template_id,
                "channel": e.channel,
                "rendered_text": e.rendered_text,
                "sent_at_ms": env.timestamp,
            }))),
        }],
    }
}

fn holds<'a>(
    order_id: &'a str,
    items: &'a [StockItem],
    state: &'static str,
    reason: Option<Value>,
) -> impl Iterator<Item = (String, Fields)> + 'a {
    items.iter().map(move |item| {
        (
            format!("{order_id}:{}", item.product_id),
            fields(json!({
                "order_id": order_id,
                "product_id": item.product_id,
                "quantity": item.quantity,
                "state": state,
                "reason": reason,
            })),
        )
    })
}

pub(crate) fn tombstone(view: &'static str, key: &str) -> Change {
    Change {
        view,
        key: key.to_string(),
        version: TOMBSTONE_VERSION,
        event_time_ms: 0,
        op: Op::Delete,
    }
}

/// Stamps tombstone changes with the record's time (they have no envelope time).
pub(crate) fn with_time(mut changes: Vec<Change>, timestamp_ms: i64) -> Vec<Change> {
    for c in &mut changes {
        c.event_time_ms = timestamp_ms;
    }
    changes
}
