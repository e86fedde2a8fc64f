//! Windowed aggregates over confirmed orders (`events.analytics`).

use serde::{Deserialize, Serialize};

use super::topic_payload;

/// Units of one product sold in a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductQuantity {
    /// Id of the product.
    pub product_id: String,
    /// Units sold in the window.
    pub quantity: i64,
}

/// Revenue and order count of one currency over one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevenueWindow {
    /// Start of the window (inclusive), in milliseconds since the Unix epoch.
    pub window_start: i64,
    /// End of the window (exclusive), in milliseconds since the Unix epoch.
    pub window_end: i64,
    /// ISO 4217 currency code of `revenue_cents`.
    pub currency: String,
    /// Number of orders confirmed in the window.
    pub order_count: i64,
    /// Sum of confirmed order totals in the window, in minor units of `currency`.
    pub revenue_cents: i64,
}

/// The best-selling products over one window, best first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopProducts {
    /// Start of the window (inclusive), in milliseconds since the Unix epoch.
    pub window_start: i64,
    /// End of the window (exclusive), in milliseconds since the Unix epoch.
    pub window_end: i64,
    /// Products ranked by units sold, highest first.
    pub products: Vec<ProductQuantity>,
}

topic_payload! {
    /// Payload of `events.analytics`.
    pub enum AnalyticsEvent for "events.analytics" {
        RevenueWindow,
        TopProducts,
    }
}
