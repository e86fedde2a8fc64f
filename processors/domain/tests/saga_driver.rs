//! The order saga, the inventory and the payments through the streams runtime's test driver,
//! with no broker: every path of the saga (confirm, stock-out, decline, timeout while reserving
//! and while authorizing, late replies, user cancel, duplicates, invalid orders), the stock
//! ledger's rules and the payments' rules, then the three processors wired to each other.
//!
//! Inputs are real envelopes encoded by the project's codec, and every output is decoded back.
//! The codec needs a schema registry: an in-process, in-memory `tributary-registry` on an
//! ephemeral port (Confluent's REST API, no Kafka). Prices come from a fixed `Catalog`.
//! Everything runs on partition 0 (the driver's one task per partition).

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tributary_processors::inventory::{Product, Reservation, ReservationStatus};
use tributary_processors::orders::{OrderState, Stage};
use tributary_processors::payments::{Payment, PaymentStatus};
use tributary_processors::{
    invariants, Catalog, DeclineRule, InventoryProcessor, OrderSaga, PaymentsProcessor, Price,
    Topics,
};
use tributary_registry::{start_in_memory, Compatibility, RunningRegistry};
use tributary_schemas::domain::*;
use tributary_schemas::types::{Envelope, TopicPayload};
use tributary_schemas::Codec;
use tributary_streams::testing::TestDriver;
use tributary_streams::Output;

const TIMEOUT: Duration = Duration::from_secs(30);
const TIMEOUT_MS: i64 = 30_000;

// ---- the registry, the codec and the runtime the codec calls run on ---------------------------

struct Shared {
    rt: tokio::runtime::Runtime,
    codec: Arc<Codec>,
    _registry: RunningRegistry,
}

/// One registry and codec for every test of the binary (schemas are the same for all).
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let registry = rt
            .block_on(start_in_memory(
                "127.0.0.1:0".parse().expect("an address"),
                Compatibility::Backward,
            ))
            .expect("an in-memory registry");
        let codec = Arc::new(Codec::new(&format!("http://{}", registry.addr)));
        Shared {
            rt,
            codec,
            _registry: registry,
        }
    })
}

/// The processors block on the codec through the current tokio handle (as on the engine's
/// blocking thread): each test runs with the shared runtime entered.
fn enter() -> tokio::runtime::EnterGuard<'static> {
    shared().rt.enter()
}

fn encode<P: TopicPayload>(env: &Envelope<P>) -> Vec<u8> {
    let s = shared();
    s.rt.block_on(s.codec.encode(env)).expect("encodes")
}

fn decode<P: TopicPayload>(o: &Output) -> Envelope<P> {
    let s = shared();
    let bytes = o.value.as_deref().expect("a value");
    s.rt.block_on(s.codec.decode::<Envelope<P>>(bytes))
        .unwrap_or_else(|e| panic!("an output on {} decodes: {e}", o.topic))
}

fn key(o: &Output) -> String {
    String::from_utf8(o.key.clone().expect("a key")).expect("a UTF-8 key")
}

fn topics_of(outs: &[Output]) -> Vec<&str> {
    outs.iter().map(|o| o.topic.as_str()).collect()
}

/// The outputs to `topic`, decoded, each checked to be keyed by `key`.
fn on<P: TopicPayload>(outs: &[Output], topic: &str, key_: &str) -> Vec<Envelope<P>> {
    outs.iter()
        .filter(|o| o.topic == topic)
        .map(|o| {
            assert_eq!(key(o), key_, "key of an output on {topic}");
            decode::<P>(o)
        })
        .collect()
}

/// The outputs to `topic` keyed by `key_`, decoded (other keys share the topic).
fn keyed<P: TopicPayload>(outs: &[Output], topic: &str, key_: &str) -> Vec<Envelope<P>> {
    outs.iter()
        .filter(|o| o.topic == topic && key(o) == key_)
        .map(decode::<P>)
        .collect()
}

fn keys(outs: &[Output]) -> Vec<String> {
    outs.iter().map(key).collect()
}

fn one<P: TopicPayload>(outs: &[Output], topic: &str, key_: &str) -> Envelope<P> {
    let mut all = on::<P>(outs, topic, key_);
    assert_eq!(
        all.len(),
        1,
        "one output on {topic} in {:?}",
        topics_of(outs)
    );
    all.remove(0)
}

fn rejection(outs: &[Output], command_topic: &str) -> CommandRejected {
    let r = outs
        .iter()
        .find(|o| o.topic == "events.rejections")
        .expect("a rejection");
    let RejectionEvent::CommandRejected(r) = decode::<RejectionEvent>(r).payload;
    assert_eq!(r.command_topic, command_topic);
    assert!(
        outs.iter()
            .any(|o| o.topic == format!("{command_topic}.dlq")),
        "the rejected command is dead-lettered too: {:?}",
        topics_of(outs)
    );
    r
}

fn json<T: serde::de::DeserializeOwned>(d: &mut TestDriver, store: &str, k: &str) -> Option<T> {
    d.get(0, store, k.as_bytes())
        .expect("store read")
        .map(|b| serde_json::from_slice(&b).expect("stored JSON"))
}

// ---- commands and replies -----------------------------------------------------------------

fn place(order: &str, user: &str, lines: &[(&str, i32)]) -> Envelope<OrderCommand> {
    let cmd = PlaceOrder {
        order_id: order.into(),
        user_id: user.into(),
        currency: "EUR".into(),
        lines: lines
            .iter()
            .map(|(p, q)| PlaceOrderLine {
                product_id: p.to_string(),
                quantity: *q,
            })
            .collect(),
    };
    Envelope::new(order, format!("flow-{order}"), cmd)
}

fn cancel_order(order: &str, user: &str) -> Envelope<OrderCommand> {
    let cmd = CancelOrder {
        order_id: order.into(),
        user_id: user.into(),
        note: Some("changed my mind".into()),
    };
    Envelope::new(order, format!("flow-cancel-{order}"), cmd)
}

fn reserved(order: &str, items: &[(&str, i32)]) -> Envelope<InventoryEvent> {
    let e = StockReserved {
        order_id: order.into(),
        reserved_items: stock_items(items),
    };
    Envelope::new(order, format!("flow-{order}"), e).with_sequence(1)
}

fn reservation_failed(
    order: &str,
    product: &str,
    requested: i32,
    available: i32,
) -> Envelope<InventoryEvent> {
    let e = StockReservationFailed {
        order_id: order.into(),
        shortages: vec![StockShortage {
            product_id: product.into(),
            requested,
            available,
        }],
    };
    Envelope::new(order, format!("flow-{order}"), e).with_sequence(1)
}

fn authorized(order: &str, user: &str, amount: i64) -> Envelope<PaymentEvent> {
    let e = PaymentAuthorized {
        payment_id: format!("pay-{order}"),
        order_id: order.into(),
        user_id: user.into(),
        amount_cents: amount,
        currency: "EUR".into(),
        authorization_code: format!("AUTH-pay-{order}"),
    };
    Envelope::new(format!("pay-{order}"), format!("flow-{order}"), e).with_sequence(1)
}

fn declined(order: &str, user: &str, amount: i64) -> Envelope<PaymentEvent> {
    let e = PaymentDeclined {
        payment_id: format!("pay-{order}"),
        order_id: order.into(),
        user_id: user.into(),
        amount_cents: amount,
        currency: "EUR".into(),
        reason: DeclineReason::InsufficientFunds,
        detail: Some("no funds".into()),
    };
    Envelope::new(format!("pay-{order}"), format!("flow-{order}"), e).with_sequence(1)
}

fn stock_items(items: &[(&str, i32)]) -> Vec<StockItem> {
    items
        .iter()
        .map(|(p, q)| StockItem {
            product_id: p.to_string(),
            quantity: *q,
        })
        .collect()
}

// ---- the saga under the driver --------------------------------------------------------------

/// Products the saga's catalog knows: `p-a` at 2.50, `p-b` at 10.00, `p-usd` priced in USD.
fn catalog() -> Arc<Catalog> {
    let eur = |c| Price {
        unit_price_cents: c,
        currency: "EUR".into(),
    };
    Arc::new(Catalog::fixed([
        ("p-a".to_string(), eur(250)),
        ("p-b".to_string(), eur(1000)),
        (
            "p-usd".to_string(),
            Price {
                unit_price_cents: 100,
                currency: "USD".into(),
            },
        ),
    ]))
}

