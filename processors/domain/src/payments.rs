//! The payments processor: authorize, capture, refund.
//!
//! Reads `commands.payments` and writes `events.payments`. The saga sends every command of
//! one payment keyed by the order id, so they share a partition and arrive in the order sent;
//! events are keyed by the order id too (the saga reads them co-partitioned with the order),
//! with the payment as aggregate and its own `sequence`.
//!
//! Authorization follows a deterministic [`DeclineRule`] so that declines can be produced on
//! purpose. A refund of a payment that is only authorized releases the hold (it is what the saga
//! sends when it gives up waiting); a refund of a declined payment is a no-op, so compensation
//! can be sent without knowing whether the authorization ever happened.
//!
//! Stores: `payments` (payment id → [`Payment`]), `seen` (command ids).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tributary_schemas::domain::{
    AuthorizePayment, CapturePayment, DeclineReason, PaymentAuthorized, PaymentCaptured,
    PaymentCommand, PaymentDeclined, PaymentEvent, PaymentRefunded, RefundPayment, RejectionReason,
};
use tributary_schemas::types::Envelope;
use tributary_schemas::Codec;
use tributary_streams::{Context, Processor, Record};

use crate::app::{clones, App, Build, Building};
use crate::common::{first_time, load, save, Wire};
use crate::error::{ProcessorError, Result};
use crate::topics::Topics;

pub(crate) const PAYMENTS: &str = "payments";

/// Which authorizations are declined. Deterministic, so a workload decides its own failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclineRule {
    /// Users whose id ends with this are declined (insufficient funds).
    pub user_suffix: Option<String>,
    /// Amounts above this are declined (limit exceeded).
    pub max_amount_cents: Option<i64>,
}

impl Default for DeclineRule {
    /// The load generator's declining cohort: user ids ending in `-declines`.
    fn default() -> Self {
        DeclineRule {
            user_suffix: Some("-declines".into()),
            max_amount_cents: None,
        }
    }
}

impl DeclineRule {
    /// Never declines.
    pub fn none() -> Self {
        DeclineRule {
            user_suffix: None,
            max_amount_cents: None,
        }
    }

