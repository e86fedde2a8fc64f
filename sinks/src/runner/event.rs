//! Which event topics a sink reads, and the decoded record a projection sees.
//!
//! Decoding lives here, once, so that projections are plain functions of a typed event and can be
//! tested without a broker or a registry.

use tributary_schemas::types::{
    AnalyticsEvent, AnalyticsEventEnvelope, InventoryEvent, InventoryEventEnvelope,
    NotificationEvent, NotificationEventEnvelope, OrderEvent, OrderEventEnvelope, PaymentEvent,
    PaymentEventEnvelope, TopicPayload, UserEvent, UserEventEnvelope,
};
use tributary_schemas::{Codec, CodecError};

/// An event stream: the logical topic a record is read as. The physical topic name is the
/// stream's own name in production and a unique name in tests (see
/// [`crate::runner::SourceTopic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventStream {
    Users,
    Inventory,
    Orders,
    Payments,
    Notifications,
    Analytics,
}

impl EventStream {
    /// The production topic of this stream.
    pub fn topic(self) -> &'static str {
        match self {
            EventStream::Users => UserEvent::TOPIC,
            EventStream::Inventory => InventoryEvent::TOPIC,
            EventStream::Orders => OrderEvent::TOPIC,
            EventStream::Payments => PaymentEvent::TOPIC,
            EventStream::Notifications => NotificationEvent::TOPIC,
            EventStream::Analytics => AnalyticsEvent::TOPIC,
        }
    }

    /// Decodes a record value of this stream.
    pub async fn decode(self, codec: &Codec, bytes: &[u8]) -> Result<Event, CodecError> {
        Ok(match self {
            EventStream::Users => Event::User(codec.decode(bytes).await?),
            EventStream::Inventory => Event::Inventory(codec.decode(bytes).await?),
            EventStream::Orders => Event::Order(codec.decode(bytes).await?),
            EventStream::Payments => Event::Payment(codec.decode(bytes).await?),
            EventStream::Notifications => Event::Notification(codec.decode(bytes).await?),
            EventStream::Analytics => Event::Analytics(codec.decode(bytes).await?),
        })
    }
}

/// One decoded event of any stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    User(UserEventEnvelope),
    Inventory(InventoryEventEnvelope),
    Order(OrderEventEnvelope),
    Payment(PaymentEventEnvelope),
    Notification(NotificationEventEnvelope),
    Analytics(AnalyticsEventEnvelope),
}

/// A record whose value is null: the producer asks for the entity keyed by `key` to be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub stream: EventStream,
    pub key: String,
    /// The record's timestamp (ms since the epoch), for freshness.
    pub timestamp_ms: i64,
}

/// Version carried by changes that come from tombstones. A tombstone has no envelope and so no
/// sequence; it is the producer's final word on the key, so it wins over any version.
pub const TOMBSTONE_VERSION: i64 = i64::MAX;