struct Saga {
    d: TestDriver,
}

impl Saga {
    fn new() -> Saga {
        let (codec, catalog) = (shared().codec.clone(), catalog());
        let d = TestDriver::new(&OrderSaga::stores(), move |_| {
            OrderSaga::with_codec(codec.clone(), Topics::default(), catalog.clone(), TIMEOUT)
        });
        Saga { d }
    }

    /// A command on `commands.orders`: the saga's first hop forwards it unchanged to the
    /// internal `orders-saga` topic, and what that hop's record produces is returned.
    fn command(&mut self, env: &Envelope<OrderCommand>) -> Vec<Output> {
        let bytes = encode(env);
        self.d
            .pipe(
                "commands.orders",
                0,
                Some(env.aggregate_id.as_bytes()),
                Some(&bytes),
                0,
            )
            .expect("pipe");
        let hop = self.d.take_outputs();
        assert_eq!(topics_of(&hop), ["internal.orders-saga"]);
        assert_eq!(
            hop[0].value.as_deref(),
            Some(&bytes[..]),
            "forwarded unchanged"
        );
        assert_eq!(key(&hop[0]), env.aggregate_id);
        self.d
            .pipe(
                "internal.orders-saga",
                0,
                hop[0].key.as_deref(),
                hop[0].value.as_deref(),
                0,
            )
            .expect("pipe");
        self.d.take_outputs()
    }

    /// An inventory or payment reply, keyed by the order id as inventory and payments key them.
    fn reply<P: TopicPayload>(&mut self, order: &str, env: &Envelope<P>) -> Vec<Output> {
        self.d
            .pipe(P::TOPIC, 0, Some(order.as_bytes()), Some(&encode(env)), 0)
            .expect("pipe");
        self.d.take_outputs()
    }

    fn advance(&mut self, ms: i64) -> Vec<Output> {
        self.d.advance_wall_clock(ms).expect("advance");
        self.d.take_outputs()
    }

    fn state(&mut self, order: &str) -> OrderState {
        json(&mut self.d, "orders", order).expect("the order's state")
    }

    fn timers(&mut self) -> Vec<(String, i64)> {
        self.d
            .timers(0)
            .expect("timers")
            .into_iter()
            .map(|t| (t.name, t.due_ms))
            .collect()
    }

    /// Places `o-1` for `u-1`: 2 × p-a + 1 × p-b = 15.00, checks the outputs, returns the
    /// command and the `ReserveStock` it sent.
    fn placed(&mut self) -> (Envelope<OrderCommand>, Envelope<InventoryCommand>) {
        let cmd = place("o-1", "u-1", &[("p-a", 2), ("p-b", 1)]);
        let outs = self.command(&cmd);
        assert_eq!(topics_of(&outs), ["events.orders", "commands.inventory"]);
        let ev = one::<OrderEvent>(&outs, "events.orders", "o-1");
        let OrderEvent::OrderPlaced(p) = &ev.payload else {
            panic!("OrderPlaced, got {ev:?}")
        };
        assert_eq!(p.total_cents, 1500);
        assert_eq!(p.currency, "EUR");
        assert_eq!(
            p.lines,
            vec![
                OrderLine {
                    product_id: "p-a".into(),
                    quantity: 2,
                    unit_price_cents: 250
                },
                OrderLine {
                    product_id: "p-b".into(),
                    quantity: 1,
                    unit_price_cents: 1000
                },
            ]
        );
        assert_eq!((ev.aggregate_id.as_str(), ev.sequence), ("o-1", 1));
        assert_eq!(ev.causation_id.as_deref(), Some(cmd.id.as_str()));
        assert_eq!(ev.correlation_id, cmd.correlation_id);
        let reserve = one::<InventoryCommand>(&outs, "commands.inventory", "o-1");
        let InventoryCommand::ReserveStock(r) = &reserve.payload else {
            panic!("ReserveStock, got {reserve:?}")
        };
        assert_eq!(r.order_id, "o-1");
        assert_eq!(r.items, stock_items(&[("p-a", 2), ("p-b", 1)]));
        assert_eq!(reserve.causation_id.as_deref(), Some(cmd.id.as_str()));
        assert_eq!(reserve.correlation_id, cmd.correlation_id);

        let now = self.d.now_ms();
        let s = self.state("o-1");
        assert_eq!(s.stage, Stage::Reserving);
        assert_eq!((s.total_cents, s.sequence), (1500, 1));
        assert_eq!(s.payment_id, "pay-o-1");
        assert_eq!(s.deadline_ms, now + TIMEOUT_MS);
        assert_eq!(
            self.timers(),
            [("timeout:o-1".to_string(), now + TIMEOUT_MS)]
        );
        (cmd, reserve)
    }

    /// [`placed`](Self::placed), then `StockReserved`: the saga asks for the payment.
    fn authorizing(&mut self) -> Envelope<PaymentCommand> {
        self.placed();
        let outs = self.reply("o-1", &reserved("o-1", &[("p-a", 2), ("p-b", 1)]));
        assert_eq!(topics_of(&outs), ["commands.payments"]);
        let auth = one::<PaymentCommand>(&outs, "commands.payments", "o-1");
        assert_eq!(auth.aggregate_id, "pay-o-1");
        assert_eq!(
            auth.payload,
            PaymentCommand::AuthorizePayment(AuthorizePayment {
                payment_id: "pay-o-1".into(),
                order_id: "o-1".into(),
                user_id: "u-1".into(),
                amount_cents: 1500,
                currency: "EUR".into(),
            })
        );
        assert_eq!(self.state("o-1").stage, Stage::Authorizing);
        assert_eq!(self.timers().len(), 1, "the timeout still stands");
        auth
    }
}

fn cancelled(outs: &[Output]) -> (Envelope<OrderEvent>, OrderCancelled) {
    let ev = one::<OrderEvent>(outs, "events.orders", "o-1");
    let OrderEvent::OrderCancelled(c) = ev.payload.clone() else {
        panic!("OrderCancelled, got {ev:?}")
    };
    (ev, c)
}

fn release_reason(outs: &[Output]) -> StockReleaseReason {
    let cmd = one::<InventoryCommand>(outs, "commands.inventory", "o-1");
    let InventoryCommand::ReleaseStock(r) = cmd.payload else {
        panic!("ReleaseStock, got {cmd:?}")
    };
    assert_eq!(r.order_id, "o-1");
    r.reason
}

/// After the order is final, a `StockReserved`, `PaymentAuthorized` and `PaymentDeclined`
/// (each a new event) and the timeout change nothing.
fn late_replies_change_nothing(s: &mut Saga) {
    let before = s.state("o-1");
    assert!(before.is_final());
    assert!(s
        .reply("o-1", &reserved("o-1", &[("p-a", 2), ("p-b", 1)]))
        .is_empty());
    assert!(s
        .reply("o-1", &reservation_failed("o-1", "p-a", 2, 0))
        .is_empty());
    assert!(s.reply("o-1", &authorized("o-1", "u-1", 1500)).is_empty());
    assert!(s.reply("o-1", &declined("o-1", "u-1", 1500)).is_empty());
    assert!(s.advance(10 * TIMEOUT_MS).is_empty(), "no timer fires");
    assert_eq!(s.state("o-1"), before, "the final state stands");
    assert!(s.timers().is_empty());
}

