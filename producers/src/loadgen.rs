//! A deterministic e-commerce workload: the same seed gives the same commands, in the same order.
//!
//! First every user registers and every product is added (with stock), then orders are placed.
//! Realism, kept deliberately simple:
//! - **Skew**: product popularity follows a power law (`index = n · u³`), so a few products get
//!   most orders and run out of stock: these are the stock-outs the saga must compensate.
//! - **Failing payments**: a share of users belongs to the declining cohort: their ids end in
//!   [`DECLINING_USER_SUFFIX`], which the payment processor's default decline rule refuses.
//! - Orders have 1–3 lines of 1–3 units each.
//! - **Restocks**: every [`RESTOCK_EVERY`] orders, each product ordered at least a tenth of its
//!   initial stock since its last restock gets `restock_share` of those units back, so most
//!   orders confirm while the hottest products still run out now and then.
//! - **Cancellations**: `cancel_share` of orders are cancelled by their user right after being
//!   placed (most while the saga is still working on them, a few too late).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tributary_schemas::domain::{
    AddProduct, CancelOrder, PlaceOrder, PlaceOrderLine, RegisterUser, RestockProduct,
};
use tributary_schemas::types::Envelope;

use crate::command::Command;
use crate::sender::{CommandSender, SendError};

/// Users whose id ends with this have their payments declined by the payment processor's
/// default rule; the load generator puts `decline_share` of its users in that cohort.
pub const DECLINING_USER_SUFFIX: &str = "-declines";

/// Orders between two rounds of restocks.
pub const RESTOCK_EVERY: usize = 500;

/// The workload's shape.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    pub users: usize,
    pub products: usize,
    pub orders: usize,
    /// Share (0–1) of users whose payments are declined.
    pub decline_share: f64,
    /// Units of stock each product starts with.
    pub initial_stock: i32,
    /// Share (0–1) of the units ordered that restocks put back, every [`RESTOCK_EVERY`] orders.
    pub restock_share: f64,
    /// Share (0–1) of orders their user cancels right after placing them.
    pub cancel_share: f64,
    /// Put before every id, email and SKU, so that runs with the same seed can share topics and
    /// views without colliding (the same ids again are the same entities: duplicates).
    pub id_prefix: String,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            seed: 42,
            users: 500,
            products: 100,
            orders: 20_000,
            decline_share: 0.05,
            initial_stock: 400,
            restock_share: 0.95,
            cancel_share: 0.02,
            id_prefix: String::new(),
        }
    }
}

