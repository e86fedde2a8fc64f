//! Topic names, with an optional prefix so that tests (or tenants) get their own set, and the
//! crate's internal topics. The public topics' names have one home: each payload type's
//! `TopicPayload::TOPIC` in `tributary-schemas`.

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use tributary_runtime::kafka::{
    client_config, ensure_topic_with, partition_count, TopicOptions, TopicSpec,
};

use tributary_schemas::domain::{
    AnalyticsEvent, InventoryCommand, InventoryEvent, NotificationEvent, OrderCommand, OrderEvent,
    PaymentCommand, PaymentEvent, RejectionEvent, UserCommand, UserEvent,
};
use tributary_schemas::types::TopicPayload;

use crate::error::{ProcessorError, Result};

/// The pipeline's topic names, each `<prefix><name>`; an empty prefix gives the real names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    pub prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.to_string(),
        }
    }

    pub fn name(&self, base: &str) -> String {
        tributary_runtime::topics::prefixed(&self.prefix, base)
    }

    pub fn commands_users(&self) -> String {
        self.name(UserCommand::TOPIC)
    }
    pub fn commands_inventory(&self) -> String {
        self.name(InventoryCommand::TOPIC)
    }
    pub fn commands_orders(&self) -> String {
        self.name(OrderCommand::TOPIC)
    }
    pub fn commands_payments(&self) -> String {
        self.name(PaymentCommand::TOPIC)
    }
    pub fn events_users(&self) -> String {
        self.name(UserEvent::TOPIC)
    }
    pub fn events_inventory(&self) -> String {
        self.name(InventoryEvent::TOPIC)
    }
    pub fn events_orders(&self) -> String {
        self.name(OrderEvent::TOPIC)
    }
    pub fn events_payments(&self) -> String {
        self.name(PaymentEvent::TOPIC)
    }
    pub fn events_notifications(&self) -> String {
        self.name(NotificationEvent::TOPIC)
    }
    pub fn events_rejections(&self) -> String {
        self.name(RejectionEvent::TOPIC)
    }

    /// Every inventory command, re-keyed onto one partition: the stock ledger. A reservation
    /// must see every product of an order at once (all lines or none), and one partition is one
    /// task, so the whole ledger lives in one task.
    pub fn inventory_ledger(&self) -> String {
        self.name("internal.inventory-ledger")
    }

    /// Order commands re-partitioned by the runtime's own partitioner (murmur2 on the order
    /// id), the one the replies on `events.inventory` / `events.payments` go through, so that an
    /// order's commands and replies meet in the same saga task whatever client produced them.
    pub fn orders_saga(&self) -> String {
        self.name("internal.orders-saga")
    }

    /// User commands re-keyed by user id with the runtime's partitioner: one user's commands,
    /// and the answers to its email claims, meet in one task.
    pub fn users_by_id(&self) -> String {
        self.name("internal.users")
    }

    /// Email claims keyed by the normalized address: one task decides each address, which is
    /// what makes emails unique across partitions.
    pub fn users_by_email(&self) -> String {
        self.name("internal.users-emails")
    }

    pub fn events_analytics(&self) -> String {
        self.name(AnalyticsEvent::TOPIC)
    }

    /// Confirmed orders, all on one partition: the analytics' windows are complete in one task.
    pub fn analytics(&self) -> String {
        self.name("internal.analytics")
    }

    /// Every topic the domain processors read or write, with its partition count
    /// (`partitions`, or 1 for the ledger and the analytics).
    pub fn all(&self, partitions: i32) -> Vec<(String, i32)> {
        let mut all: Vec<(String, i32)> = [
            self.commands_users(),
            self.commands_inventory(),
            self.commands_orders(),
            self.commands_payments(),
            self.events_users(),
            self.events_inventory(),
            self.events_orders(),
            self.events_payments(),
            self.events_notifications(),
            self.events_rejections(),
            self.events_analytics(),
            self.orders_saga(),
            self.users_by_id(),
            self.users_by_email(),
        ]
        .into_iter()
        .map(|t| (t, partitions))
        .collect();
        all.push((self.inventory_ledger(), 1));
        all.push((self.analytics(), 1));
        all
    }

    /// Creates every topic that is missing (existing ones are left as they are): the command
    /// and event topics with infinite retention (they are the log the stores are views of),
    /// the internal ones with the broker's default.
    pub async fn ensure(&self, brokers: &str, partitions: i32) -> Result<()> {
        let log: Vec<String> = tributary_schemas::types::ALL_TOPICS
            .iter()
            .map(|(base, _)| self.name(base))
            .collect();
        for (topic, n) in self.all(partitions) {
            let spec = TopicSpec {
                partitions: n,
                compacted: false,
            };
            let options = if log.contains(&topic) {
                TopicOptions::log(1)
            } else {
                TopicOptions::default()
            };
            ensure_topic_with(brokers, &topic, spec, options).await?;
        }
        Ok(())
    }
}

/// The partition count of each of `topics`, read from the broker.
pub(crate) fn partition_counts(brokers: &str, topics: &[String]) -> Result<Vec<(String, i32)>> {
    let probe: BaseConsumer = client_config(brokers).create()?;
    let mut out = Vec::new();
    for topic in topics {
        let n = partition_count(&probe, topic, Duration::from_secs(10))?;
        out.push((topic.clone(), n));
    }
    Ok(out)
}

/// Fails unless every topic of `topics` exists with the same partition count: the saga and the
/// payments processor rely on an order's records landing on the same partition number
/// everywhere.
pub(crate) fn check_co_partitioned(brokers: &str, topics: &[String]) -> Result<i32> {
    let counts = partition_counts(brokers, topics)?;
    let first = counts.first().map(|(_, n)| *n).unwrap_or(0);
    if first == 0 || counts.iter().any(|(_, n)| *n != first) {
        return Err(ProcessorError::Config(format!(
            "these topics must exist with equal partition counts: {counts:?}"
        )));
    }
    Ok(first)
}
