//! The order aggregate as the saga keeps it: its state, its validation and its pricing.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tributary_schemas::domain::{CancelReason, OrderLine, PlaceOrder};

use crate::catalog::Price;

/// Where an order's saga stands. `Confirmed` and `Cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// `ReserveStock` sent, waiting for `StockReserved` / `StockReservationFailed`.
    Reserving,
    /// Stock reserved, `AuthorizePayment` sent, waiting for the payment's answer.
    Authorizing,
    Confirmed,
    Cancelled,
}

/// One order's saga state (store `orders`, keyed by order id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub order_id: String,
    pub user_id: String,
    pub currency: String,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    pub stage: Stage,
    pub cancel_reason: Option<CancelReason>,
    /// Sequence of the order's last event on `events.orders`.
    pub sequence: i64,
    /// The payment the saga asks for: derived from the order id, so a retry asks for the same.
    pub payment_id: String,
    pub authorization_code: Option<String>,
    /// Correlation id of the flow, for records caused by a timer rather than by a record.
    pub correlation_id: String,
    /// Wall-clock time (ms) at which the saga gives up waiting.
    pub deadline_ms: i64,
    /// Envelope ids of the commands applied to this order (its PlaceOrder, a CancelOrder), so a
    /// retried command is a no-op. Kept in the order rather than in the `seen` store: one
    /// changelog record per order change instead of two.
    #[serde(default)]
    pub commands: Vec<String>,
}

impl OrderState {
    pub fn is_final(&self) -> bool {
        matches!(self.stage, Stage::Confirmed | Stage::Cancelled)
    }
}

/// The payment id the saga uses for an order.
pub fn payment_id(order_id: &str) -> String {
    format!("pay-{order_id}")
}

/// Checks what needs no other service: ids set, at least one line, positive quantities, each
/// product once.
pub fn validate(c: &PlaceOrder) -> Result<(), String> {
    if c.order_id.is_empty() || c.user_id.is_empty() {
        return Err("order_id and user_id must be set".into());
    }
    if c.lines.is_empty() {
        return Err("the order has no lines".into());
    }
    let mut products = BTreeSet::new();
    for l in &c.lines {
        if l.quantity <= 0 {
            return Err(format!(
                "line for `{}` has non-positive quantity {}",
                l.product_id, l.quantity
            ));
        }
        if !products.insert(l.product_id.as_str()) {
            return Err(format!("product `{}` appears on two lines", l.product_id));
        }
    }
    Ok(())
}

/// Prices every line from `prices` (the catalog's answer for the order's products); the
/// order's currency must be each product's.
pub fn price(
    c: &PlaceOrder,
    prices: &HashMap<String, Option<Price>>,
) -> Result<(Vec<OrderLine>, i64), String> {
    let mut lines = Vec::with_capacity(c.lines.len());
    let mut total: i64 = 0;
    for l in &c.lines {
        let Some(Some(p)) = prices.get(&l.product_id) else {
            return Err(format!("unknown product `{}`", l.product_id));
        };
        if p.currency != c.currency {
            return Err(format!(
                "product `{}` is priced in {}, the order in {}",
                l.product_id, p.currency, c.currency
            ));
        }
        let amount = p
            .unit_price_cents
            .checked_mul(i64::from(l.quantity))
            .and_then(|a| total.checked_add(a))
            .ok_or_else(|| "the order total overflows".to_string())?;
        total = amount;
        lines.push(OrderLine {
            product_id: l.product_id.clone(),
            quantity: l.quantity,
            unit_price_cents: p.unit_price_cents,
        });
    }
    Ok((lines, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_schemas::domain::PlaceOrderLine;

    fn order(lines: &[(&str, i32)]) -> PlaceOrder {
        PlaceOrder {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            currency: "EUR".into(),
            lines: lines
                .iter()
                .map(|(p, q)| PlaceOrderLine {
                    product_id: p.to_string(),
                    quantity: *q,
                })
                .collect(),
        }
    }

    #[test]
    fn validation_rules() {
        assert!(validate(&order(&[("p", 1)])).is_ok());
        assert!(validate(&order(&[])).is_err());
        assert!(validate(&order(&[("p", 0)])).is_err());
        assert!(validate(&order(&[("p", -2)])).is_err());
        assert!(validate(&order(&[("p", 1), ("p", 2)])).is_err());
    }

    #[test]
    fn pricing_snapshots_the_catalog() {
        let mut prices = HashMap::new();
        let eur = |c| {
            Some(Price {
                unit_price_cents: c,
                currency: "EUR".into(),
            })
        };
        prices.insert("a".to_string(), eur(250));
        prices.insert("b".to_string(), eur(1000));
        prices.insert("gone".to_string(), None);
        let (lines, total) = price(&order(&[("a", 2), ("b", 1)]), &prices).expect("priced");
        assert_eq!(total, 1500);
        assert_eq!(lines[0].unit_price_cents, 250);
        assert!(price(&order(&[("gone", 1)]), &prices).is_err());
        prices.insert(
            "usd".to_string(),
            Some(Price {
                unit_price_cents: 1,
                currency: "USD".into(),
            }),
        );
        assert!(price(&order(&[("usd", 1)]), &prices).is_err());
        prices.insert("big".to_string(), eur(i64::MAX));
        assert!(price(&order(&[("big", 2)]), &prices).is_err());
    }
}
