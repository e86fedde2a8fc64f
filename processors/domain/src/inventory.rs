//! The inventory processor: the product catalog and the stock ledger.
//!
//! Reads `commands.inventory` (catalog commands from producers, keyed by product id, and the
//! saga's `ReserveStock` / `ReleaseStock` / `CommitStock`, keyed by order id) and writes
//! `events.inventory`.
//!
//! Two hops inside one app. Records from `commands.inventory` are forwarded unchanged to the
//! one-partition ledger topic; records of the ledger topic are applied. An order's reservation
//! touches several products at once and must take all of its lines or none, so every product
//! has to be in the same task; the ledger topic has one partition, hence one task. The
//! forwarding keeps each source partition's order, so a saga's `ReserveStock` is always applied
//! before the `ReleaseStock` or `CommitStock` it sends later for the same order.
//!
//! Stores: `products` (product id → [`Product`]), `reservations` (order id →
//! [`Reservation`]), `seen` (command ids). Every emitted event carries its aggregate's next
//! `sequence` (product events: the product's; reservation events: the order's reservation's),
//! which sinks use as the version of what they write.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tributary_schemas::domain::{
    AddProduct, CommitStock, InventoryCommand, InventoryEvent, ProductAdded, ProductRestocked,
    ProductStockChanged, ProductUpdated, RejectionReason, ReleaseStock, ReserveStock,
    RestockProduct, StockCommitted, StockItem, StockReleased, StockReservationFailed,
    StockReserved, StockShortage, UpdateProduct,
};
use tributary_schemas::types::Envelope;
use tributary_schemas::Codec;
use tributary_streams::{Context, Processor, Record};

use crate::common::{first_time, load, save, to_i32, Wire};
use crate::error::Result;
use crate::topics::Topics;

pub(crate) const PRODUCTS: &str = "products";
pub(crate) const RESERVATIONS: &str = "reservations";

/// One product: catalog data and stock counters. `initial + restocked = available + reserved +
/// sold` holds after every command (see [`Product::conserved`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub unit_price_cents: i64,
    pub currency: String,
    pub initial: i64,
    pub restocked: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// Sequence of the product's last event.
    pub sequence: i64,
}

impl Product {
    /// Stock conservation and non-negativity for this product.
    pub fn conserved(&self) -> bool {
        self.available >= 0
            && self.reserved >= 0
            && self.sold >= 0
            && self.initial + self.restocked == self.available + self.reserved + self.sold
    }
}

/// Where an order's reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationStatus {
    Reserved,
    Failed,
    Released,
    Committed,
    /// Released before anything was reserved (the saga gave up first): a reservation that
    /// arrives later is refused.
    Voided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub order_id: String,
    /// Product id → units, merged per product.
    pub items: BTreeMap<String, i64>,
    pub status: ReservationStatus,
    /// Sequence of the reservation's last event.
    pub sequence: i64,
}

/// The processor of one task; see the module doc.
#[derive(Clone)]
pub struct InventoryProcessor {
    wire: Wire,
    topics: Topics,
    ledger: String,
    commands: String,
    events: String,
}

impl InventoryProcessor {
    pub(crate) fn new(wire: Wire, topics: Topics) -> Self {
        InventoryProcessor {
            wire,
            ledger: topics.inventory_ledger(),
            commands: topics.commands_inventory(),
            events: topics.events_inventory(),
            topics,
        }
    }

    /// A processor outside [`DomainApp::run`](crate::DomainApp::run), encoding and decoding
    /// with `codec`. For tests and embedding, e.g. under `tributary_streams::testing::TestDriver`
    /// with the stores of [`InventoryProcessor::stores`].
    pub fn with_codec(codec: Arc<Codec>, topics: Topics) -> Self {
        InventoryProcessor::new(Wire::new(codec), topics)
    }

    /// The input topics, in the order the app subscribes them.
    pub fn inputs(topics: &Topics) -> Vec<String> {
        vec![topics.commands_inventory(), topics.inventory_ledger()]
    }

