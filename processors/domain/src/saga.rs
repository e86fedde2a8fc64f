//! The order saga: orchestrates inventory and payments for every order, state in a store.
//!
//! ```text
//! PlaceOrder ─► validate + price ─► OrderPlaced ─► ReserveStock ──► StockReserved ─► AuthorizePayment
//!                  │ invalid                          │ StockReservationFailed          │
//!                  ▼                                  ▼                                 ▼
//!   OrderCancelled(INVALID)            OrderCancelled(STOCK_OUT)   PaymentAuthorized ─► OrderConfirmed
//!   + CommandRejected                                              + CapturePayment + CommitStock
//!                                          PaymentDeclined ─► ReleaseStock ─► OrderCancelled(PAYMENT_DECLINED)
//!   timer (no final answer in time) ─► ReleaseStock [+ RefundPayment] ─► OrderCancelled(TIMEOUT)
//! ```
//!
//! Inputs: `commands.orders` (checked, then forwarded unchanged to the internal `orders-saga`
//! topic with the producer's coordinates in a `tributary.origin` header, see
//! [`Topics::orders_saga`]), that topic, `events.inventory` and `events.payments`. Requests go
//! out as commands on `commands.inventory` and `commands.payments`, keyed by the order id;
//! inventory and payments answer keyed by the order id too, so with equal partition counts
//! everything about one order reaches the same task.
//!
//! Compensation never needs to know what the other side did: the saga's commands for one order
//! share a partition, so a `ReleaseStock` is applied after the `ReserveStock` it follows (and
//! releases it if it succeeded, or voids it otherwise), and a `RefundPayment` after the
//! `AuthorizePayment` (refunding it if it was authorized, nothing if declined). Replies that
//! arrive once the order is final are ignored; the compensation already in flight covers them.
//!
//! Stores: `orders` (order id → [`OrderState`], with the ids of the commands applied to it),
//! `seen` (ids of rejected commands). Answers need no ids: the order's stage makes a
//! duplicate answer a no-op.
//! Timers: `timeout:<order id>` on the wall clock, one per open order.
//!
//! Backpressure: a task holding `max_open` open orders (its pending timeouts) takes no more
//! from `commands.orders` until a quarter of them have settled ([`Processor::admits`]). Under
//! more load than inventory and payments can answer, new orders then wait on the command topic,
//! ahead of any saga step, while the answers to the open ones are processed without queueing
//! behind them: an order's time from placed to outcome stays bounded, and none times out for
//! lack of a turn.

use prometheus::IntCounterVec;
use std::sync::Arc;
use std::time::Duration;

use tributary_schemas::domain::{
    AuthorizePayment, CancelOrder, CancelReason, CapturePayment, CommitStock, InventoryCommand,
    InventoryEvent, OrderCancelled, OrderCommand, OrderConfirmed, OrderEvent, OrderPlaced,
    PaymentCommand, PaymentEvent, PlaceOrder, RefundPayment, RejectionReason, ReleaseStock,
    ReserveStock, StockItem, StockReleaseReason,
};
use tributary_schemas::types::Envelope;
use tributary_schemas::Codec;
use tributary_streams::{Context, Load, Processor, Record, TimeKind, Timer};

use crate::app::{App, Build, Building};
use crate::catalog::Catalog;
use crate::common::{first_time, handled_before, load, save, Wire};
use crate::error::{ProcessorError, Result};
use crate::orders::{payment_id, price, validate, OrderState, Stage};
use crate::topics::{check_co_partitioned, Topics};

pub(crate) const ORDERS: &str = "orders";
const TIMER_PREFIX: &str = "timeout:";
/// How long an order naming an unknown product waits for the catalog to catch up before the
/// record fails retriably. Short: the runtime retries it with the task's partitions paused
/// while the member goes on polling, so a lagging catalog never blocks the engine for long.
const CATALOG_WAIT: Duration = Duration::from_millis(250);
/// Open orders per saga task before `commands.orders` is paused (`--saga-max-open`). Enough
/// for the most the pipeline settles in a second on the project's 2-core machine, so it only
/// bites under overload.
pub const DEFAULT_SAGA_MAX_OPEN: u64 = 500;

/// What caused a record the saga emits: a record (its id and flow) or a timer (the flow only).
struct Cause {
    id: Option<String>,
    correlation_id: String,
}

impl Cause {
    fn of<P>(env: &Envelope<P>) -> Cause {
        Cause {
            id: Some(env.id.clone()),
            correlation_id: env.correlation_id.clone(),
        }
    }