#[test]
fn confirm_reserves_authorizes_then_confirms_captures_and_commits() {
    let _rt = enter();
    let mut s = Saga::new();
    s.authorizing();
    let reply = authorized("o-1", "u-1", 1500);
    let outs = s.reply("o-1", &reply);
    assert_eq!(
        topics_of(&outs),
        ["events.orders", "commands.payments", "commands.inventory"]
    );
    let ev = one::<OrderEvent>(&outs, "events.orders", "o-1");
    assert_eq!(
        ev.payload,
        OrderEvent::OrderConfirmed(OrderConfirmed {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            payment_id: "pay-o-1".into(),
            total_cents: 1500,
            currency: "EUR".into(),
        })
    );
    assert_eq!(ev.sequence, 2);
    assert_eq!(ev.causation_id.as_deref(), Some(reply.id.as_str()));
    assert_eq!(ev.correlation_id, "flow-o-1");
    let capture = one::<PaymentCommand>(&outs, "commands.payments", "o-1");
    assert_eq!(
        capture.payload,
        PaymentCommand::CapturePayment(CapturePayment {
            payment_id: "pay-o-1".into(),
            order_id: "o-1".into(),
            authorization_code: "AUTH-pay-o-1".into(),
            amount_cents: 1500,
            currency: "EUR".into(),
        })
    );
    let commit = one::<InventoryCommand>(&outs, "commands.inventory", "o-1");
    assert_eq!(
        commit.payload,
        InventoryCommand::CommitStock(CommitStock {
            order_id: "o-1".into(),
            payment_id: "pay-o-1".into(),
        })
    );
    let st = s.state("o-1");
    assert_eq!(st.stage, Stage::Confirmed);
    assert_eq!(st.cancel_reason, None);
    assert_eq!(st.authorization_code.as_deref(), Some("AUTH-pay-o-1"));
    assert_eq!(st.sequence, 2);
    assert!(s.timers().is_empty(), "the timeout is cancelled");
    late_replies_change_nothing(&mut s);
}

#[test]
fn a_task_holding_max_open_orders_takes_no_new_ones_until_a_quarter_have_settled() {
    let _rt = enter();
    let (codec, catalog) = (shared().codec.clone(), catalog());
    let mut s = Saga {
        d: TestDriver::new(&OrderSaga::stores(), move |_| {
            OrderSaga::with_codec(codec.clone(), Topics::default(), catalog.clone(), TIMEOUT)
                .with_max_open(4)
        }),
    };
    let orders_in = "commands.orders";
    for i in 0..3 {
        s.command(&place(&format!("o-{i}"), "u-1", &[("p-a", 1)]));
        assert!(
            s.d.admits(0, orders_in, false).expect("admits"),
            "{} open",
            i + 1
        );
    }
    s.command(&place("o-3", "u-1", &[("p-a", 1)]));
    assert_eq!(s.timers().len(), 4, "one timeout per open order");
    assert!(
        !s.d.admits(0, orders_in, false).expect("admits"),
        "4 open: new orders wait"
    );
    // Answers to the open orders, and the hop that places them, always flow.
    for other in [
        "internal.orders-saga",
        "events.inventory",
        "events.payments",
    ] {
        assert!(s.d.admits(0, other, false).expect("admits"), "{other}");
    }

    // One settles (a stock-out ends it): 3 open. Below the bound, but a paused input waits
    // until a quarter of the bound has settled (resumes below 3), so it is not paused and
    // resumed on every batch.
    s.reply("o-0", &reservation_failed("o-0", "p-a", 1, 0));
    assert!(s.state("o-0").is_final());
    assert!(!s.d.admits(0, orders_in, true).expect("admits"));
    assert!(s.d.admits(0, orders_in, false).expect("admits"));
    // A second one settles: 2 open, the paused input is taken again.
    s.reply("o-1", &reservation_failed("o-1", "p-a", 1, 0));
    assert!(s.d.admits(0, orders_in, true).expect("admits"));

    // Without a bound (the default of `with_codec`), new orders always flow.
    let mut unbounded = Saga::new();
    for i in 0..10 {
        unbounded.command(&place(&format!("u-{i}"), "u-1", &[("p-a", 1)]));
    }
    assert!(unbounded.d.admits(0, orders_in, false).expect("admits"));
}

#[test]
fn stock_out_cancels_without_compensation() {
    let _rt = enter();
    let mut s = Saga::new();
    s.placed();
    let outs = s.reply("o-1", &reservation_failed("o-1", "p-a", 2, 1));
    assert_eq!(
        topics_of(&outs),
        ["events.orders"],
        "nothing was reserved: nothing to release"
    );
    let (ev, c) = cancelled(&outs);
    assert_eq!(c.reason, CancelReason::StockOut);
    assert_eq!(c.detail.as_deref(), Some("p-a: 2 requested, 1 available"));
    assert_eq!(ev.sequence, 2);
    let st = s.state("o-1");
    assert_eq!(
        (st.stage, st.cancel_reason),
        (Stage::Cancelled, Some(CancelReason::StockOut))
    );
    assert!(s.timers().is_empty());
    late_replies_change_nothing(&mut s);
}

#[test]
fn decline_releases_the_stock_then_cancels() {
    let _rt = enter();
    let mut s = Saga::new();
    s.authorizing();
    let outs = s.reply("o-1", &declined("o-1", "u-1", 1500));
    assert_eq!(
        topics_of(&outs),
        ["commands.inventory", "events.orders"],
        "no refund for a declined payment"
    );
    assert_eq!(release_reason(&outs), StockReleaseReason::PaymentDeclined);
    let (ev, c) = cancelled(&outs);
    assert_eq!(c.reason, CancelReason::PaymentDeclined);
    assert_eq!(c.detail.as_deref(), Some("no funds"));
    assert_eq!(ev.sequence, 2);
    let st = s.state("o-1");
    assert_eq!(
        (st.stage, st.cancel_reason),
        (Stage::Cancelled, Some(CancelReason::PaymentDeclined))
    );
    assert!(s.timers().is_empty());
    late_replies_change_nothing(&mut s);
}

#[test]
fn timeout_while_reserving_releases_and_cancels() {
    let _rt = enter();
    let mut s = Saga::new();
    let (cmd, _) = s.placed();
    assert!(s.advance(TIMEOUT_MS - 1).is_empty(), "not due yet");
    let outs = s.advance(1);
    assert_eq!(
        topics_of(&outs),
        ["commands.inventory", "events.orders"],
        "no payment was asked for: nothing to refund"
    );
    assert_eq!(release_reason(&outs), StockReleaseReason::Timeout);
    let (ev, c) = cancelled(&outs);
    assert_eq!(c.reason, CancelReason::Timeout);
    assert_eq!(
        c.detail.as_deref(),
        Some("no answer within 30000 ms while Reserving")
    );
    assert_eq!(ev.sequence, 2);
    assert_eq!(ev.causation_id, None, "caused by the timer");
    assert_eq!(
        ev.correlation_id, cmd.correlation_id,
        "still the order's flow"
    );
    let st = s.state("o-1");
    assert_eq!(
        (st.stage, st.cancel_reason),
        (Stage::Cancelled, Some(CancelReason::Timeout))
    );
    assert!(s.timers().is_empty());
    late_replies_change_nothing(&mut s);
}

#[test]
fn timeout_while_authorizing_refunds_releases_and_cancels() {
    let _rt = enter();
    let mut s = Saga::new();
    s.authorizing();
    let outs = s.advance(TIMEOUT_MS);
    assert_eq!(
        topics_of(&outs),
        ["commands.payments", "commands.inventory", "events.orders"]
    );
    let refund = one::<PaymentCommand>(&outs, "commands.payments", "o-1");
    assert_eq!(refund.aggregate_id, "pay-o-1");
    assert_eq!(
        refund.payload,
        PaymentCommand::RefundPayment(RefundPayment {
            payment_id: "pay-o-1".into(),
            order_id: "o-1".into(),
            amount_cents: 1500,
            currency: "EUR".into(),
            reason: Some("no answer within 30000 ms while Authorizing".into()),
        })
    );
    assert_eq!(release_reason(&outs), StockReleaseReason::Timeout);
    let (_, c) = cancelled(&outs);
    assert_eq!(c.reason, CancelReason::Timeout);
    assert_eq!(s.state("o-1").stage, Stage::Cancelled);
    // The authorization arriving now is late: the refund already sent covers it.
    late_replies_change_nothing(&mut s);
}