    pub fn stores() -> Vec<&'static str> {
        vec![PRODUCTS, RESERVATIONS, crate::common::SEEN]
    }

    fn apply(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        let env = self.wire.decode::<InventoryCommand>(record)?;
        if !first_time(ctx, &env.id)? {
            tracing::debug!(command = %env.id, "duplicate inventory command ignored");
            return Ok(());
        }
        match &env.payload {
            InventoryCommand::AddProduct(c) => self.add(ctx, &env, c),
            InventoryCommand::RestockProduct(c) => self.restock(ctx, &env, c),
            InventoryCommand::UpdateProduct(c) => self.update(ctx, &env, c),
            InventoryCommand::ReserveStock(c) => self.reserve(ctx, &env, c),
            InventoryCommand::ReleaseStock(c) => self.release(ctx, &env, c),
            InventoryCommand::CommitStock(c) => self.commit(ctx, &env, c),
        }
    }

    fn reject(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<InventoryCommand>,
        reason: RejectionReason,
        message: String,
    ) -> Result<()> {
        self.wire
            .reject(ctx, &self.topics, env, &self.commands, reason, message)
    }

    fn emit(
        &self,
        ctx: &mut Context<'_>,
        cause: &Envelope<InventoryCommand>,
        aggregate: &str,
        sequence: i64,
        event: impl Into<InventoryEvent>,
    ) -> Result<()> {
        let env: Envelope<InventoryEvent> =
            Envelope::caused_by(cause, aggregate, event).with_sequence(sequence);
        self.wire.emit(ctx, &self.events, aggregate, &env)
    }

    fn add(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<InventoryCommand>,
        c: &AddProduct,
    ) -> Result<()> {
        if load::<Product>(ctx, PRODUCTS, &c.product_id)?.is_some() {
            let msg = format!("product `{}` already exists", c.product_id);
            return self.reject(ctx, env, RejectionReason::AlreadyExists, msg);
        }
        if c.initial_stock < 0 || c.unit_price_cents < 0 || c.product_id.is_empty() {
            let msg = format!(
                "product `{}`: id must be set, initial stock ({}) and price ({}) not negative",
                c.product_id, c.initial_stock, c.unit_price_cents
            );
            return self.reject(ctx, env, RejectionReason::ValidationFailed, msg);
        }
        let p = Product {
            product_id: c.product_id.clone(),
            sku: c.sku.clone(),
            name: c.name.clone(),
            description: c.description.clone(),
            unit_price_cents: c.unit_price_cents,
            currency: c.currency.clone(),
            initial: i64::from(c.initial_stock),
            restocked: 0,
            available: i64::from(c.initial_stock),
            reserved: 0,
            sold: 0,
            sequence: 1,
        };
        save(ctx, PRODUCTS, &p.product_id, &p)?;
        let event = ProductAdded {
            product_id: c.product_id.clone(),
            sku: c.sku.clone(),
            name: c.name.clone(),
            description: c.description.clone(),
            unit_price_cents: c.unit_price_cents,
            currency: c.currency.clone(),
            initial_stock: c.initial_stock,
        };
        self.emit(ctx, env, &p.product_id, p.sequence, event)
    }

    fn restock(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<InventoryCommand>,
        c: &RestockProduct,
    ) -> Result<()> {
        let Some(mut p) = load::<Product>(ctx, PRODUCTS, &c.product_id)? else {
            let msg = format!("product `{}` does not exist", c.product_id);
            return self.reject(ctx, env, RejectionReason::NotFound, msg);
        };
        if c.quantity <= 0 || p.available + i64::from(c.quantity) > i64::from(i32::MAX) {
            let msg = format!(
                "restock of `{}` by {} units: the quantity must be positive and the stock fit an int",
                c.product_id, c.quantity
            );
            return self.reject(ctx, env, RejectionReason::ValidationFailed, msg);
        }
        p.available += i64::from(c.quantity);
        p.restocked += i64::from(c.quantity);
        p.sequence += 1;
        save(ctx, PRODUCTS, &p.product_id, &p)?;
        let event = ProductRestocked {
            product_id: p.product_id.clone(),
            quantity: c.quantity,
            available: to_i32(p.available),
            reserved: to_i32(p.reserved),
        };
        self.emit(ctx, env, &p.product_id, p.sequence, event)
    }

    fn update(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<InventoryCommand>,
        c: &UpdateProduct,
    ) -> Result<()> {
        let Some(mut p) = load::<Product>(ctx, PRODUCTS, &c.product_id)? else {
            let msg = format!("product `{}` does not exist", c.product_id);
            return self.reject(ctx, env, RejectionReason::NotFound, msg);
        };
        if c.unit_price_cents.is_some_and(|v| v < 0) {
            let msg = format!("product `{}`: price must not be negative", c.product_id);
            return self.reject(ctx, env, RejectionReason::ValidationFailed, msg);
        }
        if let Some(v) = &c.name {
            p.name = v.clone();
        }
        if let Some(v) = &c.description {
            p.description = Some(v.clone());
        }
        if let Some(v) = c.unit_price_cents {
            p.unit_price_cents = v;
        }
        if let Some(v) = &c.currency {
            p.currency = v.clone();
        }
        p.sequence += 1;
        save(ctx, PRODUCTS, &p.product_id, &p)?;
        let event = ProductUpdated {
            product_id: p.product_id.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            unit_price_cents: p.unit_price_cents,
            currency: p.currency.clone(),
        };
        self.emit(ctx, env, &p.product_id, p.sequence, event)
    }

    /// Emits the product's absolute levels after a reservation, release or sale.
    fn stock_changed(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<InventoryCommand>,
        p: &mut Product,
    ) -> Result<()> {
        p.sequence += 1;
        save(ctx, PRODUCTS, &p.product_id, p)?;
        let event = ProductStockChanged {
            product_id: p.product_id.clone(),
            available: to_i32(p.available),
            reserved: to_i32(p.reserved),
        };
        self.emit(ctx, env, &p.product_id, p.sequence, event)
    }

    fn reserve(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<InventoryCommand>,
        c: &ReserveStock,
    ) -> Result<()> {
        if let Some(r) = load::<Reservation>(ctx, RESERVATIONS, &c.order_id)? {
            // One reservation per order: a second request (a saga retry) takes nothing, and a
            // request after the saga gave up (voided) must not take stock nobody will release.
            // While the first answer is the reservation's last word, it is given again: the saga
            // asking twice means it may not have seen it (its state was rolled back after a crash
            // and the answer read before the request it answers), and an order must not wait for
            // its timeout over an answer already given. The same sequence makes the repeat a
            // duplicate for every reader of the topic.
            tracing::debug!(order = %c.order_id, status = ?r.status, "reservation exists; answering again");
            return match r.status {
                ReservationStatus::Reserved if r.sequence == 1 => {
                    let event = StockReserved {
                        order_id: c.order_id.clone(),
                        reserved_items: items(&r.items),
                    };
                    self.emit(ctx, env, &c.order_id, r.sequence, event)
                }
                ReservationStatus::Failed if r.sequence == 1 => {
                    let event = StockReservationFailed {
                        order_id: c.order_id.clone(),
                        shortages: Vec::new(),
                    };
                    self.emit(ctx, env, &c.order_id, r.sequence, event)
                }
                _ => Ok(()),
            };
        }
        let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
        for item in &c.items {
            *wanted.entry(item.product_id.clone()).or_insert(0) += i64::from(item.quantity);
        }
        let mut products = Vec::new();
        let mut shortages = Vec::new();
        for (product_id, &qty) in &wanted {
            let p = load::<Product>(ctx, PRODUCTS, product_id)?;
            let available = p.as_ref().map(|p| p.available).unwrap_or(0);
            if qty <= 0 || available < qty {
                shortages.push(StockShortage {
                    product_id: product_id.clone(),
                    requested: to_i32(qty),
                    available: to_i32(available),
                });
            }
            if let Some(p) = p {
                products.push(p);
            }
        }
        if wanted.is_empty() || !shortages.is_empty() {
            let r = Reservation {
                order_id: c.order_id.clone(),
                items: wanted,
                status: ReservationStatus::Failed,
                sequence: 1,
            };
            save(ctx, RESERVATIONS, &r.order_id, &r)?;
            let event = StockReservationFailed {
                order_id: c.order_id.clone(),
                shortages,
            };
            return self.emit(ctx, env, &c.order_id, r.sequence, event);
        }
        for p in &mut products {
            let qty = wanted.get(&p.product_id).copied().unwrap_or(0);
            p.available -= qty;
            p.reserved += qty;
        }
        let r = Reservation {
            order_id: c.order_id.clone(),
            items: wanted,
            status: ReservationStatus::Reserved,
            sequence: 1,
        };
        save(ctx, RESERVATIONS, &r.order_id, &r)?;
        let event = StockReserved {
            order_id: c.order_id.clone(),
            reserved_items: items(&r.items),
        };
        self.emit(ctx, env, &c.order_id, r.sequence, event)?;
        for p in &mut products {
            self.stock_changed(ctx, env, p)?;
        }
        Ok(())
    }

    fn release(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<InventoryCommand>,
        c: &ReleaseStock,
    ) -> Result<()> {
        let Some(r) = load::<Reservation>(ctx, RESERVATIONS, &c.order_id)? else {
            let r = Reservation {
                order_id: c.order_id.clone(),
                items: BTreeMap::new(),
                status: ReservationStatus::Voided,
                sequence: 0,
            };
            return save(ctx, RESERVATIONS, &r.order_id, &r);
        };
        if r.status != ReservationStatus::Reserved {
            // Nothing held (failed, or already released or sold): releasing is a no-op.
            return Ok(());
        }
        let reason = c.reason;
        self.settle(
            ctx,
            env,
            r,
            ReservationStatus::Released,
            |p, qty| p.available += qty,
            |r| {
                StockReleased {
                    order_id: r.order_id.clone(),
                    released_items: items(&r.items),
                    reason,
                }
                .into()
            },
        )
    }

    /// Ends a held reservation: each line's units leave `reserved` for where `to` puts them,
    /// the reservation takes `status`, then the reservation's event and each product's new
    /// level are emitted.
    fn settle(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<InventoryCommand>,
        mut r: Reservation,
        status: ReservationStatus,
        to: fn(&mut Product, i64),
        event: impl FnOnce(&Reservation) -> InventoryEvent,
    ) -> Result<()> {
        let mut products = Vec::new();
        for (product_id, &qty) in &r.items {
            if let Some(mut p) = load::<Product>(ctx, PRODUCTS, product_id)? {
                p.reserved -= qty;
                to(&mut p, qty);
                products.push(p);
            }
        }
        r.status = status;
        r.sequence += 1;
        save(ctx, RESERVATIONS, &r.order_id, &r)?;
        self.emit(ctx, env, &r.order_id, r.sequence, event(&r))?;
        for p in &mut products {
            self.stock_changed(ctx, env, p)?;
        }
        Ok(())
    }

    fn commit(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<InventoryCommand>,
        c: &CommitStock,
    ) -> Result<()> {
        let Some(r) = load::<Reservation>(ctx, RESERVATIONS, &c.order_id)? else {
            let msg = format!("order `{}` holds no reservation", c.order_id);
            return self.reject(ctx, env, RejectionReason::NotFound, msg);
        };
        if r.status == ReservationStatus::Committed {
            return Ok(());
        }
        if r.status != ReservationStatus::Reserved {
            let msg = format!(
                "order `{}`: reservation is {:?}, not reserved",
                c.order_id, r.status
            );
            return self.reject(ctx, env, RejectionReason::InvalidState, msg);
        }
        self.settle(
            ctx,
            env,
            r,
            ReservationStatus::Committed,
            |p, qty| p.sold += qty,
            |r| {
                StockCommitted {
                    order_id: r.order_id.clone(),
                    committed_items: items(&r.items),
                }
                .into()
            },
        )
    }
}

fn items(m: &BTreeMap<String, i64>) -> Vec<StockItem> {
    m.iter()
        .map(|(product_id, &q)| StockItem {
            product_id: product_id.clone(),
            quantity: to_i32(q),
        })
        .collect()
}

impl Processor for InventoryProcessor {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        if record.topic == self.ledger {
            return Ok(self.apply(ctx, &record)?);
        }
        if record.topic == self.commands {
            // The first hop: checked (framing, schema), so a malformed command is dead-lettered
            // at the producer's coordinates; then onto the ledger's single partition, bytes and
            // headers unchanged plus the producer's coordinates.
            let _: Envelope<InventoryCommand> = self.wire.decode(&record)?;
            ctx.repartition(&self.ledger, record.key.as_deref(), record.value.as_deref());
            return Ok(());
        }
        Err(crate::error::ProcessorError::UnexpectedTopic(record.id()).into())
    }
}