    fn timer(state: &OrderState) -> Cause {
        Cause {
            id: None,
            correlation_id: state.correlation_id.clone(),
        }
    }

    fn envelope<P>(&self, aggregate: &str, payload: impl Into<P>) -> Envelope<P> {
        let mut env = Envelope::new(aggregate, self.correlation_id.clone(), payload);
        env.causation_id = self.id.clone();
        env
    }
}

/// The saga of one task; see the module doc.
pub struct OrderSaga {
    wire: Wire,
    topics: Topics,
    catalog: Arc<Catalog>,
    timeout: Duration,
    commands: String,
    repartitioned: String,
    inventory_events: String,
    payment_events: String,
    outcomes: Option<IntCounterVec>,
    /// Open orders per task before new ones wait (0: no bound).
    max_open: u64,
}

/// `tributary_processor_saga_orders_completed_total{outcome, reason}`: orders the saga app `app`
/// ended, by outcome (`confirmed`, `cancelled`) and cancel reason (empty when confirmed), named
/// and labelled as every processor metric is (`tributary_runtime::metrics`). Every label set
/// starts at zero so that dashboards and alerts see the series before the first order ends.
pub fn outcome_metric(
    registry: &prometheus::Registry,
    app: &str,
) -> prometheus::Result<IntCounterVec> {
    use tributary_runtime::metrics::{Kind, COMPONENT_ID};
    let c = IntCounterVec::new(
        Kind::Processor
            .opts(
                "tributary_processor_saga_orders_completed_total",
                "Orders the saga ended, by outcome and cancel reason.",
            )
            .const_label(COMPONENT_ID, app),
        &["outcome", "reason"],
    )?;
    registry.register(Box::new(c.clone()))?;
    c.with_label_values(&["confirmed", ""]);
    for r in [
        CancelReason::StockOut,
        CancelReason::PaymentDeclined,
        CancelReason::Timeout,
        CancelReason::UserCancelled,
        CancelReason::Invalid,
    ] {
        c.with_label_values(&["cancelled", reason_label(r)]);
    }
    Ok(c)
}

fn reason_label(r: CancelReason) -> &'static str {
    match r {
        CancelReason::StockOut => "stock_out",
        CancelReason::PaymentDeclined => "payment_declined",
        CancelReason::Timeout => "timeout",
        CancelReason::UserCancelled => "user_cancelled",
        CancelReason::Invalid => "invalid",
    }
}

impl OrderSaga {
    pub(crate) fn new(
        wire: Wire,
        topics: Topics,
        catalog: Arc<Catalog>,
        timeout: Duration,
        outcomes: Option<IntCounterVec>,
    ) -> Self {
        OrderSaga {
            outcomes,
            wire,
            catalog,
            timeout,
            commands: topics.commands_orders(),
            repartitioned: topics.orders_saga(),
            inventory_events: topics.events_inventory(),
            payment_events: topics.events_payments(),
            topics,
            max_open: 0,
        }
    }

    /// Bounds the open orders of each task: past `max_open`, new orders wait on
    /// `commands.orders` (see the module doc). 0: no bound.
    pub fn with_max_open(mut self, max_open: u64) -> Self {
        self.max_open = max_open;
        self
    }

    /// A saga outside [`DomainApp::run`](crate::DomainApp::run), encoding and decoding with
    /// `codec`, pricing from `catalog` (e.g. [`Catalog::fixed`]), without metrics. For tests
    /// and embedding, e.g. under `tributary_streams::testing::TestDriver` with the stores of
    /// [`OrderSaga::stores`].
    pub fn with_codec(
        codec: Arc<Codec>,
        topics: Topics,
        catalog: Arc<Catalog>,
        timeout: Duration,
    ) -> Self {
        OrderSaga::new(Wire::new(codec), topics, catalog, timeout, None)
    }

    pub fn inputs(topics: &Topics) -> Vec<String> {
        vec![
            topics.commands_orders(),
            topics.orders_saga(),
            topics.events_inventory(),
            topics.events_payments(),
        ]
    }

