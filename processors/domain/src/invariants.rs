//! The pipeline's invariants, as functions over the events a run produced. Tests call them on
//! what they read back from the topics; the same functions can feed a summary or a metric.
//!
//! Each returns the violations it found (empty when the invariant holds). Events are
//! de-duplicated by (aggregate, sequence, type) first: under at-least-once an event can be
//! on its topic twice, and that is a delivery artefact, not a second fact.

use std::collections::{BTreeMap, BTreeSet};

use tributary_schemas::domain::{
    CancelReason, InventoryEvent, NotificationEvent, OrderEvent, PaymentEvent,
};
use tributary_schemas::types::{Envelope, TopicPayload};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

fn dedup<P: TopicPayload>(events: &[Envelope<P>]) -> Vec<&Envelope<P>> {
    let mut seen = BTreeSet::new();
    events
        .iter()
        .filter(|e| seen.insert((e.aggregate_id.clone(), e.sequence, e.payload.branch_name())))
        .collect()
}

/// How an order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Confirmed,
    Cancelled(CancelReason),
}

/// Every final event per order id, in topic order.
pub fn outcomes(orders: &[Envelope<OrderEvent>]) -> BTreeMap<String, Vec<Outcome>> {
    let mut out: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    for e in dedup(orders) {
        match &e.payload {
            OrderEvent::OrderConfirmed(c) => out
                .entry(c.order_id.clone())
                .or_default()
                .push(Outcome::Confirmed),
            OrderEvent::OrderCancelled(c) => out
                .entry(c.order_id.clone())
                .or_default()
                .push(Outcome::Cancelled(c.reason)),
            OrderEvent::OrderPlaced(_) => {}
        }
    }
    out
}

/// Every placed order ended exactly once, confirmed or cancelled.
pub fn every_order_final<'a>(
    placed: impl IntoIterator<Item = &'a str>,
    orders: &[Envelope<OrderEvent>],
) -> Vec<Violation> {
    let outcomes = outcomes(orders);
    let mut v = Vec::new();
    for id in placed {
        match outcomes.get(id).map(Vec::as_slice) {
            Some([_]) => {}
            None | Some([]) => v.push(violation(
                "order-final",
                format!("order {id} has no outcome"),
            )),
            Some(many) => v.push(violation(
                "order-final",
                format!("order {id} has {} outcomes: {many:?}", many.len()),
            )),
        }
    }
    v
}

#[derive(Default, Debug)]
struct StockFlow {
    initial: i64,
    restocked: i64,
    sold: i64,
    reserved_flow: i64,
    /// (sequence, available, reserved) of the product's latest level.
    level: Option<(i64, i64, i64)>,
}

