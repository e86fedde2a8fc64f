//! The analytics processor: windowed revenue and order counts per currency, and the top
//! products per window, over confirmed orders.
//!
//! Two hops inside one app:
//!
//! 1. `events.orders` (keyed by order id): an order's `OrderPlaced` (which has the lines) and
//!    its `OrderConfirmed` (which says it counts) meet in one task, which keeps the lines in the
//!    store `placed` until the outcome and then forwards one internal JSON record per confirmed
//!    order to the one-partition internal `analytics` topic.
//! 2. `analytics`: one task sees every confirmed order, so a window's figures are complete in
//!    one place. Windows are tumbling, assigned by the order's event time (the envelope
//!    timestamp, which a replay keeps), with a grace period against the largest event time seen
//!    (the store `clock`): an order later than its window's end plus grace is not counted.
//!
//! Results are emitted on every update (`RevenueWindow` per window and currency, `TopProducts`
//! per window), each with the next `sequence` of its aggregate (`revenue:<start>:<currency>`,
//! `top:<start>`), so a sink keeps the latest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tributary_schemas::domain::{
    AnalyticsEvent, OrderEvent, OrderLine, ProductQuantity, RevenueWindow, TopProducts,
};
use tributary_schemas::types::Envelope;
use tributary_streams::window::{Window, Windows};
use tributary_streams::{Context, Processor, Record};

use crate::app::{clones, App, Build, Building};
use crate::common::{first_time, load, save, Wire};
use crate::error::{ProcessorError, Result};
use crate::topics::Topics;

const PLACED: &str = "placed";
const AGGREGATES: &str = "aggregates";
const CLOCK: &str = "clock";
/// Products listed per `TopProducts`.
const TOP_N: usize = 5;