    pub fn stores() -> Vec<&'static str> {
        vec![ORDERS, crate::common::SEEN]
    }

    fn emit_order(
        &self,
        ctx: &mut Context<'_>,
        cause: &Cause,
        state: &OrderState,
        event: impl Into<OrderEvent>,
    ) -> Result<()> {
        let env: Envelope<OrderEvent> = cause
            .envelope(&state.order_id, event)
            .with_sequence(state.sequence);
        self.wire
            .emit(ctx, &self.topics.events_orders(), &state.order_id, &env)
    }

    fn send_inventory(
        &self,
        ctx: &mut Context<'_>,
        cause: &Cause,
        order_id: &str,
        command: impl Into<InventoryCommand>,
    ) -> Result<()> {
        let env: Envelope<InventoryCommand> = cause.envelope(order_id, command);
        self.wire
            .emit(ctx, &self.topics.commands_inventory(), order_id, &env)
    }

    fn send_payment(
        &self,
        ctx: &mut Context<'_>,
        cause: &Cause,
        state: &OrderState,
        command: impl Into<PaymentCommand>,
    ) -> Result<()> {
        // Keyed by the order, not the payment: the payment's commands and events then share
        // the order's partition number.
        let env: Envelope<PaymentCommand> = cause.envelope(&state.payment_id, command);
        self.wire
            .emit(ctx, &self.topics.commands_payments(), &state.order_id, &env)
    }

    fn timer_name(order_id: &str) -> String {
        format!("{TIMER_PREFIX}{order_id}")
    }

    /// Ends the order as cancelled: event, timer gone, state saved.
    fn cancel(
        &self,
        ctx: &mut Context<'_>,
        cause: &Cause,
        mut state: OrderState,
        reason: CancelReason,
        detail: Option<String>,
    ) -> Result<()> {
        state.stage = Stage::Cancelled;
        state.cancel_reason = Some(reason);
        state.sequence += 1;
        let event = OrderCancelled {
            order_id: state.order_id.clone(),
            user_id: state.user_id.clone(),
            reason,
            detail,
        };
        self.emit_order(ctx, cause, &state, event)?;
        ctx.cancel(&Self::timer_name(&state.order_id))?;
        save(ctx, ORDERS, &state.order_id, &state)?;
        if let Some(m) = &self.outcomes {
            m.with_label_values(&["cancelled", reason_label(reason)])
                .inc();
        }
        Ok(())
    }

    /// Undoes what the order holds at its stage, in reverse order of the steps.
    fn compensate(
        &self,
        ctx: &mut Context<'_>,
        cause: &Cause,
        state: &OrderState,
        release: StockReleaseReason,
        why: &str,
    ) -> Result<()> {
        if state.stage == Stage::Authorizing {
            let refund = RefundPayment {
                payment_id: state.payment_id.clone(),
                order_id: state.order_id.clone(),
                amount_cents: state.total_cents,
                currency: state.currency.clone(),
                reason: Some(why.to_string()),
            };
            self.send_payment(ctx, cause, state, refund)?;
        }
        if matches!(state.stage, Stage::Reserving | Stage::Authorizing) {
            let cmd = ReleaseStock {
                order_id: state.order_id.clone(),
                reason: release,
            };
            self.send_inventory(ctx, cause, &state.order_id, cmd)?;
        }
        Ok(())
    }

    /// A command applied to an order is recorded in the order's state (`commands`); only a
    /// rejected one, which changes no order, is recorded in `seen`. Either way a retried
    /// command is a no-op, and an accepted one costs the changelog no extra record.
    fn on_command(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        let env = self.wire.decode::<OrderCommand>(record)?;
        if handled_before(ctx, &env.id)? {
            return Ok(());
        }
        let order_id = match &env.payload {
            OrderCommand::PlaceOrder(c) => &c.order_id,
            OrderCommand::CancelOrder(c) => &c.order_id,
        };
        if let Some(state) = load::<OrderState>(ctx, ORDERS, order_id)? {
            if state.commands.contains(&env.id) {
                return Ok(());
            }
        }
        match &env.payload {
            OrderCommand::PlaceOrder(c) => self.place(ctx, &env, c),
            OrderCommand::CancelOrder(c) => self.cancel_by_user(ctx, &env, c),
        }
    }

    fn reject(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<OrderCommand>,
        reason: RejectionReason,
        message: String,
    ) -> Result<()> {
        first_time(ctx, &env.id)?;
        self.wire
            .reject(ctx, &self.topics, env, &self.commands, reason, message)
    }

    fn place(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<OrderCommand>,
        c: &PlaceOrder,
    ) -> Result<()> {
        if c.order_id.is_empty() {
            let msg = "order_id must be set".to_string();
            return self.reject(ctx, env, RejectionReason::ValidationFailed, msg);
        }
        if load::<OrderState>(ctx, ORDERS, &c.order_id)?.is_some() {
            let msg = format!("order `{}` was placed before", c.order_id);
            return self.reject(ctx, env, RejectionReason::AlreadyExists, msg);
        }
        let cause = Cause::of(env);
        let mut state = OrderState {
            order_id: c.order_id.clone(),
            user_id: c.user_id.clone(),
            currency: c.currency.clone(),
            lines: Vec::new(),
            total_cents: 0,
            stage: Stage::Reserving,
            cancel_reason: None,
            sequence: 0,
            payment_id: payment_id(&c.order_id),
            authorization_code: None,
            correlation_id: env.correlation_id.clone(),
            deadline_ms: 0,
            commands: vec![env.id.clone()],
        };
        let priced = match validate(c) {
            Err(msg) => Err(msg),
            Ok(()) => {
                let ids: Vec<&str> = c.lines.iter().map(|l| l.product_id.as_str()).collect();
                // A lagging catalog fails the record (retried), it is not a verdict on it.
                let prices = self.catalog.prices(&ids, CATALOG_WAIT)?;
                price(c, &prices)
            }
        };
        let (lines, total) = match priced {
            Ok(v) => v,
            Err(msg) => {
                self.cancel(ctx, &cause, state, CancelReason::Invalid, Some(msg.clone()))?;
                return self.reject(ctx, env, RejectionReason::ValidationFailed, msg);
            }
        };
        state.lines = lines;
        state.total_cents = total;
        state.sequence = 1;
        state.deadline_ms = ctx.now_ms().saturating_add(self.timeout.as_millis() as i64);
        let placed = OrderPlaced {
            order_id: state.order_id.clone(),
            user_id: state.user_id.clone(),
            lines: state.lines.clone(),
            currency: state.currency.clone(),
            total_cents: state.total_cents,
        };
        self.emit_order(ctx, &cause, &state, placed)?;
        let reserve = ReserveStock {
            order_id: state.order_id.clone(),
            items: state
                .lines
                .iter()
                .map(|l| StockItem {
                    product_id: l.product_id.clone(),
                    quantity: l.quantity,
                })
                .collect(),
        };
        self.send_inventory(ctx, &cause, &state.order_id, reserve)?;
        ctx.schedule(
            &Self::timer_name(&state.order_id),
            TimeKind::WallClock,
            state.deadline_ms,
        )?;
        save(ctx, ORDERS, &state.order_id, &state)
    }

    fn cancel_by_user(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<OrderCommand>,
        c: &CancelOrder,
    ) -> Result<()> {
        let Some(state) = load::<OrderState>(ctx, ORDERS, &c.order_id)? else {
            let msg = format!("order `{}` does not exist", c.order_id);
            return self.reject(ctx, env, RejectionReason::NotFound, msg);
        };
        if state.is_final() || state.user_id != c.user_id {
            let msg = format!(
                "order `{}` cannot be cancelled by `{}` at stage {:?}",
                c.order_id, c.user_id, state.stage
            );
            return self.reject(ctx, env, RejectionReason::InvalidState, msg);
        }
        let cause = Cause::of(env);
        let mut state = state;
        state.commands.push(env.id.clone());
        self.compensate(
            ctx,
            &cause,
            &state,
            StockReleaseReason::OrderCancelled,
            "cancelled by the user",
        )?;
        self.cancel(
            ctx,
            &cause,
            state,
            CancelReason::UserCancelled,
            c.note.clone(),
        )
    }

    /// The order an event is about, if the saga knows it. Events keyed by something else
    /// (product events on `events.inventory`) or about unknown orders are skipped undecoded.
    fn known_order(&self, ctx: &Context<'_>, record: &Record) -> Result<bool> {
        Ok(match record.key.as_deref() {
            Some(key) => ctx.get(ORDERS, key)?.is_some(),
            None => false,
        })
    }

    fn on_inventory(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        if !self.known_order(ctx, record)? {
            return Ok(());
        }
        let env = self.wire.decode::<InventoryEvent>(record)?;
        let order_id = match &env.payload {
            InventoryEvent::StockReserved(e) => &e.order_id,
            InventoryEvent::StockReservationFailed(e) => &e.order_id,
            _ => return Ok(()),
        };
        let Some(state) = load::<OrderState>(ctx, ORDERS, order_id)? else {
            return Ok(());
        };
        if state.stage != Stage::Reserving {
            // A duplicate (the first one moved the order on, in the same write as its
            // effects), or an answer after the saga moved on (e.g. timed out): the
            // compensation sent then already covers it. No `seen` entry is needed.
            return Ok(());
        }
        let cause = Cause::of(&env);
        match &env.payload {
            InventoryEvent::StockReserved(_) => {
                let mut state = state;
                state.stage = Stage::Authorizing;
                let cmd = AuthorizePayment {
                    payment_id: state.payment_id.clone(),
                    order_id: state.order_id.clone(),
                    user_id: state.user_id.clone(),
                    amount_cents: state.total_cents,
                    currency: state.currency.clone(),
                };
                self.send_payment(ctx, &cause, &state, cmd)?;
                save(ctx, ORDERS, &state.order_id, &state)
            }
            InventoryEvent::StockReservationFailed(e) => {
                let detail = e
                    .shortages
                    .iter()
                    .map(|s| {
                        format!(
                            "{}: {} requested, {} available",
                            s.product_id, s.requested, s.available
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                self.cancel(ctx, &cause, state, CancelReason::StockOut, Some(detail))
            }
            _ => Ok(()),
        }
    }

    fn on_payment(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        if !self.known_order(ctx, record)? {
            return Ok(());
        }
        let env = self.wire.decode::<PaymentEvent>(record)?;
        let (order_id, payment) = match &env.payload {
            PaymentEvent::PaymentAuthorized(e) => (&e.order_id, &e.payment_id),
            PaymentEvent::PaymentDeclined(e) => (&e.order_id, &e.payment_id),
            _ => return Ok(()),
        };
        let Some(mut state) = load::<OrderState>(ctx, ORDERS, order_id)? else {
            return Ok(());
        };
        // As for stock answers, the stage makes a duplicate a no-op.
        if state.stage != Stage::Authorizing || *payment != state.payment_id {
            return Ok(());
        }
        let cause = Cause::of(&env);
        match &env.payload {
            PaymentEvent::PaymentAuthorized(e) => {
                state.stage = Stage::Confirmed;
                state.sequence += 1;
                state.authorization_code = Some(e.authorization_code.clone());
                let confirmed = OrderConfirmed {
                    order_id: state.order_id.clone(),
                    user_id: state.user_id.clone(),
                    payment_id: state.payment_id.clone(),
                    total_cents: state.total_cents,
                    currency: state.currency.clone(),
                };
                self.emit_order(ctx, &cause, &state, confirmed)?;
                let capture = CapturePayment {
                    payment_id: state.payment_id.clone(),
                    order_id: state.order_id.clone(),
                    authorization_code: e.authorization_code.clone(),
                    amount_cents: state.total_cents,
                    currency: state.currency.clone(),
                };
                self.send_payment(ctx, &cause, &state, capture)?;
                let commit = CommitStock {
                    order_id: state.order_id.clone(),
                    payment_id: state.payment_id.clone(),
                };
                self.send_inventory(ctx, &cause, &state.order_id, commit)?;
                ctx.cancel(&Self::timer_name(&state.order_id))?;
                save(ctx, ORDERS, &state.order_id, &state)?;
                if let Some(m) = &self.outcomes {
                    m.with_label_values(&["confirmed", ""]).inc();
                }
                Ok(())
            }
            PaymentEvent::PaymentDeclined(e) => {
                // Declined: nothing to refund, the stock goes back.
                let cmd = ReleaseStock {
                    order_id: state.order_id.clone(),
                    reason: StockReleaseReason::PaymentDeclined,
                };
                self.send_inventory(ctx, &cause, &state.order_id, cmd)?;
                let detail = e.detail.clone().or_else(|| Some(format!("{:?}", e.reason)));
                self.cancel(ctx, &cause, state, CancelReason::PaymentDeclined, detail)
            }
            _ => Ok(()),
        }
    }

    fn on_timeout(&self, ctx: &mut Context<'_>, order_id: &str) -> Result<()> {
        let Some(state) = load::<OrderState>(ctx, ORDERS, order_id)? else {
            return Ok(());
        };
        if state.is_final() {
            return Ok(());
        }
        let cause = Cause::timer(&state);
        let why = format!(
            "no answer within {} ms while {:?}",
            self.timeout.as_millis(),
            state.stage
        );
        tracing::info!(order = order_id, stage = ?state.stage, "order saga timed out");
        self.compensate(ctx, &cause, &state, StockReleaseReason::Timeout, &why)?;
        self.cancel(ctx, &cause, state, CancelReason::Timeout, Some(why))
    }
}

impl Processor for OrderSaga {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        let t = record.topic.as_str();
        if t == self.commands {
            // The first hop checks the framing and schema of what the producer wrote, so a
            // malformed command is dead-lettered from `commands.orders` itself, at the
            // producer's coordinates. It then goes on, bytes and headers unchanged plus the
            // producer's coordinates (`Context::repartition`), re-keyed by the runtime's
            // partitioner; a refusal on the next hop still names the producer's record.
            let _: Envelope<OrderCommand> = self.wire.decode(&record)?;
            ctx.repartition(
                &self.repartitioned,
                record.key.as_deref(),
                record.value.as_deref(),
            );
            return Ok(());
        }
        let r = if t == self.repartitioned {
            self.on_command(ctx, &record)
        } else if t == self.inventory_events {
            self.on_inventory(ctx, &record)
        } else if t == self.payment_events {
            self.on_payment(ctx, &record)
        } else {
            Err(ProcessorError::UnexpectedTopic(record.id()))
        };
        Ok(r?)
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, timer: &Timer) -> tributary_streams::Result<()> {
        if let Some(order_id) = timer.name.strip_prefix(TIMER_PREFIX) {
            self.on_timeout(ctx, order_id)?;
        }
        Ok(())
    }

    /// New orders wait while the task holds `max_open` open ones (one timeout timer each), and
    /// are taken again once a quarter of those have settled; every other input always flows.
    fn admits(&self, topic: &str, load: &Load) -> bool {
        if self.max_open == 0 || topic != self.commands {
            return true;
        }
        let resume_below = self.max_open - self.max_open / 4;
        load.timers
            < if load.paused {
                resume_below
            } else {
                self.max_open
            }
    }
}

/// The `orders` app: the order saga.
pub(crate) struct OrdersApp;

impl App for OrdersApp {
    fn name(&self) -> &'static str {
        "orders"
    }

    fn inputs(&self, topics: &Topics) -> Vec<String> {
        OrderSaga::inputs(topics)
    }

    fn stores(&self) -> Vec<&'static str> {
        OrderSaga::stores()
    }

    /// A finished order's state stays for `saga_retention` (at least twice the timeout, so an
    /// open order's state is never swept).
    fn retention(&self, store: &str, cfg: &crate::DomainConfig) -> Option<Duration> {
        match store {
            ORDERS => Some(cfg.saga_retention.max(cfg.saga_timeout * 2)),
            crate::common::SEEN => Some(cfg.dedupe_retention),
            _ => None,
        }
    }

    fn build<'a>(&'a self, b: Build<'a>) -> Building<'a> {
        Box::pin(async move {
            let cfg = b.cfg;
            let topics = b.topics.clone();
            let (brokers, co) = (
                cfg.brokers.clone(),
                vec![
                    topics.orders_saga(),
                    topics.events_inventory(),
                    topics.events_payments(),
                ],
            );
            let events = topics.events_inventory();
            // The catalog reads the inventory app's events; it checks that app's lag so an
            // order is priced from a catalog that has caught up.
            let inventory = crate::DomainApp::Inventory;
            let owner = (inventory.application_id(cfg), inventory.inputs(&topics));
            let codec = b.codec.clone();
            let catalog = tokio::task::spawn_blocking(move || -> Result<Catalog> {
                check_co_partitioned(&brokers, &co)?;
                Catalog::start(&brokers, &events, Some((&owner.0, owner.1)), codec)
            })
            .await
            .map_err(|e| ProcessorError::Config(format!("starting the catalog: {e}")))??;
            let catalog = Arc::new(catalog);
            let timeout = cfg.saga_timeout;
            let max_open = cfg.saga_max_open;
            let app_id = crate::DomainApp::Orders.application_id(cfg);
            let outcomes = b
                .metrics
                .map(|r| outcome_metric(r, &app_id))
                .transpose()
                .map_err(|e| ProcessorError::Config(format!("saga metrics: {e}")))?;
            let wire = b.wire();
            let factory: crate::app::Factory = Box::new(move |_| {
                Box::new(
                    OrderSaga::new(
                        wire.clone(),
                        topics.clone(),
                        catalog.clone(),
                        timeout,
                        outcomes.clone(),
                    )
                    .with_max_open(max_open),
                )
            });
            Ok(factory)
        })
    }
}