/// Per product: `initial + restocks = available + reserved + sold`, where `available` and
/// `reserved` are the last levels the inventory published, `sold` sums the committed
/// reservations, and the published `reserved` equals reservations minus releases and sales.
/// No published level is negative.
pub fn stock_conserved(inventory: &[Envelope<InventoryEvent>]) -> Vec<Violation> {
    let mut flows: BTreeMap<String, StockFlow> = BTreeMap::new();
    let mut v = Vec::new();
    let mut level = |flows: &mut BTreeMap<String, StockFlow>, id: &str, seq, a: i32, r: i32| {
        if a < 0 || r < 0 {
            v.push(violation(
                "stock-conserved",
                format!(
                    "product {id} level negative at sequence {seq}: available {a}, reserved {r}"
                ),
            ));
        }
        let f = flows.entry(id.to_string()).or_default();
        if f.level.is_none_or(|(s, _, _)| s < seq) {
            f.level = Some((seq, i64::from(a), i64::from(r)));
        }
    };
    for e in dedup(inventory) {
        match &e.payload {
            InventoryEvent::ProductAdded(p) => {
                flows.entry(p.product_id.clone()).or_default().initial = i64::from(p.initial_stock);
                level(&mut flows, &p.product_id, e.sequence, p.initial_stock, 0);
            }
            InventoryEvent::ProductRestocked(p) => {
                flows.entry(p.product_id.clone()).or_default().restocked += i64::from(p.quantity);
                level(
                    &mut flows,
                    &p.product_id,
                    e.sequence,
                    p.available,
                    p.reserved,
                );
            }
            InventoryEvent::ProductStockChanged(p) => {
                level(
                    &mut flows,
                    &p.product_id,
                    e.sequence,
                    p.available,
                    p.reserved,
                );
            }
            InventoryEvent::StockReserved(r) => {
                for i in &r.reserved_items {
                    flows.entry(i.product_id.clone()).or_default().reserved_flow +=
                        i64::from(i.quantity);
                }
            }
            InventoryEvent::StockReleased(r) => {
                for i in &r.released_items {
                    flows.entry(i.product_id.clone()).or_default().reserved_flow -=
                        i64::from(i.quantity);
                }
            }
            InventoryEvent::StockCommitted(r) => {
                for i in &r.committed_items {
                    let f = flows.entry(i.product_id.clone()).or_default();
                    f.reserved_flow -= i64::from(i.quantity);
                    f.sold += i64::from(i.quantity);
                }
            }
            InventoryEvent::StockReservationFailed(_) | InventoryEvent::ProductUpdated(_) => {}
        }
    }
    for (id, f) in &flows {
        let (_, available, reserved) = f.level.unwrap_or((0, 0, 0));
        if f.initial + f.restocked != available + reserved + f.sold {
            v.push(violation(
                "stock-conserved",
                format!(
                    "product {id}: initial {} + restocked {} != available {available} + reserved {reserved} + sold {}",
                    f.initial, f.restocked, f.sold
                ),
            ));
        }
        if reserved != f.reserved_flow {
            v.push(violation(
                "stock-conserved",
                format!(
                    "product {id}: published reserved {reserved} but reservations net {}",
                    f.reserved_flow
                ),
            ));
        }
    }
    v
}

#[derive(Default)]
struct PaymentFacts {
    authorized: bool,
    captured: bool,
    refunded: bool,
}

fn payment_facts(payments: &[Envelope<PaymentEvent>]) -> BTreeMap<String, PaymentFacts> {
    let mut m: BTreeMap<String, PaymentFacts> = BTreeMap::new();
    for e in dedup(payments) {
        match &e.payload {
            PaymentEvent::PaymentAuthorized(p) => {
                m.entry(p.order_id.clone()).or_default().authorized = true
            }
            PaymentEvent::PaymentCaptured(p) => {
                m.entry(p.order_id.clone()).or_default().captured = true
            }
            PaymentEvent::PaymentRefunded(p) => {
                m.entry(p.order_id.clone()).or_default().refunded = true
            }
            PaymentEvent::PaymentDeclined(_) => {}
        }
    }
    m
}

/// A payment is captured iff its order was confirmed.
pub fn captured_iff_confirmed(
    orders: &[Envelope<OrderEvent>],
    payments: &[Envelope<PaymentEvent>],
) -> Vec<Violation> {
    let outcomes = outcomes(orders);
    let facts = payment_facts(payments);
    let ids: BTreeSet<&String> = outcomes.keys().chain(facts.keys()).collect();
    let mut v = Vec::new();
    for id in ids {
        let confirmed = outcomes
            .get(id)
            .is_some_and(|o| o.contains(&Outcome::Confirmed));
        let captured = facts.get(id).is_some_and(|f| f.captured);
        if confirmed != captured {
            v.push(violation(
                "captured-iff-confirmed",
                format!("order {id}: confirmed {confirmed}, captured {captured}"),
            ));
        }
    }
    v
}

/// A payment is refunded iff its order was cancelled after the payment was authorized.
pub fn refunded_iff_compensated_after_authorization(
    orders: &[Envelope<OrderEvent>],
    payments: &[Envelope<PaymentEvent>],
) -> Vec<Violation> {
    let outcomes = outcomes(orders);
    let facts = payment_facts(payments);
    let ids: BTreeSet<&String> = outcomes.keys().chain(facts.keys()).collect();
    let mut v = Vec::new();
    for id in ids {
        let cancelled = outcomes
            .get(id)
            .is_some_and(|o| o.iter().any(|o| matches!(o, Outcome::Cancelled(_))));
        let f = facts.get(id);
        let authorized = f.is_some_and(|f| f.authorized);
        let refunded = f.is_some_and(|f| f.refunded);
        if refunded != (cancelled && authorized) {
            v.push(violation(
                "refunded-iff-compensated",
                format!("order {id}: cancelled {cancelled}, authorized {authorized}, refunded {refunded}"),
            ));
        }
    }
    v
}

