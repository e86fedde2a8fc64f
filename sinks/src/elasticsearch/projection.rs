//! Events → changes of the Elasticsearch views.
//!
//! | view (alias) | key | from |
//! |---|---|---|
//! | `products` | product id | `ProductAdded` (whole document, `stock` = initial), `ProductUpdated` (catalog fields), `ProductRestocked` (`stock` = absolute available level) |
//! | `orders` | order id | `OrderPlaced` (whole document, status `PLACED`), `OrderConfirmed`/`OrderCancelled` (status and details) |
//! | `analytics` | `revenue:<currency>:<window start>`, `top_products:<window start>` | `RevenueWindow`, `TopProducts` (a re-emitted window replaces the older one) |
//!
//! Stock movements of orders (`StockReserved`, ...) do not change `products.stock`: they carry
//! deltas versioned by the order, not the product (see the MongoDB projection for why that
//! cannot be applied idempotently to the product's document).

use serde_json::{json, Value};
use tributary_schemas::types::{
    AnalyticsEvent, AnalyticsEventEnvelope, InventoryEvent, InventoryEventEnvelope, OrderEvent,
    OrderEventEnvelope,
};

use crate::change::{Change, Op};
use crate::mongodb::projection::{fields, tombstone, with_time};
use crate::runner::{Event, EventStream, ProjectError, Projection, Tombstone};

pub use crate::runner::TOMBSTONE_VERSION;

/// The Elasticsearch sink's [`Projection`]: `events.inventory`, `events.orders` and
/// `events.analytics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EsProjection;

impl Projection for EsProjection {
    fn streams(&self) -> &[EventStream] {
        &[
            EventStream::Inventory,
            EventStream::Orders,
            EventStream::Analytics,
        ]
    }

    fn project(&self, event: &Event) -> Result<Vec<Change>, ProjectError> {
        Ok(match event {
            Event::Inventory(e) => project_inventory(&e.aggregate_id, Some(e)),
            Event::Order(e) => project_order(&e.aggregate_id, Some(e)),
            Event::Analytics(e) => project_analytics(&e.aggregate_id, Some(e)),
            _ => Vec::new(),
        })
    }

    fn tombstone(&self, t: &Tombstone) -> Vec<Change> {
        let changes = match t.stream {
            EventStream::Inventory => project_inventory(&t.key, None),
            EventStream::Orders => project_order(&t.key, None),
            EventStream::Analytics => project_analytics(&t.key, None),
            _ => Vec::new(),
        };
        with_time(changes, t.timestamp_ms)
    }
}

/// View of products for full-text search and filters.
pub const PRODUCTS: &str = "products";
/// View of orders for search by user, status, amount and date.
pub const ORDERS: &str = "orders";
/// View of windowed analytics.
pub const ANALYTICS: &str = "analytics";

/// Changes for one `events.inventory` record; a tombstone of `key` (a product id) deletes the
/// product.
pub fn project_inventory(key: &str, value: Option<&InventoryEventEnvelope>) -> Vec<Change> {
    let Some(env) = value else {
        return vec![tombstone(PRODUCTS, key)];
    };
    let (id, op) = match &env.payload {
        InventoryEvent::ProductAdded(e) => (
            &e.product_id,
            Op::Upsert(fields(json!({
                "sku": e.sku,
                "name": e.name,
                "description": e.description,
                "price_cents": e.unit_price_cents,
                "currency": e.currency,
                "stock": e.initial_stock,
            }))),
        ),
        InventoryEvent::ProductUpdated(e) => (
            &e.product_id,
            Op::Patch(fields(json!({
                "name": e.name,
                "description": e.description,
                "price_cents": e.unit_price_cents,
                "currency": e.currency,
            }))),
        ),
        InventoryEvent::ProductRestocked(e) => (
            &e.product_id,
            Op::Patch(fields(json!({ "stock": e.available }))),
        ),
        InventoryEvent::ProductStockChanged(e) => (
            &e.product_id,
            Op::Patch(fields(json!({ "stock": e.available }))),
        ),
        InventoryEvent::StockReserved(_)
        | InventoryEvent::StockReservationFailed(_)
        | InventoryEvent::StockReleased(_)
        | InventoryEvent::StockCommitted(_) => return Vec::new(),
    };
    vec![Change {
        view: PRODUCTS,
        key: id.clone(),
        version: env.sequence,
        event_time_ms: env.timestamp,
        op,
    }]
}

/// Changes for one `events.orders` record; a tombstone of `key` (an order id) deletes the order.
pub fn project_order(key: &str, value: Option<&OrderEventEnvelope>) -> Vec<Change> {
    let Some(env) = value else {
        return vec![tombstone(ORDERS, key)];
    };
    let (id, op) = match &env.payload {
        OrderEvent::OrderPlaced(e) => (
            &e.order_id,
            Op::Upsert(fields(json!({
                "user_id": e.user_id,
                "status": "PLACED",
                "total_cents": e.total_cents,
                "currency": e.currency,
                "placed_at": env.timestamp,
                "product_ids": e.lines.iter().map(|l| l.product_id.as_str()).collect::<Vec<_>>(),
                "item_count": e.lines.iter().map(|l| i64::from(l.quantity)).sum::<i64>(),
            }))),
        ),
        OrderEvent::OrderConfirmed(e) => (
            &e.order_id,
            Op::Patch(fields(json!({
                "status": "CONFIRMED",
                "total_cents": e.total_cents,
                "payment_id": e.payment_id,
            }))),
        ),
        OrderEvent::OrderCancelled(e) => (
            &e.order_id,
            Op::Patch(fields(json!({
                "status": "CANCELLED",
                "cancel_reason": serde_json::to_value(e.reason).unwrap_or(Value::Null),
            }))),
        ),
    };
    vec![Change {
        view: ORDERS,
        key: id.clone(),
        version: env.sequence,
        event_time_ms: env.timestamp,
        op,
    }]
}

/// Changes for one `events.analytics` record. A tombstone changes nothing: documents are keyed
/// by window, not by the record's key.
pub fn project_analytics(_key: &str, value: Option<&AnalyticsEventEnvelope>) -> Vec<Change> {
    let Some(env) = value else {
        return Vec::new();
    };
    let (id, doc) = match &env.payload {
        AnalyticsEvent::RevenueWindow(e) => (
            format!("revenue:{}:{}", e.currency, e.window_start),
            json!({
                "kind": "revenue",
                "window_start": e.window_start,
                "window_end": e.window_end,
                "currency": e.currency,
                "order_count": e.order_count,
                "revenue_cents": e.revenue_cents,
            }),
        ),
        AnalyticsEvent::TopProducts(e) => (
            format!("top_products:{}", e.window_start),
            json!({
                "kind": "top_products",
                "window_start": e.window_start,
                "window_end": e.window_end,
                "products": e.products,
            }),
        ),
    };
    vec![Change {
        view: ANALYTICS,
        key: id,
        version: env.sequence,
        event_time_ms: env.timestamp,
        op: Op::Upsert(fields(doc)),
    }]
}