#[test]
fn user_cancel_compensates_what_the_order_holds() {
    let _rt = enter();
    // While reserving: the stock is released, nothing to refund.
    let mut s = Saga::new();
    s.placed();
    let outs = s.command(&cancel_order("o-1", "u-1"));
    assert_eq!(topics_of(&outs), ["commands.inventory", "events.orders"]);
    assert_eq!(release_reason(&outs), StockReleaseReason::OrderCancelled);
    let (_, c) = cancelled(&outs);
    assert_eq!(c.reason, CancelReason::UserCancelled);
    assert_eq!(c.detail.as_deref(), Some("changed my mind"));
    assert!(s.timers().is_empty());
    late_replies_change_nothing(&mut s);
    // Cancelling a final order is refused, the state stays.
    let before = s.state("o-1");
    let outs = s.command(&cancel_order("o-1", "u-1"));
    assert_eq!(
        topics_of(&outs),
        ["events.rejections", "commands.orders.dlq"]
    );
    assert_eq!(
        rejection(&outs, "commands.orders").reason,
        RejectionReason::InvalidState
    );
    assert_eq!(s.state("o-1"), before);

    // While authorizing: refund, release, cancel.
    let mut s = Saga::new();
    s.authorizing();
    let outs = s.command(&cancel_order("o-1", "u-1"));
    assert_eq!(
        topics_of(&outs),
        ["commands.payments", "commands.inventory", "events.orders"]
    );
    let refund = one::<PaymentCommand>(&outs, "commands.payments", "o-1");
    let PaymentCommand::RefundPayment(r) = &refund.payload else {
        panic!("RefundPayment, got {refund:?}")
    };
    assert_eq!(
        (r.amount_cents, r.reason.as_deref()),
        (1500, Some("cancelled by the user"))
    );
    assert_eq!(release_reason(&outs), StockReleaseReason::OrderCancelled);
    assert_eq!(cancelled(&outs).1.reason, CancelReason::UserCancelled);
    late_replies_change_nothing(&mut s);
}

#[test]
fn a_cancel_by_another_user_or_of_an_unknown_order_is_refused() {
    let _rt = enter();
    let mut s = Saga::new();
    s.authorizing();
    let before = s.state("o-1");
    let outs = s.command(&cancel_order("o-1", "u-2"));
    assert_eq!(
        topics_of(&outs),
        ["events.rejections", "commands.orders.dlq"]
    );
    assert_eq!(
        rejection(&outs, "commands.orders").reason,
        RejectionReason::InvalidState
    );
    assert_eq!(s.state("o-1"), before, "the order goes on");
    assert_eq!(s.timers().len(), 1);

    let outs = s.command(&cancel_order("o-404", "u-1"));
    assert_eq!(
        topics_of(&outs),
        ["events.rejections", "commands.orders.dlq"]
    );
    assert_eq!(
        rejection(&outs, "commands.orders").reason,
        RejectionReason::NotFound
    );
    assert_eq!(json::<OrderState>(&mut s.d, "orders", "o-404"), None);
}

#[test]
fn duplicates_have_no_second_effect() {
    let _rt = enter();
    let mut s = Saga::new();
    let (cmd, _) = s.placed();
    // The same command (same envelope id) again, as a producer retry would send it.
    assert!(
        s.command(&cmd).is_empty(),
        "a duplicate PlaceOrder is a no-op"
    );
    assert_eq!(s.timers().len(), 1);
    // Another command placing the same order id is a different command, refused.
    let other = place("o-1", "u-1", &[("p-a", 1)]);
    let outs = s.command(&other);
    assert_eq!(
        topics_of(&outs),
        ["events.rejections", "commands.orders.dlq"]
    );
    assert_eq!(
        rejection(&outs, "commands.orders").reason,
        RejectionReason::AlreadyExists
    );
    // That refused command retried: refused once, not twice.
    assert!(s.command(&other).is_empty(), "a retried refusal is a no-op");
    assert_eq!(s.state("o-1").total_cents, 1500, "the first order stands");

    // The same reply twice: one payment request.
    let r = reserved("o-1", &[("p-a", 2), ("p-b", 1)]);
    assert_eq!(topics_of(&s.reply("o-1", &r)), ["commands.payments"]);
    assert!(s.reply("o-1", &r).is_empty());
    // The same authorization twice: one confirmation.
    let a = authorized("o-1", "u-1", 1500);
    assert_eq!(s.reply("o-1", &a).len(), 3);
    assert!(s.reply("o-1", &a).is_empty());

    // The same cancel twice: the second is not even refused, it was handled already.
    let mut s = Saga::new();
    s.placed();
    let c = cancel_order("o-1", "u-1");
    assert_eq!(s.command(&c).len(), 2);
    assert!(s.command(&c).is_empty());
}

#[test]
fn a_payment_answer_for_another_payment_or_before_the_reservation_is_ignored() {
    let _rt = enter();
    let mut s = Saga::new();
    s.placed();
    // Still reserving: an authorization cannot be about this order's payment request yet.
    assert!(s.reply("o-1", &authorized("o-1", "u-1", 1500)).is_empty());
    assert_eq!(s.state("o-1").stage, Stage::Reserving);
    let mut s = Saga::new();
    s.authorizing();
    let mut other = authorized("o-1", "u-1", 1500);
    if let PaymentEvent::PaymentAuthorized(a) = &mut other.payload {
        a.payment_id = "pay-someone-else".into();
    }
    assert!(s.reply("o-1", &other).is_empty());
    assert_eq!(s.state("o-1").stage, Stage::Authorizing);
}

#[test]
fn invalid_orders_are_cancelled_and_rejected_without_a_reservation() {
    let _rt = enter();
    for (lines, why) in [
        (&[("p-nope", 1)][..], "unknown product `p-nope`"),
        (
            &[("p-usd", 1)][..],
            "product `p-usd` is priced in USD, the order in EUR",
        ),
        (&[][..], "the order has no lines"),
        (
            &[("p-a", 0)][..],
            "line for `p-a` has non-positive quantity 0",
        ),
        (
            &[("p-a", 1), ("p-a", 2)][..],
            "product `p-a` appears on two lines",
        ),
    ] {
        let mut s = Saga::new();
        let outs = s.command(&place("o-1", "u-1", lines));
        assert_eq!(
            topics_of(&outs),
            ["events.orders", "events.rejections", "commands.orders.dlq"],
            "{why}"
        );
        let (ev, c) = cancelled(&outs);
        assert_eq!(
            (c.reason, c.detail.as_deref()),
            (CancelReason::Invalid, Some(why))
        );
        assert_eq!(ev.sequence, 1);
        let r = rejection(&outs, "commands.orders");
        assert_eq!(
            (r.reason, r.message.as_str()),
            (RejectionReason::ValidationFailed, why)
        );
        let st = s.state("o-1");
        assert_eq!(
            (st.stage, st.cancel_reason),
            (Stage::Cancelled, Some(CancelReason::Invalid))
        );
        assert!(
            s.timers().is_empty(),
            "{why}: no timer for an order that never started"
        );
    }
}

#[test]
fn records_about_no_known_order_are_skipped_and_a_corrupt_one_is_dead_lettered() {
    let _rt = enter();
    let mut s = Saga::new();
    s.placed();
    // Product events share events.inventory, keyed by product id: skipped.
    let level = Envelope::<InventoryEvent>::new(
        "p-a",
        "flow-x",
        ProductStockChanged {
            product_id: "p-a".into(),
            available: 1,
            reserved: 2,
        },
    );
    assert!(s.reply("p-a", &level).is_empty());
    // An answer about an order this task does not hold: skipped.
    assert!(s.reply("o-9", &reserved("o-9", &[("p-a", 1)])).is_empty());
    // Bytes that are no envelope, about a known order: dead-lettered, the order unchanged.
    let before = s.state("o-1");
    s.d.pipe(
        "events.inventory",
        0,
        Some(b"o-1"),
        Some(b"\x00\x00\x00\x00\x01garbage"),
        0,
    )
    .expect("a bad record is not retried");
    let outs = s.d.take_outputs();
    assert_eq!(topics_of(&outs), ["events.inventory.dlq"]);
    assert_eq!(s.state("o-1"), before);
}

// ---- the inventory under the driver -------------------------------------------------------

struct Inventory {
    d: TestDriver,
}

impl Inventory {
    fn new() -> Inventory {
        let codec = shared().codec.clone();
        let d = TestDriver::new(&InventoryProcessor::stores(), move |_| {
            InventoryProcessor::with_codec(codec.clone(), Topics::default())
        });
        Inventory { d }
    }