/// Exactly one notification per order outcome (notification ids `order-outcome:<order id>`).
pub fn one_notification_per_outcome(
    orders: &[Envelope<OrderEvent>],
    notifications: &[Envelope<NotificationEvent>],
) -> Vec<Violation> {
    let mut per_order: BTreeMap<String, usize> = BTreeMap::new();
    for e in dedup(notifications) {
        let NotificationEvent::NotificationSent(n) = &e.payload;
        if let Some(order) = n.notification_id.strip_prefix("order-outcome:") {
            *per_order.entry(order.to_string()).or_default() += 1;
        }
    }
    let outcomes = outcomes(orders);
    let mut v = Vec::new();
    for id in outcomes
        .keys()
        .chain(per_order.keys())
        .collect::<BTreeSet<_>>()
    {
        let n = per_order.get(id).copied().unwrap_or(0);
        let has_outcome = outcomes.contains_key(id);
        if n != usize::from(has_outcome) {
            v.push(violation(
                "one-notification-per-outcome",
                format!("order {id}: outcome {has_outcome}, {n} notifications"),
            ));
        }
    }
    v
}

/// What a run's events show: how its orders ended, and every broken invariant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Orders with an `OrderPlaced` event.
    pub placed: usize,
    pub confirmed: usize,
    /// Cancelled orders per cancel reason.
    pub cancelled: BTreeMap<String, usize>,
    pub violations: Vec<Violation>,
}