    /// Why `user_id` paying `amount_cents` is declined, or `None` when it is authorized.
    pub fn decide(&self, user_id: &str, amount_cents: i64) -> Option<(DeclineReason, String)> {
        if let Some(suffix) = &self.user_suffix {
            if !suffix.is_empty() && user_id.ends_with(suffix.as_str()) {
                return Some((
                    DeclineReason::InsufficientFunds,
                    format!("user ids ending in `{suffix}` are declined"),
                ));
            }
        }
        if let Some(max) = self.max_amount_cents {
            if amount_cents > max {
                return Some((
                    DeclineReason::LimitExceeded,
                    format!("amount {amount_cents} is above the limit {max}"),
                ));
            }
        }
        if amount_cents <= 0 {
            return Some((
                DeclineReason::Other,
                format!("amount {amount_cents} is not positive"),
            ));
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    Authorized,
    Declined,
    Captured,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub payment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub authorization_code: Option<String>,
    pub status: PaymentStatus,
    /// Sequence of the payment's last event.
    pub sequence: i64,
}

/// The processor of one task; see the module doc.
#[derive(Clone)]
pub struct PaymentsProcessor {
    wire: Wire,
    topics: Topics,
    rule: DeclineRule,
    commands: String,
    events: String,
}

impl PaymentsProcessor {
    pub(crate) fn new(wire: Wire, topics: Topics, rule: DeclineRule) -> Self {
        PaymentsProcessor {
            wire,
            rule,
            commands: topics.commands_payments(),
            events: topics.events_payments(),
            topics,
        }
    }

    /// A processor outside [`DomainApp::run`](crate::DomainApp::run), encoding and decoding
    /// with `codec`. For tests and embedding, e.g. under `tributary_streams::testing::TestDriver`
    /// with the stores of [`PaymentsProcessor::stores`].
    pub fn with_codec(codec: Arc<Codec>, topics: Topics, rule: DeclineRule) -> Self {
        PaymentsProcessor::new(Wire::new(codec), topics, rule)
    }

    pub fn inputs(topics: &Topics) -> Vec<String> {
        vec![topics.commands_payments()]
    }

    pub fn stores() -> Vec<&'static str> {
        vec![PAYMENTS, crate::common::SEEN]
    }

    fn emit(
        &self,
        ctx: &mut Context<'_>,
        cause: &Envelope<PaymentCommand>,
        p: &Payment,
        event: impl Into<PaymentEvent>,
    ) -> Result<()> {
        let env: Envelope<PaymentEvent> =
            Envelope::caused_by(cause, p.payment_id.clone(), event).with_sequence(p.sequence);
        self.wire.emit(ctx, &self.events, &p.order_id, &env)
    }

    fn reject(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<PaymentCommand>,
        reason: RejectionReason,
        message: String,
    ) -> Result<()> {
        self.wire
            .reject(ctx, &self.topics, env, &self.commands, reason, message)
    }

    /// The answer a payment gives while it is its last word: authorized or declined, from
    /// its state alone, so that the first answer and a repeat are the same event.
    fn answer(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<PaymentCommand>,
        p: &Payment,
    ) -> Result<()> {
        match p.status {
            PaymentStatus::Authorized => {
                let event = PaymentAuthorized {
                    payment_id: p.payment_id.clone(),
                    order_id: p.order_id.clone(),
                    user_id: p.user_id.clone(),
                    amount_cents: p.amount_cents,
                    currency: p.currency.clone(),
                    authorization_code: p.authorization_code.clone().unwrap_or_default(),
                };
                self.emit(ctx, env, p, event)
            }
            PaymentStatus::Declined => {
                // The rule is deterministic, so the reason is the one given first.
                let (reason, detail) = self
                    .rule
                    .decide(&p.user_id, p.amount_cents)
                    .unwrap_or((DeclineReason::Other, "declined".to_string()));
                let event = PaymentDeclined {
                    payment_id: p.payment_id.clone(),
                    order_id: p.order_id.clone(),
                    user_id: p.user_id.clone(),
                    amount_cents: p.amount_cents,
                    currency: p.currency.clone(),
                    reason,
                    detail: Some(detail),
                };
                self.emit(ctx, env, p, event)
            }
            PaymentStatus::Captured | PaymentStatus::Refunded => Ok(()),
        }
    }

    fn authorize(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<PaymentCommand>,
        c: &AuthorizePayment,
    ) -> Result<()> {
        if let Some(p) = load::<Payment>(ctx, PAYMENTS, &c.payment_id)? {
            // The same payment asked for twice: the first answer stands, and is given again
            // while it is the payment's last word (same sequence, so a duplicate for readers):
            // the saga may not have seen it (see the inventory's reservation requests).
            if p.sequence != 1 {
                return Ok(());
            }
            return self.answer(ctx, env, &p);
        }
        let authorized = self.rule.decide(&c.user_id, c.amount_cents).is_none();
        let p = Payment {
            payment_id: c.payment_id.clone(),
            order_id: c.order_id.clone(),
            user_id: c.user_id.clone(),
            amount_cents: c.amount_cents,
            currency: c.currency.clone(),
            // Derived from the payment id: a replayed authorization gets the same code.
            authorization_code: authorized.then(|| format!("AUTH-{}", c.payment_id)),
            status: if authorized {
                PaymentStatus::Authorized
            } else {
                PaymentStatus::Declined
            },
            sequence: 1,
        };
        save(ctx, PAYMENTS, &p.payment_id, &p)?;
        self.answer(ctx, env, &p)
    }

    fn capture(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<PaymentCommand>,
        c: &CapturePayment,
    ) -> Result<()> {
        let Some(mut p) = load::<Payment>(ctx, PAYMENTS, &c.payment_id)? else {
            let msg = format!("payment `{}` does not exist", c.payment_id);
            return self.reject(ctx, env, RejectionReason::NotFound, msg);
        };
        match p.status {
            PaymentStatus::Captured => Ok(()),
            PaymentStatus::Authorized => {
                p.status = PaymentStatus::Captured;
                p.sequence += 1;
                save(ctx, PAYMENTS, &p.payment_id, &p)?;
                let event = PaymentCaptured {
                    payment_id: p.payment_id.clone(),
                    order_id: p.order_id.clone(),
                    authorization_code: p.authorization_code.clone().unwrap_or_default(),
                    amount_cents: p.amount_cents,
                    currency: p.currency.clone(),
                };
                self.emit(ctx, env, &p, event)
            }
            PaymentStatus::Declined | PaymentStatus::Refunded => {
                let msg = format!("payment `{}` is {:?}", c.payment_id, p.status);
                self.reject(ctx, env, RejectionReason::InvalidState, msg)
            }
        }
    }

    fn refund(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<PaymentCommand>,
        c: &RefundPayment,
    ) -> Result<()> {
        let Some(mut p) = load::<Payment>(ctx, PAYMENTS, &c.payment_id)? else {
            let msg = format!("payment `{}` does not exist", c.payment_id);
            return self.reject(ctx, env, RejectionReason::NotFound, msg);
        };
        match p.status {
            // Nothing was taken, or it was already given back.
            PaymentStatus::Declined | PaymentStatus::Refunded => Ok(()),
            PaymentStatus::Authorized | PaymentStatus::Captured => {
                p.status = PaymentStatus::Refunded;
                p.sequence += 1;
                save(ctx, PAYMENTS, &p.payment_id, &p)?;
                let event = PaymentRefunded {
                    payment_id: p.payment_id.clone(),
                    order_id: p.order_id.clone(),
                    amount_cents: p.amount_cents,
                    currency: p.currency.clone(),
                    reason: c.reason.clone(),
                };
                self.emit(ctx, env, &p, event)
            }
        }
    }
}

impl Processor for PaymentsProcessor {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        if record.topic != self.commands {
            return Err(ProcessorError::UnexpectedTopic(record.id()).into());
        }
        let env = self.wire.decode::<PaymentCommand>(&record)?;
        if !first_time(ctx, &env.id)? {
            return Ok(());
        }
        let r = match &env.payload {
            PaymentCommand::AuthorizePayment(c) => self.authorize(ctx, &env, c),
            PaymentCommand::CapturePayment(c) => self.capture(ctx, &env, c),
            PaymentCommand::RefundPayment(c) => self.refund(ctx, &env, c),
        };
        Ok(r?)
    }
}

