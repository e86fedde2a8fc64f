//! The event-sourced order aggregate (`commands.orders`, `events.orders`).

use serde::{Deserialize, Serialize};

use super::topic_payload;

/// One product and quantity of an order being placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrderLine {
    /// Id of the product.
    pub product_id: String,
    /// Number of units ordered; must be positive.
    pub quantity: i32,
}

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Id of the product.
    pub product_id: String,
    /// Number of units ordered.
    pub quantity: i32,
    /// Price of one unit when the order was placed, in minor units of the order's currency.
    pub unit_price_cents: i64,
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelReason {
    /// Stock could not be reserved.
    StockOut,
    /// The payment was declined.
    PaymentDeclined,
    /// The saga did not complete in time.
    Timeout,
    /// The user cancelled the order.
    UserCancelled,
    /// The order was invalid.
    Invalid,
}

/// Place an order; starts the order saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// Id of the new order, chosen by the caller so retries are idempotent.
    pub order_id: String,
    /// Id of the ordering user.
    pub user_id: String,
    /// What is ordered, one line per product.
    pub lines: Vec<PlaceOrderLine>,
    /// ISO 4217 code of the currency the order is paid in.
    pub currency: String,
}

/// Cancel an order that is not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrder {
    /// Id of the order.
    pub order_id: String,
    /// Id of the user asking for the cancellation.
    pub user_id: String,
    /// Free-text note from the user, if any.
    pub note: Option<String>,
}

/// An order was accepted and priced; the saga reserves its stock next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Id of the order.
    pub order_id: String,
    /// Id of the ordering user.
    pub user_id: String,
    /// The order's lines, one per product.
    pub lines: Vec<OrderLine>,
    /// ISO 4217 currency code of every amount of the order.
    pub currency: String,
    /// Sum of quantity x unit price over all lines, in minor units of `currency`.
    pub total_cents: i64,
}

/// An order's stock was reserved and its payment authorized; the order is final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// Id of the order.
    pub order_id: String,
    /// Id of the ordering user.
    pub user_id: String,
    /// Id of the payment that was authorized for the order.
    pub payment_id: String,
    /// Amount charged, in minor units of `currency`.
    pub total_cents: i64,
    /// ISO 4217 currency code of `total_cents`.
    pub currency: String,
}

/// An order was cancelled; any reservation or payment is compensated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Id of the order.
    pub order_id: String,
    /// Id of the ordering user.
    pub user_id: String,
    /// Why the order was cancelled.
    pub reason: CancelReason,
    /// Human-readable detail about the cancellation, if any.
    pub detail: Option<String>,
}

topic_payload! {
    /// Payload of `commands.orders`.
    pub enum OrderCommand for "commands.orders" {
        PlaceOrder,
        CancelOrder,
    }
}

topic_payload! {
    /// Payload of `events.orders`.
    pub enum OrderEvent for "events.orders" {
        OrderPlaced,
        OrderConfirmed,
        OrderCancelled,
    }
}