/// Every invariant over the events of a run (each topic read from its beginning).
pub fn check(
    orders: &[Envelope<OrderEvent>],
    inventory: &[Envelope<InventoryEvent>],
    payments: &[Envelope<PaymentEvent>],
    notifications: &[Envelope<NotificationEvent>],
) -> Report {
    let placed: BTreeSet<&str> = orders
        .iter()
        .filter_map(|e| match &e.payload {
            OrderEvent::OrderPlaced(p) => Some(p.order_id.as_str()),
            _ => None,
        })
        .collect();
    let mut report = Report {
        placed: placed.len(),
        ..Report::default()
    };
    for outcome in outcomes(orders).values().filter_map(|o| o.first()) {
        match outcome {
            Outcome::Confirmed => report.confirmed += 1,
            Outcome::Cancelled(reason) => {
                *report.cancelled.entry(format!("{reason:?}")).or_default() += 1
            }
        }
    }
    report.violations.extend(every_order_final(placed, orders));
    report.violations.extend(stock_conserved(inventory));
    report
        .violations
        .extend(captured_iff_confirmed(orders, payments));
    report
        .violations
        .extend(refunded_iff_compensated_after_authorization(
            orders, payments,
        ));
    report
        .violations
        .extend(one_notification_per_outcome(orders, notifications));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_schemas::domain::{
        OrderCancelled, OrderConfirmed, PaymentAuthorized, PaymentCaptured, PaymentRefunded,
        ProductAdded, ProductStockChanged, StockCommitted, StockItem, StockReserved,
    };

    fn env<P>(aggregate: &str, sequence: i64, payload: impl Into<P>) -> Envelope<P> {
        Envelope::new(aggregate, "flow", payload).with_sequence(sequence)
    }

    fn confirmed(order: &str) -> Envelope<OrderEvent> {
        env(
            order,
            2,
            OrderConfirmed {
                order_id: order.into(),
                user_id: "u".into(),
                payment_id: format!("pay-{order}"),
                total_cents: 100,
                currency: "EUR".into(),
            },
        )
    }

    fn cancelled(order: &str) -> Envelope<OrderEvent> {
        env(
            order,
            2,
            OrderCancelled {
                order_id: order.into(),
                user_id: "u".into(),
                reason: CancelReason::Timeout,
                detail: None,
            },
        )
    }

    #[test]
    fn order_outcomes_must_be_single() {
        let events = vec![
            confirmed("a"),
            confirmed("a"),
            cancelled("b"),
            confirmed("b"),
        ];
        // The duplicate of a's confirmation is one fact; b has two different outcomes.
        let v = every_order_final(["a", "b", "c"], &events);
        let details: Vec<_> = v.iter().map(|v| v.detail.clone()).collect();
        assert_eq!(v.len(), 2, "{details:?}");
        assert!(details.iter().any(|d| d.contains("order b has 2")));
        assert!(details.iter().any(|d| d.contains("order c has no outcome")));
    }

    #[test]
    fn stock_flows_must_match_published_levels() {
        let item = |q| StockItem {
            product_id: "p".into(),
            quantity: q,
        };
        let mut events: Vec<Envelope<InventoryEvent>> = vec![
            env(
                "p",
                1,
                ProductAdded {
                    product_id: "p".into(),
                    sku: "s".into(),
                    name: "n".into(),
                    description: None,
                    unit_price_cents: 1,
                    currency: "EUR".into(),
                    initial_stock: 10,
                },
            ),
            env(
                "o",
                1,
                StockReserved {
                    order_id: "o".into(),
                    reserved_items: vec![item(3)],
                },
            ),
            env(
                "p",
                2,
                ProductStockChanged {
                    product_id: "p".into(),
                    available: 7,
                    reserved: 3,
                },
            ),
            env(
                "o",
                2,
                StockCommitted {
                    order_id: "o".into(),
                    committed_items: vec![item(3)],
                },
            ),
            env(
                "p",
                3,
                ProductStockChanged {
                    product_id: "p".into(),
                    available: 7,
                    reserved: 0,
                },
            ),
        ];
        assert_eq!(stock_conserved(&events), vec![]);
        // A level that lost a unit breaks conservation.
        events.push(env(
            "p",
            4,
            ProductStockChanged {
                product_id: "p".into(),
                available: 6,
                reserved: 0,
            },
        ));
        assert_eq!(stock_conserved(&events).len(), 1);
    }

    #[test]
    fn payments_follow_outcomes() {
        let authorized = |order: &str| -> Envelope<PaymentEvent> {
            env(
                &format!("pay-{order}"),
                1,
                PaymentAuthorized {
                    payment_id: format!("pay-{order}"),
                    order_id: order.into(),
                    user_id: "u".into(),
                    amount_cents: 100,
                    currency: "EUR".into(),
                    authorization_code: "A".into(),
                },
            )
        };
        let captured = |order: &str| -> Envelope<PaymentEvent> {
            env(
                &format!("pay-{order}"),
                2,
                PaymentCaptured {
                    payment_id: format!("pay-{order}"),
                    order_id: order.into(),
                    authorization_code: "A".into(),
                    amount_cents: 100,
                    currency: "EUR".into(),
                },
            )
        };
        let refunded = |order: &str| -> Envelope<PaymentEvent> {
            env(
                &format!("pay-{order}"),
                2,
                PaymentRefunded {
                    payment_id: format!("pay-{order}"),
                    order_id: order.into(),
                    amount_cents: 100,
                    currency: "EUR".into(),
                    reason: None,
                },
            )
        };
        let orders = vec![confirmed("a"), cancelled("b"), cancelled("c")];
        let good = vec![
            authorized("a"),
            captured("a"),
            authorized("b"),
            refunded("b"),
        ];
        assert_eq!(captured_iff_confirmed(&orders, &good), vec![]);
        assert_eq!(
            refunded_iff_compensated_after_authorization(&orders, &good),
            vec![]
        );
        // a was confirmed but never captured; c was authorized and cancelled but not refunded.
        let bad = vec![authorized("a"), authorized("c")];
        assert_eq!(captured_iff_confirmed(&orders, &bad).len(), 1);
        assert_eq!(
            refunded_iff_compensated_after_authorization(&orders, &bad).len(),
            1
        );
    }
}
