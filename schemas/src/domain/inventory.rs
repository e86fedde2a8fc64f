//! Product catalog, stock levels and per-order reservations (`commands.inventory`,
//! `events.inventory`).

use serde::{Deserialize, Serialize};

use super::topic_payload;

/// A quantity of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockItem {
    /// Id of the product.
    pub product_id: String,
    /// Number of units.
    pub quantity: i32,
}

/// A product that did not have enough available units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockShortage {
    /// Id of the product.
    pub product_id: String,
    /// Units the order asked for.
    pub requested: i32,
    /// Units that were available.
    pub available: i32,
}

/// Why a reservation was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StockReleaseReason {
    /// The order's payment was declined.
    PaymentDeclined,
    /// The saga did not complete in time.
    Timeout,
    /// The order was cancelled for another reason.
    OrderCancelled,
}

/// Add a product to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddProduct {
    /// Id of the new product, chosen by the caller so retries are idempotent.
    pub product_id: String,
    /// Stock keeping unit code of the product.
    pub sku: String,
    /// Product name.
    pub name: String,
    /// Product description, if any.
    pub description: Option<String>,
    /// Price of one unit in minor units of `currency`.
    pub unit_price_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Units available for sale when the product is added.
    pub initial_stock: i32,
}

/// Add units to a product's available stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestockProduct {
    /// Id of the product.
    pub product_id: String,
    /// Number of units added; must be positive.
    pub quantity: i32,
}

/// Change a product's catalog data; `None` fields stay unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProduct {
    /// Id of the product.
    pub product_id: String,
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New unit price in minor units of `currency`.
    pub unit_price_cents: Option<i64>,
    /// ISO 4217 code of the new price's currency.
    pub currency: Option<String>,
}

/// A product was added to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductAdded {
    /// Id of the product.
    pub product_id: String,
    /// Stock keeping unit code of the product.
    pub sku: String,
    /// Product name.
    pub name: String,
    /// Product description, if any.
    pub description: Option<String>,
    /// Price of one unit in minor units of `currency`.
    pub unit_price_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Units available for sale when the product was added.
    pub initial_stock: i32,
}

/// Units were added to a product's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRestocked {
    /// Id of the product.
    pub product_id: String,
    /// Number of units added.
    pub quantity: i32,
    /// Units available for sale after the restock.
    pub available: i32,
    /// Units held by open reservations at the time of the restock.
    pub reserved: i32,
}

/// Stock for every line of an order was reserved (saga step 1 succeeded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    /// Id of the order the reservation is for.
    pub order_id: String,
    /// Units reserved, one entry per product.
    pub reserved_items: Vec<StockItem>,
}

/// An order's stock could not be reserved; nothing was reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReservationFailed {
    /// Id of the order the reservation was for.
    pub order_id: String,
    /// Products that were short, one entry per product.
    pub shortages: Vec<StockShortage>,
}

/// An order's reservation was given back to available stock (saga compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    /// Id of the order whose reservation was released.
    pub order_id: String,
    /// Units released, one entry per product.
    pub released_items: Vec<StockItem>,
    /// Why the reservation was released.
    pub reason: StockReleaseReason,
}

/// An order's reservation became a sale when the order was confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCommitted {
    /// Id of the confirmed order.
    pub order_id: String,
    /// Units sold, one entry per product.
    pub committed_items: Vec<StockItem>,
}

/// A product's catalog data changed; carries the whole catalog entry after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductUpdated {
    /// Id of the product.
    pub product_id: String,
    /// Name after the change.
    pub name: String,
    /// Description after the change, if any.
    pub description: Option<String>,
    /// Unit price after the change in minor units of `currency`.
    pub unit_price_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// Reserve stock for every line of an order, all lines or none (order saga step 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStock {
    /// Id of the order the reservation is for; one reservation per order.
    pub order_id: String,
    /// Units to reserve, one entry per product.
    pub items: Vec<StockItem>,
}

/// Give an order's reservation back to available stock (saga compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStock {
    /// Id of the order whose reservation is released.
    pub order_id: String,
    /// Why the reservation is released.
    pub reason: StockReleaseReason,
}

/// Turn an order's reservation into a sale once the order is confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStock {
    /// Id of the confirmed order.
    pub order_id: String,
    /// Id of the payment that confirmed the order.
    pub payment_id: String,
}

/// A product's stock levels after any change (reservation, release, sale, restock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductStockChanged {
    /// Id of the product.
    pub product_id: String,
    /// Units available for sale after the change.
    pub available: i32,
    /// Units held by open reservations after the change.
    pub reserved: i32,
}

topic_payload! {
    /// Payload of `commands.inventory`.
    pub enum InventoryCommand for "commands.inventory" {
        AddProduct,
        RestockProduct,
        UpdateProduct,
        ReserveStock,
        ReleaseStock,
        CommitStock,
    }
}

topic_payload! {
    /// Payload of `events.inventory`.
    pub enum InventoryEvent for "events.inventory" {
        ProductAdded,
        ProductRestocked,
        StockReserved,
        StockReservationFailed,
        StockReleased,
        StockCommitted,
        ProductUpdated,
        ProductStockChanged,
    }
}