impl Workload {
    /// Every command of the workload, in sending order.
    pub fn commands(&self) -> Vec<Command> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let pre = &self.id_prefix;
        let mut out = Vec::with_capacity(self.users + self.products + self.orders);
        let users: Vec<String> = (0..self.users)
            .map(|i| {
                if rng.random::<f64>() < self.decline_share {
                    format!("{pre}user-{i:05}{DECLINING_USER_SUFFIX}")
                } else {
                    format!("{pre}user-{i:05}")
                }
            })
            .collect();
        for (i, user) in users.iter().enumerate() {
            let cmd = RegisterUser {
                user_id: user.clone(),
                email: format!("{pre}user{i}@example.com"),
                display_name: format!("User {i}"),
                locale: Some("en-GB".into()),
            };
            out.push(Command::Users(self.envelope(&mut rng, user, cmd)));
        }
        let products: Vec<String> = (0..self.products)
            .map(|i| format!("{pre}product-{i:04}"))
            .collect();
        for (i, product) in products.iter().enumerate() {
            let cmd = AddProduct {
                product_id: product.clone(),
                sku: format!("{pre}SKU-{i:04}"),
                name: format!("Product {i}"),
                description: Some(format!("The {i}th product of the catalog")),
                unit_price_cents: rng.random_range(199..=19_999),
                currency: "EUR".into(),
                initial_stock: self.initial_stock,
            };
            out.push(Command::Inventory(self.envelope(&mut rng, product, cmd)));
        }
        if users.is_empty() || products.is_empty() {
            return out;
        }
        // Units ordered per product since its last restock.
        let mut ordered = vec![0i64; products.len()];
        for i in 0..self.orders {
            let order_id = format!("{pre}order-{i:07}");
            let user = &users[rng.random_range(0..users.len())];
            let mut lines: Vec<PlaceOrderLine> = Vec::new();
            for _ in 0..rng.random_range(1..=3) {
                let u: f64 = rng.random();
                let p = ((products.len() as f64) * u * u * u) as usize;
                let p = p.min(products.len() - 1);
                let product_id = products[p].clone();
                if lines.iter().any(|l| l.product_id == product_id) {
                    continue;
                }
                let quantity = rng.random_range(1..=3);
                ordered[p] += i64::from(quantity);
                lines.push(PlaceOrderLine {
                    product_id,
                    quantity,
                });
            }
            let cmd = PlaceOrder {
                order_id: order_id.clone(),
                user_id: user.clone(),
                lines,
                currency: "EUR".into(),
            };
            out.push(Command::Orders(self.envelope(&mut rng, &order_id, cmd)));
            // Both draws only when enabled, so a workload without them is the same as before.
            if self.cancel_share > 0.0 && rng.random::<f64>() < self.cancel_share {
                let cmd = CancelOrder {
                    order_id: order_id.clone(),
                    user_id: user.clone(),
                    note: Some("changed my mind".into()),
                };
                out.push(Command::Orders(self.envelope(&mut rng, &order_id, cmd)));
            }
            if self.restock_share > 0.0 && (i + 1) % RESTOCK_EVERY == 0 {
                let threshold = (i64::from(self.initial_stock) / 10).max(1);
                for (p, units) in ordered.iter_mut().enumerate() {
                    if *units < threshold {
                        continue;
                    }
                    let quantity = (*units as f64 * self.restock_share).round() as i32;
                    *units = 0;
                    if quantity > 0 {
                        let product = &products[p];
                        let cmd = RestockProduct {
                            product_id: product.clone(),
                            quantity,
                        };
                        out.push(Command::Inventory(self.envelope(&mut rng, product, cmd)));
                    }
                }
            }
        }
        out
    }

    /// An envelope whose id comes from the seeded generator and the id prefix, so reruns send
    /// the same ids and runs with another prefix send other ones (processors drop an id they
    /// have seen). Its timestamp is set when it is sent.
    fn envelope<P>(&self, rng: &mut StdRng, aggregate: &str, payload: impl Into<P>) -> Envelope<P> {
        use std::hash::{Hash, Hasher};
        let mut bytes: [u8; 16] = rng.random();
        if !self.id_prefix.is_empty() {
            // SipHash with fixed keys: the same prefix mixes in the same bits on every run.
            for (half, chunk) in bytes.chunks_mut(8).enumerate() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (half, &self.id_prefix).hash(&mut h);
                for (b, m) in chunk.iter_mut().zip(h.finish().to_le_bytes()) {
                    *b ^= m;
                }
            }
        }
        let id = uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string();
        let mut env = Envelope::new(aggregate, id.clone(), payload);
        env.id = id;
        env.timestamp = 0;
        env
    }
}

/// What a run sent.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub sent: u64,
    pub by_command: std::collections::BTreeMap<&'static str, u64>,
    pub elapsed: Duration,
}