    /// A command on `commands.inventory`, forwarded unchanged to the one-partition ledger,
    /// where it is applied; returns what the ledger record produced.
    fn send(&mut self, env: &Envelope<InventoryCommand>) -> Vec<Output> {
        let bytes = encode(env);
        self.d
            .pipe(
                "commands.inventory",
                0,
                Some(env.aggregate_id.as_bytes()),
                Some(&bytes),
                0,
            )
            .expect("pipe");
        let hop = self.d.take_outputs();
        assert_eq!(topics_of(&hop), ["internal.inventory-ledger"]);
        assert_eq!(hop[0].value.as_deref(), Some(&bytes[..]));
        self.d
            .pipe(
                "internal.inventory-ledger",
                0,
                hop[0].key.as_deref(),
                hop[0].value.as_deref(),
                0,
            )
            .expect("pipe");
        self.d.take_outputs()
    }

    fn command(&mut self, aggregate: &str, cmd: impl Into<InventoryCommand>) -> Vec<Output> {
        self.send(&Envelope::new(aggregate, "flow-inv", cmd))
    }

    fn add(&mut self, product: &str, stock: i32) {
        let outs = self.command(
            product,
            AddProduct {
                product_id: product.into(),
                sku: format!("SKU-{product}"),
                name: product.into(),
                description: None,
                unit_price_cents: 250,
                currency: "EUR".into(),
                initial_stock: stock,
            },
        );
        let ev = one::<InventoryEvent>(&outs, "events.inventory", product);
        assert!(
            matches!(ev.payload, InventoryEvent::ProductAdded(_)),
            "{ev:?}"
        );
        assert_eq!(ev.sequence, 1);
    }

    fn reserve(&mut self, order: &str, items: &[(&str, i32)]) -> Vec<Output> {
        self.command(
            order,
            ReserveStock {
                order_id: order.into(),
                items: stock_items(items),
            },
        )
    }

    fn release(&mut self, order: &str) -> Vec<Output> {
        self.command(
            order,
            ReleaseStock {
                order_id: order.into(),
                reason: StockReleaseReason::Timeout,
            },
        )
    }

    fn commit(&mut self, order: &str) -> Vec<Output> {
        self.command(
            order,
            CommitStock {
                order_id: order.into(),
                payment_id: format!("pay-{order}"),
            },
        )
    }

    fn product(&mut self, id: &str) -> Product {
        json(&mut self.d, "products", id).expect("the product")
    }

    /// (available, reserved, sold), checking conservation.
    fn levels(&mut self, id: &str) -> (i64, i64, i64) {
        let p = self.product(id);
        assert!(p.conserved(), "{p:?}");
        (p.available, p.reserved, p.sold)
    }

    fn reservation(&mut self, order: &str) -> Option<Reservation> {
        json(&mut self.d, "reservations", order)
    }
}

