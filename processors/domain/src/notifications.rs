//! The notifications processor: one `NotificationSent` per order outcome and per registration.
//!
//! Reads `events.orders` (`OrderConfirmed`, `OrderCancelled`) and `events.users`
//! (`UserRegistered`), renders a fixed template, and writes `events.notifications` keyed by the
//! user. Exactly one notification per outcome: the store `sent` remembers each order and user
//! notified, so a redelivered or duplicated event sends nothing more. The notification id is
//! derived from what it is about, so even a notification emitted twice after a crash is one
//! notification to a sink that upserts by id.
//!
//! Every notification goes out by email: the user's preferred channel lives on `events.users`,
//! keyed by user, while outcomes are keyed by order, so they meet in different tasks.

use tributary_schemas::domain::{
    NotificationChannel, NotificationEvent, NotificationSent, OrderEvent, UserEvent,
};
use tributary_schemas::types::{Envelope, TopicPayload};
use tributary_streams::{Context, Processor, Record};

use crate::app::{clones, App, Build, Building};
use crate::common::Wire;
use crate::error::{ProcessorError, Result};
use crate::topics::Topics;

const SENT: &str = "sent";

#[derive(Clone)]
pub struct NotificationsProcessor {
    wire: Wire,
    orders: String,
    users: String,
    out: String,
}

impl NotificationsProcessor {
    pub(crate) fn new(wire: Wire, topics: Topics) -> Self {
        NotificationsProcessor {
            wire,
            orders: topics.events_orders(),
            users: topics.events_users(),
            out: topics.events_notifications(),
        }
    }

    pub fn inputs(topics: &Topics) -> Vec<String> {
        vec![topics.events_orders(), topics.events_users()]
    }

    pub fn stores() -> Vec<&'static str> {
        vec![SENT]
    }

    fn send<P: TopicPayload>(
        &self,
        ctx: &mut Context<'_>,
        cause: &Envelope<P>,
        about: &str,
        user_id: &str,
        template: &str,
        text: String,
    ) -> Result<()> {
        let key = format!("{template}:{about}");
        if ctx.get(SENT, key.as_bytes())?.is_some() {
            return Ok(());
        }
        ctx.put(SENT, key.as_bytes(), &[])?;
        let sent = NotificationSent {
            notification_id: key.clone(),
            user_id: user_id.to_string(),
            template_id: template.to_string(),
            channel: NotificationChannel::Email,
            rendered_text: text,
        };
        let env: Envelope<NotificationEvent> =
            Envelope::caused_by(cause, key, sent).with_sequence(1);
        self.wire.emit(ctx, &self.out, user_id, &env)
    }

    fn on_order(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        let env = self.wire.decode::<OrderEvent>(record)?;
        match &env.payload {
            OrderEvent::OrderConfirmed(e) => {
                let text = format!(
                    "Your order {} is confirmed: {} {} will be charged.",
                    e.order_id,
                    e.total_cents as f64 / 100.0,
                    e.currency
                );
                self.send(ctx, &env, &e.order_id, &e.user_id, "order-outcome", text)
            }
            OrderEvent::OrderCancelled(e) => {
                let text = format!(
                    "Your order {} was cancelled ({:?}){}",
                    e.order_id,
                    e.reason,
                    e.detail
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
                self.send(ctx, &env, &e.order_id, &e.user_id, "order-outcome", text)
            }
            OrderEvent::OrderPlaced(_) => Ok(()),
        }
    }

    fn on_user(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        let env = self.wire.decode::<UserEvent>(record)?;
        if let UserEvent::UserRegistered(e) = &env.payload {
            let text = format!("Welcome, {}!", e.display_name);
            return self.send(ctx, &env, &e.user_id, &e.user_id, "welcome", text);
        }
        Ok(())
    }
}

impl Processor for NotificationsProcessor {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        let r = if record.topic == self.orders {
            self.on_order(ctx, &record)
        } else if record.topic == self.users {
            self.on_user(ctx, &record)
        } else {
            Err(ProcessorError::UnexpectedTopic(record.id()))
        };
        Ok(r?)
    }
}

/// The `notifications` app.
pub(crate) struct NotificationsApp;

impl App for NotificationsApp {
    fn name(&self) -> &'static str {
        "notifications"
    }

    fn inputs(&self, topics: &Topics) -> Vec<String> {
        NotificationsProcessor::inputs(topics)
    }

    fn stores(&self) -> Vec<&'static str> {
        NotificationsProcessor::stores()
    }

    fn build<'a>(&'a self, b: Build<'a>) -> Building<'a> {
        Box::pin(async move { Ok(clones(NotificationsProcessor::new(b.wire(), b.topics))) })
    }
}