/// The `payments` app.
pub(crate) struct PaymentsApp;

impl App for PaymentsApp {
    fn name(&self) -> &'static str {
        "payments"
    }

    fn inputs(&self, topics: &Topics) -> Vec<String> {
        PaymentsProcessor::inputs(topics)
    }

    fn stores(&self) -> Vec<&'static str> {
        PaymentsProcessor::stores()
    }

    fn build<'a>(&'a self, b: Build<'a>) -> Building<'a> {
        Box::pin(async move {
            let p = PaymentsProcessor::new(b.wire(), b.topics, b.cfg.decline.clone());
            Ok(clones(p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decline_rule_is_deterministic_and_configurable() {
        let rule = DeclineRule::default();
        assert!(rule.decide("user-00001", 1000).is_none());
        assert_eq!(
            rule.decide("user-00002-declines", 1000).map(|d| d.0),
            Some(DeclineReason::InsufficientFunds)
        );
        assert_eq!(
            rule.decide("user-00001", 0).map(|d| d.0),
            Some(DeclineReason::Other)
        );
        let capped = DeclineRule {
            user_suffix: None,
            max_amount_cents: Some(500),
        };
        assert!(capped.decide("x-declines", 500).is_none());
        assert_eq!(
            capped.decide("x", 501).map(|d| d.0),
            Some(DeclineReason::LimitExceeded)
        );
        assert!(DeclineRule::none().decide("x-declines", 1).is_none());
    }
}