/// The reservation event on `events.inventory` (keyed by the order), then each product's new
/// level (keyed by the product), as the ledger emits them.
fn stock_changes(outs: &[Output]) -> Vec<(String, i32, i32)> {
    outs.iter()
        .filter(|o| o.topic == "events.inventory")
        .filter_map(|o| match decode::<InventoryEvent>(o).payload {
            InventoryEvent::ProductStockChanged(c) => {
                assert_eq!(key(o), c.product_id);
                Some((c.product_id, c.available, c.reserved))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn inventory_reserve_release_commit_conserve_stock() {
    let _rt = enter();
    let mut inv = Inventory::new();
    inv.add("p-a", 10);
    inv.add("p-b", 5);

    // Reserve: all lines at once, then each product's level.
    let outs = inv.reserve("o-1", &[("p-a", 3), ("p-b", 2)]);
    assert_eq!(topics_of(&outs), ["events.inventory"; 3]);
    assert_eq!(keys(&outs), ["o-1", "p-a", "p-b"]);
    let ev = keyed::<InventoryEvent>(&outs, "events.inventory", "o-1");
    assert_eq!(
        ev[0].payload,
        InventoryEvent::StockReserved(StockReserved {
            order_id: "o-1".into(),
            reserved_items: stock_items(&[("p-a", 3), ("p-b", 2)]),
        })
    );
    assert_eq!(ev[0].sequence, 1);
    assert_eq!(
        stock_changes(&outs),
        [("p-a".to_string(), 7, 3), ("p-b".to_string(), 3, 2)]
    );
    assert_eq!(inv.levels("p-a"), (7, 3, 0));
    assert_eq!(inv.product("p-a").sequence, 2);
    assert_eq!(
        inv.reservation("o-1").expect("held").status,
        ReservationStatus::Reserved
    );
    // The saga asks again (its state was rolled back after a crash and it may have read the
    // answer before re-sending the request): the same answer again, same sequence, no stock.
    let outs = inv.reserve("o-1", &[("p-a", 3), ("p-b", 2)]);
    let ev = keyed::<InventoryEvent>(&outs, "events.inventory", "o-1");
    assert_eq!(ev.len(), 1);
    assert!(matches!(ev[0].payload, InventoryEvent::StockReserved(_)));
    assert_eq!(ev[0].sequence, 1);
    assert!(stock_changes(&outs).is_empty());
    assert_eq!(inv.levels("p-a"), (7, 3, 0));

    // Release: the units go back.
    let outs = inv.release("o-1");
    assert_eq!(keys(&outs), ["o-1", "p-a", "p-b"]);
    let ev = keyed::<InventoryEvent>(&outs, "events.inventory", "o-1");
    assert_eq!(
        ev[0].payload,
        InventoryEvent::StockReleased(StockReleased {
            order_id: "o-1".into(),
            released_items: stock_items(&[("p-a", 3), ("p-b", 2)]),
            reason: StockReleaseReason::Timeout,
        })
    );
    assert_eq!(ev[0].sequence, 2);
    assert_eq!(
        stock_changes(&outs),
        [("p-a".to_string(), 10, 0), ("p-b".to_string(), 5, 0)]
    );
    assert_eq!(inv.levels("p-a"), (10, 0, 0));
    // A second release (another command) holds nothing to release.
    assert!(inv.release("o-1").is_empty());
    assert_eq!(inv.levels("p-a"), (10, 0, 0));
    assert_eq!(
        inv.reservation("o-1").expect("kept").status,
        ReservationStatus::Released
    );
    // A later ReserveStock for the same order is not a new reservation.
    assert!(inv.reserve("o-1", &[("p-a", 1)]).is_empty());
    assert_eq!(inv.levels("p-a"), (10, 0, 0));

    // Commit: the units are sold.
    inv.reserve("o-2", &[("p-a", 4)]);
    let outs = inv.commit("o-2");
    assert_eq!(keys(&outs), ["o-2", "p-a"]);
    let ev = keyed::<InventoryEvent>(&outs, "events.inventory", "o-2");
    assert_eq!(
        ev[0].payload,
        InventoryEvent::StockCommitted(StockCommitted {
            order_id: "o-2".into(),
            committed_items: stock_items(&[("p-a", 4)]),
        })
    );
    assert_eq!(ev[0].sequence, 2);
    assert_eq!(stock_changes(&outs), [("p-a".to_string(), 6, 0)]);
    assert_eq!(inv.levels("p-a"), (6, 0, 4));
    // Committed twice, or released after the sale: nothing changes.
    assert!(inv.commit("o-2").is_empty());
    assert!(inv.release("o-2").is_empty());
    assert_eq!(inv.levels("p-a"), (6, 0, 4));

    // Restock adds to available.
    let outs = inv.command(
        "p-a",
        RestockProduct {
            product_id: "p-a".into(),
            quantity: 5,
        },
    );
    let ev = one::<InventoryEvent>(&outs, "events.inventory", "p-a");
    assert_eq!(
        ev.payload,
        InventoryEvent::ProductRestocked(ProductRestocked {
            product_id: "p-a".into(),
            quantity: 5,
            available: 11,
            reserved: 0,
        })
    );
    assert_eq!(inv.levels("p-a"), (11, 0, 4));
    let p = inv.product("p-a");
    assert_eq!(p.initial + p.restocked, 15);
}

#[test]
fn inventory_reserving_more_than_available_fails_and_takes_nothing() {
    let _rt = enter();
    let mut inv = Inventory::new();
    inv.add("p-a", 10);
    inv.add("p-b", 5);
    // One line short: the whole reservation fails, the other line is not taken.
    let outs = inv.reserve("o-1", &[("p-a", 7), ("p-b", 6)]);
    assert_eq!(topics_of(&outs), ["events.inventory"], "no level changes");
    let ev = one::<InventoryEvent>(&outs, "events.inventory", "o-1");
    assert_eq!(
        ev.payload,
        InventoryEvent::StockReservationFailed(StockReservationFailed {
            order_id: "o-1".into(),
            shortages: vec![StockShortage {
                product_id: "p-b".into(),
                requested: 6,
                available: 5,
            }],
        })
    );
    assert_eq!(inv.levels("p-a"), (10, 0, 0));
    assert_eq!(inv.levels("p-b"), (5, 0, 0));
    assert_eq!(
        inv.reservation("o-1").expect("kept").status,
        ReservationStatus::Failed
    );
    // Committing a failed reservation is refused; releasing it is a no-op.
    let outs = inv.commit("o-1");
    assert_eq!(
        rejection(&outs, "commands.inventory").reason,
        RejectionReason::InvalidState
    );
    assert!(inv.release("o-1").is_empty());

    // Exactly what is available can be reserved; an unknown product is a shortage of 0.
    let outs = inv.reserve("o-2", &[("p-b", 5)]);
    assert_eq!(stock_changes(&outs), [("p-b".to_string(), 0, 5)]);
    let outs = inv.reserve("o-3", &[("p-b", 1), ("p-zzz", 1)]);
    let InventoryEvent::StockReservationFailed(f) =
        one::<InventoryEvent>(&outs, "events.inventory", "o-3").payload
    else {
        panic!("a failed reservation")
    };
    assert_eq!(
        f.shortages,
        vec![
            StockShortage {
                product_id: "p-b".into(),
                requested: 1,
                available: 0
            },
            StockShortage {
                product_id: "p-zzz".into(),
                requested: 1,
                available: 0
            },
        ]
    );
    // Committing an order that holds nothing is refused.
    let outs = inv.commit("o-404");
    assert_eq!(
        rejection(&outs, "commands.inventory").reason,
        RejectionReason::NotFound
    );
    assert_eq!(inv.levels("p-b"), (0, 5, 0));
}

#[test]
fn inventory_release_before_reserve_voids_the_order_and_duplicates_are_ignored() {
    let _rt = enter();
    let mut inv = Inventory::new();
    inv.add("p-a", 10);
    // The saga gave up before the reservation was applied: the release voids the order, and the
    // reservation arriving afterwards takes nothing (nobody would release it).
    assert!(inv.release("o-1").is_empty());
    assert_eq!(
        inv.reservation("o-1").expect("voided").status,
        ReservationStatus::Voided
    );
    assert!(inv.reserve("o-1", &[("p-a", 3)]).is_empty());
    assert_eq!(inv.levels("p-a"), (10, 0, 0));

    // The same command twice takes the stock once.
    let cmd = Envelope::new(
        "o-2",
        "flow-inv",
        ReserveStock {
            order_id: "o-2".into(),
            items: stock_items(&[("p-a", 3)]),
        },
    );
    assert!(!inv.send(&cmd).is_empty());
    assert!(inv.send(&cmd).is_empty());
    assert_eq!(inv.levels("p-a"), (7, 3, 0));
    // Adding a product twice is refused.
    let outs = inv.command(
        "p-a",
        AddProduct {
            product_id: "p-a".into(),
            sku: "x".into(),
            name: "x".into(),
            description: None,
            unit_price_cents: 1,
            currency: "EUR".into(),
            initial_stock: 1,
        },
    );
    assert_eq!(
        rejection(&outs, "commands.inventory").reason,
        RejectionReason::AlreadyExists
    );
    assert_eq!(inv.levels("p-a"), (7, 3, 0));
}

// ---- the payments under the driver --------------------------------------------------------

struct Payments {
    d: TestDriver,
}

impl Payments {
    fn new(rule: DeclineRule) -> Payments {
        let codec = shared().codec.clone();
        let d = TestDriver::new(&PaymentsProcessor::stores(), move |_| {
            PaymentsProcessor::with_codec(codec.clone(), Topics::default(), rule.clone())
        });
        Payments { d }
    }

    /// A command about `order`'s payment, keyed by the order as the saga sends it.
    fn send(&mut self, order: &str, env: &Envelope<PaymentCommand>) -> Vec<Output> {
        self.d
            .pipe(
                "commands.payments",
                0,
                Some(order.as_bytes()),
                Some(&encode(env)),
                0,
            )
            .expect("pipe");
        self.d.take_outputs()
    }

    fn command(&mut self, order: &str, cmd: impl Into<PaymentCommand>) -> Vec<Output> {
        self.send(
            order,
            &Envelope::new(format!("pay-{order}"), "flow-pay", cmd),
        )
    }

    fn authorize(&mut self, order: &str, user: &str, amount: i64) -> Vec<Output> {
        self.command(
            order,
            AuthorizePayment {
                payment_id: format!("pay-{order}"),
                order_id: order.into(),
                user_id: user.into(),
                amount_cents: amount,
                currency: "EUR".into(),
            },
        )
    }

    fn capture(&mut self, order: &str) -> Vec<Output> {
        self.command(
            order,
            CapturePayment {
                payment_id: format!("pay-{order}"),
                order_id: order.into(),
                authorization_code: format!("AUTH-pay-{order}"),
                amount_cents: 1500,
                currency: "EUR".into(),
            },
        )
    }

    fn refund(&mut self, order: &str) -> Vec<Output> {
        self.command(
            order,
            RefundPayment {
                payment_id: format!("pay-{order}"),
                order_id: order.into(),
                amount_cents: 1500,
                currency: "EUR".into(),
                reason: Some("timeout".into()),
            },
        )
    }

    fn payment(&mut self, order: &str) -> Payment {
        json(&mut self.d, "payments", &format!("pay-{order}")).expect("the payment")
    }
}

fn payment_event(outs: &[Output], order: &str) -> Envelope<PaymentEvent> {
    let ev = one::<PaymentEvent>(outs, "events.payments", order);
    assert_eq!(ev.aggregate_id, format!("pay-{order}"));
    ev
}

fn decline_reason(outs: &[Output], order: &str) -> DeclineReason {
    match payment_event(outs, order).payload {
        PaymentEvent::PaymentDeclined(d) => d.reason,
        other => panic!("PaymentDeclined, got {other:?}"),
    }
}

#[test]
fn payments_authorize_unless_the_rule_declines() {
    let _rt = enter();
    let mut pay = Payments::new(DeclineRule {
        user_suffix: Some("-declines".into()),
        max_amount_cents: Some(10_000),
    });
    let outs = pay.authorize("o-1", "u-1", 10_000);
    let ev = payment_event(&outs, "o-1");
    assert_eq!(
        ev.payload,
        PaymentEvent::PaymentAuthorized(PaymentAuthorized {
            payment_id: "pay-o-1".into(),
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            amount_cents: 10_000,
            currency: "EUR".into(),
            authorization_code: "AUTH-pay-o-1".into(),
        })
    );
    assert_eq!(ev.sequence, 1);
    assert_eq!(pay.payment("o-1").status, PaymentStatus::Authorized);

    let outs = pay.authorize("o-2", "u-2-declines", 100);
    assert_eq!(
        decline_reason(&outs, "o-2"),
        DeclineReason::InsufficientFunds
    );
    assert_eq!(pay.payment("o-2").status, PaymentStatus::Declined);
    let outs = pay.authorize("o-3", "u-3", 10_001);
    assert_eq!(decline_reason(&outs, "o-3"), DeclineReason::LimitExceeded);
    let outs = pay.authorize("o-4", "u-4", 0);
    assert_eq!(decline_reason(&outs, "o-4"), DeclineReason::Other);

    // The same payment asked for again (another command, another amount): the first answer
    // stands and is given again with its sequence (a duplicate for readers), so a saga whose
    // state was rolled back after a crash gets its answer instead of waiting for its timeout.
    let again = pay.authorize("o-1", "u-1", 50_000);
    let e = payment_event(&again, "o-1");
    assert_eq!(e.sequence, 1);
    match e.payload {
        PaymentEvent::PaymentAuthorized(a) => assert_eq!(a.amount_cents, 10_000),
        other => panic!("PaymentAuthorized again, got {other:?}"),
    }
    let again = pay.authorize("o-2", "u-2", 100);
    assert_eq!(payment_event(&again, "o-2").sequence, 1);
    assert_eq!(
        decline_reason(&again, "o-2"),
        DeclineReason::InsufficientFunds
    );
    assert_eq!(pay.payment("o-1").amount_cents, 10_000);
    assert_eq!(pay.payment("o-2").status, PaymentStatus::Declined);
}

#[test]
fn payments_capture_an_authorized_payment_once() {
    let _rt = enter();
    let mut pay = Payments::new(DeclineRule::default());
    pay.authorize("o-1", "u-1", 1500);
    let outs = pay.capture("o-1");
    let ev = payment_event(&outs, "o-1");
    assert_eq!(
        ev.payload,
        PaymentEvent::PaymentCaptured(PaymentCaptured {
            payment_id: "pay-o-1".into(),
            order_id: "o-1".into(),
            authorization_code: "AUTH-pay-o-1".into(),
            amount_cents: 1500,
            currency: "EUR".into(),
        })
    );
    assert_eq!(ev.sequence, 2);
    assert_eq!(pay.payment("o-1").status, PaymentStatus::Captured);
    assert!(pay.capture("o-1").is_empty(), "captured already");

    // A declined payment, or none, cannot be captured.
    pay.authorize("o-2", "u-2-declines", 1500);
    let outs = pay.capture("o-2");
    assert_eq!(
        rejection(&outs, "commands.payments").reason,
        RejectionReason::InvalidState
    );
    let outs = pay.capture("o-404");
    assert_eq!(
        rejection(&outs, "commands.payments").reason,
        RejectionReason::NotFound
    );

    // The same capture command twice: handled once.
    pay.authorize("o-3", "u-3", 1500);
    let cmd = Envelope::new(
        "pay-o-3",
        "flow-pay",
        CapturePayment {
            payment_id: "pay-o-3".into(),
            order_id: "o-3".into(),
            authorization_code: "AUTH-pay-o-3".into(),
            amount_cents: 1500,
            currency: "EUR".into(),
        },
    );
    assert_eq!(pay.send("o-3", &cmd).len(), 1);
    assert!(pay.send("o-3", &cmd).is_empty());
    assert_eq!(pay.payment("o-3").sequence, 2);
}

#[test]
fn payments_refund_only_what_was_taken() {
    let _rt = enter();
    let mut pay = Payments::new(DeclineRule::default());
    // An authorized payment: refunded (the hold released), once.
    pay.authorize("o-1", "u-1", 1500);
    let outs = pay.refund("o-1");
    let ev = payment_event(&outs, "o-1");
    assert_eq!(
        ev.payload,
        PaymentEvent::PaymentRefunded(PaymentRefunded {
            payment_id: "pay-o-1".into(),
            order_id: "o-1".into(),
            amount_cents: 1500,
            currency: "EUR".into(),
            reason: Some("timeout".into()),
        })
    );
    assert_eq!(ev.sequence, 2);
    assert_eq!(pay.payment("o-1").status, PaymentStatus::Refunded);
    assert!(pay.refund("o-1").is_empty(), "refunded already");
    // A refunded payment cannot be captured.
    let outs = pay.capture("o-1");
    assert_eq!(
        rejection(&outs, "commands.payments").reason,
        RejectionReason::InvalidState
    );

    // A declined payment: nothing was taken, the refund is a no-op (compensation is sent
    // without knowing whether the authorization happened).
    pay.authorize("o-2", "u-2-declines", 1500);
    assert!(pay.refund("o-2").is_empty());
    assert_eq!(pay.payment("o-2").status, PaymentStatus::Declined);

    // A payment that does not exist: refused.
    let outs = pay.refund("o-404");
    assert_eq!(
        rejection(&outs, "commands.payments").reason,
        RejectionReason::NotFound
    );
}

// ---- the three processors wired together ---------------------------------------------------

/// The saga, inventory and payments, each under its own driver, with every output delivered to
/// whoever reads its topic; the commands to one topic can be held back to make the saga time out.
struct World {
    saga: Saga,
    inv: Inventory,
    pay: Payments,
    /// Outputs to this topic are parked in `held` instead of delivered.
    hold: Option<&'static str>,
    held: Vec<Output>,
    orders: Vec<Envelope<OrderEvent>>,
    inventory_events: Vec<Envelope<InventoryEvent>>,
    payment_events: Vec<Envelope<PaymentEvent>>,
    rejected: Vec<Output>,
}

impl World {
    fn new() -> World {
        World {
            saga: Saga::new(),
            inv: Inventory::new(),
            pay: Payments::new(DeclineRule::default()),
            hold: None,
            held: Vec::new(),
            orders: Vec::new(),
            inventory_events: Vec::new(),
            payment_events: Vec::new(),
            rejected: Vec::new(),
        }
    }

    fn deliver(&mut self, outs: Vec<Output>) {
        let mut queue: VecDeque<Output> = outs.into();
        while let Some(o) = queue.pop_front() {
            let d = match o.topic.as_str() {
                t if self.hold == Some(t) => {
                    self.held.push(o);
                    continue;
                }
                "events.orders" => {
                    self.orders.push(decode(&o));
                    continue;
                }
                t if t == "events.rejections" || t.ends_with(".dlq") => {
                    self.rejected.push(o);
                    continue;
                }
                "events.inventory" => {
                    self.inventory_events.push(decode(&o));
                    &mut self.saga.d
                }
                "events.payments" => {
                    self.payment_events.push(decode(&o));
                    &mut self.saga.d
                }
                "commands.orders" | "internal.orders-saga" => &mut self.saga.d,
                "commands.inventory" | "internal.inventory-ledger" => &mut self.inv.d,
                "commands.payments" => &mut self.pay.d,
                other => panic!("an output to {other}, which nobody reads"),
            };
            d.pipe(&o.topic, 0, o.key.as_deref(), o.value.as_deref(), 0)
                .expect("pipe");
            queue.extend(d.take_outputs());
        }
    }

    fn send<P: TopicPayload>(&mut self, env: &Envelope<P>) {
        self.deliver(vec![Output {
            topic: P::TOPIC.to_string(),
            key: Some(env.aggregate_id.as_bytes().to_vec()),
            value: Some(encode(env)),
            headers: Vec::new(),
        }]);
    }

    fn add_product(&mut self, id: &str, price: i64, stock: i32) {
        let cmd = AddProduct {
            product_id: id.into(),
            sku: format!("SKU-{id}"),
            name: id.into(),
            description: None,
            unit_price_cents: price,
            currency: "EUR".into(),
            initial_stock: stock,
        };
        self.send(&Envelope::<InventoryCommand>::new(id, "flow-catalog", cmd));
    }

    fn outcome(&self, order: &str) -> Vec<invariants::Outcome> {
        invariants::outcomes(&self.orders)
            .get(order)
            .cloned()
            .unwrap_or_default()
    }

    fn check_invariants(&self, placed: &[&str]) {
        let mut v = invariants::every_order_final(placed.iter().copied(), &self.orders);
        v.extend(invariants::stock_conserved(&self.inventory_events));
        v.extend(invariants::captured_iff_confirmed(
            &self.orders,
            &self.payment_events,
        ));
        v.extend(invariants::refunded_iff_compensated_after_authorization(
            &self.orders,
            &self.payment_events,
        ));
        assert!(v.is_empty(), "violations: {v:#?}");
        assert!(
            self.rejected.is_empty(),
            "nothing refused: {}",
            self.rejected.len()
        );
    }
}

#[test]
fn wired_together_orders_confirm_decline_and_run_out_of_stock_and_stock_is_conserved() {
    use invariants::Outcome::*;
    let _rt = enter();
    let mut w = World::new();
    // The saga prices from its fixed catalog (p-a 2.50, p-b 10.00); the inventory holds stock.
    w.add_product("p-a", 250, 10);
    w.add_product("p-b", 1000, 3);

    w.send(&place("o-1", "u-1", &[("p-a", 2), ("p-b", 1)]));
    assert_eq!(w.outcome("o-1"), [Confirmed]);
    w.send(&place("o-2", "u-2-declines", &[("p-a", 3)]));
    assert_eq!(w.outcome("o-2"), [Cancelled(CancelReason::PaymentDeclined)]);
    w.send(&place("o-3", "u-3", &[("p-a", 1), ("p-b", 5)]));
    assert_eq!(w.outcome("o-3"), [Cancelled(CancelReason::StockOut)]);
    w.send(&cancel_order("o-1", "u-1"));
    assert_eq!(
        w.outcome("o-1"),
        [Confirmed],
        "a confirmed order cannot be cancelled"
    );
    assert_eq!(
        w.rejected.len(),
        2,
        "the refused cancel: a rejection and its dead letter"
    );
    w.rejected.clear();

    // o-1 sold 2 p-a and 1 p-b; o-2's 3 p-a went back; o-3 took nothing.
    assert_eq!(w.inv.levels("p-a"), (8, 0, 2));
    assert_eq!(w.inv.levels("p-b"), (2, 0, 1));
    assert_eq!(w.pay.payment("o-1").status, PaymentStatus::Captured);
    assert_eq!(w.pay.payment("o-2").status, PaymentStatus::Declined);
    assert_eq!(
        w.inv.reservation("o-2").expect("o-2's").status,
        ReservationStatus::Released
    );
    assert!(w.saga.timers().is_empty());
    w.check_invariants(&["o-1", "o-2", "o-3"]);
}

#[test]
fn wired_together_a_timed_out_payment_is_refunded_and_its_late_authorization_ignored() {
    let _rt = enter();
    let mut w = World::new();
    w.add_product("p-a", 250, 10);
    w.hold = Some("commands.payments");
    w.send(&place("o-1", "u-1", &[("p-a", 4)]));
    assert_eq!(w.held.len(), 1, "the AuthorizePayment is held back");
    assert_eq!(w.inv.levels("p-a"), (6, 4, 0));
    // No answer in time: the saga refunds (the payment it asked for) and releases.
    w.saga.d.advance_wall_clock(TIMEOUT_MS).expect("advance");
    let outs = w.saga.d.take_outputs();
    w.deliver(outs);
    assert_eq!(
        w.outcome("o-1"),
        [invariants::Outcome::Cancelled(CancelReason::Timeout)]
    );
    assert_eq!(w.inv.levels("p-a"), (10, 0, 0));
    // The payments now see AuthorizePayment, then RefundPayment; the saga, the late
    // PaymentAuthorized, which changes nothing.
    w.hold = None;
    let held = std::mem::take(&mut w.held);
    assert_eq!(topics_of(&held), ["commands.payments", "commands.payments"]);
    let before = w.saga.state("o-1");
    w.deliver(held);
    assert_eq!(w.pay.payment("o-1").status, PaymentStatus::Refunded);
    assert_eq!(w.saga.state("o-1"), before);
    assert_eq!(w.orders.len(), 2, "OrderPlaced and OrderCancelled only");
    w.check_invariants(&["o-1"]);
}

#[test]
fn wired_together_a_reservation_applied_after_the_timeout_is_released() {
    let _rt = enter();
    let mut w = World::new();
    w.add_product("p-a", 250, 10);
    w.hold = Some("commands.inventory");
    w.send(&place("o-1", "u-1", &[("p-a", 4)]));
    w.saga.d.advance_wall_clock(TIMEOUT_MS).expect("advance");
    let outs = w.saga.d.take_outputs();
    w.deliver(outs);
    assert_eq!(
        w.outcome("o-1"),
        [invariants::Outcome::Cancelled(CancelReason::Timeout)]
    );
    // The inventory applies ReserveStock, then the saga's ReleaseStock; the late StockReserved
    // finds the order final.
    w.hold = None;
    let held = std::mem::take(&mut w.held);
    assert_eq!(
        topics_of(&held),
        ["commands.inventory", "commands.inventory"]
    );
    let before = w.saga.state("o-1");
    w.deliver(held);
    assert_eq!(w.inv.levels("p-a"), (10, 0, 0));
    assert_eq!(
        w.inv.reservation("o-1").expect("o-1's").status,
        ReservationStatus::Released
    );
    assert_eq!(w.saga.state("o-1"), before);
    assert!(
        w.pay.d.scan(0, "payments").expect("scan").is_empty(),
        "no payment was asked for"
    );
    assert_eq!(w.orders.len(), 2, "OrderPlaced and OrderCancelled only");
    w.check_invariants(&["o-1"]);
}

// ---- a retriable failure in the middle of a record ------------------------------------------

/// The registry goes away after the saga has decoded a PlaceOrder (the command's schema is
/// cached) and before its first output is encoded: the record fails retriably and leaves no
/// trace (not even its id among the handled ones, which would make the retry a "duplicate");
/// once the registry is back, the same record places the order.
#[test]
fn a_registry_outage_mid_record_keeps_nothing_and_the_retry_places_the_order() {
    let _rt = enter();
    let rt = &shared().rt;
    let start = |addr: std::net::SocketAddr| {
        rt.block_on(start_in_memory(addr, Compatibility::Backward))
            .expect("a registry")
    };
    let registry = start("127.0.0.1:0".parse().expect("an address"));
    let addr = registry.addr;
    let codec = Arc::new(Codec::new(&format!("http://{addr}")));
    let cmd = place("o-1", "u-1", &[("p-a", 2)]);
    let bytes = rt.block_on(codec.encode(&cmd)).expect("encodes");
    rt.block_on(codec.decode::<Envelope<OrderCommand>>(&bytes))
        .expect("decodes");
    let (c, cat) = (codec.clone(), catalog());
    let mut d = TestDriver::new(&OrderSaga::stores(), move |_| {
        OrderSaga::with_codec(c.clone(), Topics::default(), cat.clone(), TIMEOUT)
    });
    rt.block_on(registry.shutdown());

    let err = d
        .pipe("internal.orders-saga", 0, Some(b"o-1"), Some(&bytes), 0)
        .expect_err("the registry is down");
    assert!(err.retriable(), "{err}");
    assert!(d.take_outputs().is_empty());
    assert_eq!(d.get(0, "seen", cmd.id.as_bytes()).expect("get"), None);
    assert_eq!(d.get(0, "orders", b"o-1").expect("get"), None);
    assert!(d.timers(0).expect("timers").is_empty());

    // Back, at the same address, with the command's schema registered first again (same id).
    let registry = start(addr);
    let reader = Codec::new(&format!("http://{addr}"));
    assert_eq!(
        rt.block_on(reader.encode(&cmd)).expect("encodes")[..5],
        bytes[..5]
    );
    let mut tries = 0;
    while let Err(e) = d.pipe("internal.orders-saga", 0, Some(b"o-1"), Some(&bytes), 0) {
        // A pooled connection to the old server may fail once more.
        assert!(e.retriable() && tries < 20, "{e}");
        tries += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let outs = d.take_outputs();
    assert_eq!(topics_of(&outs), ["events.orders", "commands.inventory"]);
    let placed = rt
        .block_on(reader.decode::<Envelope<OrderEvent>>(outs[0].value.as_deref().expect("a value")))
        .expect("decodes");
    assert!(
        matches!(placed.payload, OrderEvent::OrderPlaced(_)),
        "{placed:?}"
    );
    assert_eq!(placed.causation_id.as_deref(), Some(cmd.id.as_str()));
    // The command is recorded as applied in the order itself (not in `seen`).
    let state: OrderState =
        serde_json::from_slice(&d.get(0, "orders", b"o-1").expect("get").expect("the order"))
            .expect("an order state");
    assert_eq!(state.commands, vec![cmd.id.clone()]);
    assert_eq!(d.get(0, "seen", cmd.id.as_bytes()).expect("get"), None);
    assert_eq!(d.timers(0).expect("timers").len(), 1);
    rt.block_on(registry.shutdown());
}