/// Sends the workload at `rate` commands per second (as fast as possible when `None`), with up
/// to `in_flight` unacknowledged sends, showing progress on stderr when it is a terminal.
pub async fn run(
    sender: Arc<CommandSender>,
    workload: &Workload,
    rate: Option<f64>,
    in_flight: usize,
) -> Result<Report, SendError> {
    let commands = workload.commands();
    let bar = ProgressBar::new(commands.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} commands ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut report = Report::default();
    let mut pending = FuturesUnordered::new();
    let interval = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    // Registrations and catalog first: orders refer to them, and the partitions are different.
    let first_order = commands
        .iter()
        .position(|c| matches!(c, Command::Orders(_)));
    for (i, mut command) in commands.into_iter().enumerate() {
        if Some(i) == first_order {
            while let Some(r) = pending.next().await {
                r?;
            }
        }
        if let Some(step) = interval {
            let due = started + step.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        while pending.len() >= in_flight.max(1) {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
        *report.by_command.entry(command.name()).or_insert(0) += 1;
        command.set_timestamp(tributary_runtime::clock::now_ms());
        let sender = sender.clone();
        let bar = bar.clone();
        pending.push(async move {
            let r = sender.send(&command).await.map(|_| ());
            bar.inc(1);
            r
        });
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    bar.finish_and_clear();
    report.sent = report.by_command.values().sum();
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_commands() {
        let w = Workload {
            orders: 200,
            users: 20,
            products: 10,
            restock_share: 0.0,
            cancel_share: 0.0,
            ..Workload::default()
        };
        let a = w.commands();
        let b = w.commands();
        assert_eq!(a, b);
        assert_eq!(a.len(), 230);
        let other = Workload {
            seed: 7,
            ..w.clone()
        }
        .commands();
        assert_ne!(a, other);
        let prefixed = Workload {
            id_prefix: "run-2-".into(),
            ..w.clone()
        }
        .commands();
        assert_eq!(prefixed.len(), a.len());
        assert!(prefixed
            .iter()
            .all(|c| c.aggregate_id().starts_with("run-2-")));
        let ids = |cs: &[Command]| -> std::collections::BTreeSet<String> {
            cs.iter().map(|c| c.id().to_string()).collect()
        };
        assert!(
            ids(&prefixed).is_disjoint(&ids(&a)),
            "another prefix, other command ids"
        );
    }

    #[test]
    fn the_default_mix_restocks_what_was_ordered_and_cancels_a_few() {
        let w = Workload {
            orders: 1000,
            users: 50,
            products: 20,
            ..Workload::default()
        };
        let commands = w.commands();
        assert_eq!(commands, w.commands(), "deterministic");
        let (mut ordered, mut restocked, mut cancels) = (0i64, 0i64, 0usize);
        for c in &commands {
            match c {
                Command::Orders(env) => match &env.payload {
                    tributary_schemas::domain::OrderCommand::PlaceOrder(o) => {
                        ordered += o.lines.iter().map(|l| i64::from(l.quantity)).sum::<i64>()
                    }
                    tributary_schemas::domain::OrderCommand::CancelOrder(_) => cancels += 1,
                },
                Command::Inventory(env) => {
                    if let tributary_schemas::domain::InventoryCommand::RestockProduct(r) =
                        &env.payload
                    {
                        assert!(r.quantity > 0);
                        restocked += i64::from(r.quantity);
                    }
                }
                _ => {}
            }
        }
        // 2 restock rounds, each giving back 95 % of what the busier products sold since.
        let share = restocked as f64 / ordered as f64;
        assert!(
            (0.5..=0.95).contains(&share),
            "restocked {restocked} of {ordered}"
        );
        assert!(
            (8..=40).contains(&cancels),
            "{cancels} cancellations of 1000 orders"
        );
    }

    #[test]
    fn workload_is_skewed_and_has_a_declining_cohort() {
        let w = Workload {
            orders: 2000,
            users: 400,
            products: 50,
            decline_share: 0.1,
            restock_share: 0.0,
            cancel_share: 0.0,
            ..Workload::default()
        };
        let commands = w.commands();
        let declining = commands
            .iter()
            .filter(|c| {
                matches!(c, Command::Users(_)) && c.aggregate_id().ends_with(DECLINING_USER_SUFFIX)
            })
            .count();
        assert!(
            (20..=60).contains(&declining),
            "{declining} declining users of 400"
        );
        let mut per_product = std::collections::HashMap::new();
        for c in &commands {
            if let Command::Orders(env) = c {
                if let tributary_schemas::domain::OrderCommand::PlaceOrder(o) = &env.payload {
                    assert!(!o.lines.is_empty());
                    for l in &o.lines {
                        *per_product.entry(l.product_id.clone()).or_insert(0) += l.quantity;
                    }
                }
            }
        }
        let hottest = per_product.get("product-0000").copied().unwrap_or(0);
        let coldest = per_product.get("product-0049").copied().unwrap_or(0);
        assert!(
            hottest > 5 * coldest.max(1),
            "hottest {hottest}, coldest {coldest}"
        );
    }
}