/// A confirmed order, as the second hop needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Confirmed {
    order_id: String,
    event_id: String,
    correlation_id: String,
    currency: String,
    total_cents: i64,
    timestamp: i64,
    lines: Vec<(String, i64)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Revenue {
    order_count: i64,
    revenue_cents: i64,
    sequence: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Top {
    units: BTreeMap<String, i64>,
    sequence: i64,
}

#[derive(Clone)]
pub struct AnalyticsProcessor {
    wire: Wire,
    windows: Windows,
    orders: String,
    internal: String,
    out: String,
}

impl AnalyticsProcessor {
    pub(crate) fn new(wire: Wire, topics: Topics, windows: Windows) -> Self {
        AnalyticsProcessor {
            wire,
            windows,
            orders: topics.events_orders(),
            internal: topics.analytics(),
            out: topics.events_analytics(),
        }
    }

    pub fn inputs(topics: &Topics) -> Vec<String> {
        vec![topics.events_orders(), topics.analytics()]
    }

    pub fn stores() -> Vec<&'static str> {
        vec![PLACED, AGGREGATES, CLOCK, crate::common::SEEN]
    }

    fn on_order(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        let env = self.wire.decode::<OrderEvent>(record)?;
        match &env.payload {
            OrderEvent::OrderPlaced(p) => save(ctx, PLACED, &p.order_id, &p.lines),
            OrderEvent::OrderCancelled(c) => {
                ctx.delete(PLACED, c.order_id.as_bytes())?;
                Ok(())
            }
            OrderEvent::OrderConfirmed(c) => {
                let lines: Vec<OrderLine> = load(ctx, PLACED, &c.order_id)?.unwrap_or_default();
                ctx.delete(PLACED, c.order_id.as_bytes())?;
                let fact = Confirmed {
                    order_id: c.order_id.clone(),
                    event_id: env.id.clone(),
                    correlation_id: env.correlation_id.clone(),
                    currency: c.currency.clone(),
                    total_cents: c.total_cents,
                    timestamp: env.timestamp,
                    lines: lines
                        .into_iter()
                        .map(|l| (l.product_id, i64::from(l.quantity)))
                        .collect(),
                };
                let body = serde_json::to_vec(&fact).map_err(|e| ProcessorError::CorruptState {
                    store: PLACED,
                    key: c.order_id.clone(),
                    reason: e.to_string(),
                })?;
                // One key: the second hop is one task (the topic has one partition anyway).
                ctx.forward(&self.internal, Some(b"all"), Some(&body));
                Ok(())
            }
        }
    }

    fn emit(
        &self,
        ctx: &mut Context<'_>,
        fact: &Confirmed,
        aggregate: &str,
        sequence: i64,
        event: impl Into<AnalyticsEvent>,
    ) -> Result<()> {
        let mut env: Envelope<AnalyticsEvent> =
            Envelope::new(aggregate, fact.correlation_id.clone(), event).with_sequence(sequence);
        env.causation_id = Some(fact.event_id.clone());
        self.wire.emit(ctx, &self.out, aggregate, &env)
    }

    fn on_confirmed(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        let bytes = record
            .value
            .as_deref()
            .ok_or_else(|| ProcessorError::NoValue(record.id()))?;
        let fact: Confirmed =
            serde_json::from_slice(bytes).map_err(|e| ProcessorError::CorruptState {
                store: AGGREGATES,
                key: record.id(),
                reason: format!("internal record: {e}"),
            })?;
        if !first_time(ctx, &format!("confirmed:{}", fact.order_id))? {
            return Ok(());
        }
        let clock: i64 = load(ctx, CLOCK, "max")?.unwrap_or(i64::MIN);
        let clock = clock.max(fact.timestamp);
        save(ctx, CLOCK, "max", &clock)?;
        for w in self.windows.open_windows_for(fact.timestamp, clock) {
            self.add(ctx, &fact, &w)?;
        }
        Ok(())
    }

    fn add(&self, ctx: &mut Context<'_>, fact: &Confirmed, w: &Window) -> Result<()> {
        let rev_id = format!("revenue:{}:{}", w.start_ms, fact.currency);
        let mut rev: Revenue = load(ctx, AGGREGATES, &rev_id)?.unwrap_or_default();
        rev.order_count += 1;
        rev.revenue_cents = rev.revenue_cents.saturating_add(fact.total_cents);
        rev.sequence += 1;
        save(ctx, AGGREGATES, &rev_id, &rev)?;
        let event = RevenueWindow {
            window_start: w.start_ms,
            window_end: w.end_ms,
            currency: fact.currency.clone(),
            order_count: rev.order_count,
            revenue_cents: rev.revenue_cents,
        };
        self.emit(ctx, fact, &rev_id, rev.sequence, event)?;

        let top_id = format!("top:{}", w.start_ms);
        let mut top: Top = load(ctx, AGGREGATES, &top_id)?.unwrap_or_default();
        for (product, qty) in &fact.lines {
            *top.units.entry(product.clone()).or_insert(0) += qty;
        }
        top.sequence += 1;
        save(ctx, AGGREGATES, &top_id, &top)?;
        let mut ranked: Vec<(&String, &i64)> = top.units.iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let event = TopProducts {
            window_start: w.start_ms,
            window_end: w.end_ms,
            products: ranked
                .into_iter()
                .take(TOP_N)
                .map(|(p, q)| ProductQuantity {
                    product_id: p.clone(),
                    quantity: *q,
                })
                .collect(),
        };
        self.emit(ctx, fact, &top_id, top.sequence, event)
    }
}

impl Processor for AnalyticsProcessor {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        let r = if record.topic == self.orders {
            self.on_order(ctx, &record)
        } else if record.topic == self.internal {
            self.on_confirmed(ctx, &record)
        } else {
            Err(ProcessorError::UnexpectedTopic(record.id()))
        };
        Ok(r?)
    }
}

/// The `analytics` app.
pub(crate) struct AnalyticsApp;

impl App for AnalyticsApp {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn inputs(&self, topics: &Topics) -> Vec<String> {
        AnalyticsProcessor::inputs(topics)
    }

    fn stores(&self) -> Vec<&'static str> {
        AnalyticsProcessor::stores()
    }

    fn build<'a>(&'a self, b: Build<'a>) -> Building<'a> {
        Box::pin(async move {
            let windows = b.cfg.analytics_windows;
            Ok(clones(AnalyticsProcessor::new(b.wire(), b.topics, windows)))
        })
    }
}
