//! Dead letters: the one home of the dead-letter topic's name, of the `dlq.*` header names that
//! processors and sinks write and `tributary dlq` reads, and of the origin headers that carry
//! a producer's coordinates across internal hops.
//!
//! One DLQ per source topic (`<topic>.dlq`), with the consumer group that failed the record in
//! a header rather than a topic per group: one place holds every failure of a topic, and
//! `dlq.consumer.group` tells whose it is (a processor's application id or a sink's group).
//!
//! A record a processor re-keys onto an internal topic (the saga's `commands.orders` →
//! `orders-saga` hop) carries `tributary.origin.*` headers naming the record the producer wrote;
//! a dead letter of such a record goes to the *origin's* DLQ with the origin's topic, partition,
//! offset, key and timestamp in `dlq.source.*`, and the internal record's coordinates in
//! `dlq.hop.*`, so the producer's team finds its own record whichever hop found the fault.

pub const SOURCE_TOPIC: &str = "dlq.source.topic";
pub const SOURCE_PARTITION: &str = "dlq.source.partition";
pub const SOURCE_OFFSET: &str = "dlq.source.offset";
/// The source record's timestamp (ms since the epoch; empty when it had none).
pub const SOURCE_TIMESTAMP: &str = "dlq.source.timestamp";
/// The consumer group (processor application id or sink group) that failed the record.
pub const CONSUMER_GROUP: &str = "dlq.consumer.group";
pub const ERROR_CLASS: &str = "dlq.error.class";
pub const ERROR_MESSAGE: &str = "dlq.error.message";
/// A refused command's rejection reason (`ValidationFailed`, `NotFound`, ...).
pub const REJECTION_REASON: &str = "dlq.rejection.reason";
/// The internal record that failed, when it is not the producer's own (an internal hop).
pub const HOP_TOPIC: &str = "dlq.hop.topic";
pub const HOP_PARTITION: &str = "dlq.hop.partition";
pub const HOP_OFFSET: &str = "dlq.hop.offset";
/// On a record `tributary dlq replay` re-drove: `<dlq topic>/<partition>@<offset>`.
pub const REPLAYED_FROM: &str = "dlq.replayed.from";
/// The error class of a command a processor refused for a business reason: an answer (a
/// `CommandRejected` event) was given, so it is not re-driven.
pub const REJECTED_CLASS: &str = "rejected";

pub const ORIGIN_TOPIC: &str = "tributary.origin.topic";
pub const ORIGIN_PARTITION: &str = "tributary.origin.partition";
pub const ORIGIN_OFFSET: &str = "tributary.origin.offset";
pub const ORIGIN_TIMESTAMP: &str = "tributary.origin.timestamp";
/// The producer's key, when it had one (absent: no key).
pub const ORIGIN_KEY: &str = "tributary.origin.key";

/// The DLQ topic of a source topic.
pub fn dlq_topic(source: &str) -> String {
    format!("{source}.dlq")
}

/// Whether `topic` is a dead-letter topic.
pub fn is_dlq_topic(topic: &str) -> bool {
    topic.ends_with(".dlq")
}

/// Whether a header is one this module defines (a dead letter's or an origin's), as opposed to
/// the producer's own.
pub fn is_pipeline_header(name: &str) -> bool {
    name.starts_with("dlq.") || name.starts_with("tributary.origin.")
}

/// The record a producer wrote: where it is and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
}

impl Origin {
    /// The origin that `headers` carry, if they carry a complete one.
    pub fn from_headers(headers: &[(String, Vec<u8>)]) -> Option<Origin> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
        };
        let text = |name: &str| get(name).and_then(|v| std::str::from_utf8(v).ok());
        Some(Origin {
            topic: text(ORIGIN_TOPIC)?.to_string(),
            partition: text(ORIGIN_PARTITION)?.parse().ok()?,
            offset: text(ORIGIN_OFFSET)?.parse().ok()?,
            timestamp_ms: text(ORIGIN_TIMESTAMP).and_then(|t| t.parse().ok()),
            key: get(ORIGIN_KEY).map(<[u8]>::to_vec),
        })
    }

    /// The headers that carry this origin onto the next hop.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut h = vec![
            (ORIGIN_TOPIC.to_string(), self.topic.as_bytes().to_vec()),
            (
                ORIGIN_PARTITION.to_string(),
                self.partition.to_string().into_bytes(),
            ),
            (
                ORIGIN_OFFSET.to_string(),
                self.offset.to_string().into_bytes(),
            ),
        ];
        if let Some(t) = self.timestamp_ms {
            h.push((ORIGIN_TIMESTAMP.to_string(), t.to_string().into_bytes()));
        }
        if let Some(k) = &self.key {
            h.push((ORIGIN_KEY.to_string(), k.clone()));
        }
        h
    }

    /// The `dlq.source.*` headers naming this record.
    pub fn source_headers(&self) -> Vec<(String, Vec<u8>)> {
        vec![
            (SOURCE_TOPIC.to_string(), self.topic.as_bytes().to_vec()),
            (
                SOURCE_PARTITION.to_string(),
                self.partition.to_string().into_bytes(),
            ),
            (
                SOURCE_OFFSET.to_string(),
                self.offset.to_string().into_bytes(),
            ),
            (
                SOURCE_TIMESTAMP.to_string(),
                self.timestamp_ms
                    .map(|t| t.to_string())
                    .unwrap_or_default()
                    .into_bytes(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_round_trips_through_headers_and_needs_every_coordinate() {
        let o = Origin {
            topic: "commands.orders".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"o-1".to_vec()),
        };
        let mut h = vec![("trace".to_string(), b"x".to_vec())];
        h.extend(o.headers());
        assert_eq!(Origin::from_headers(&h), Some(o.clone()));
        let keyless = Origin { key: None, ..o };
        assert_eq!(Origin::from_headers(&keyless.headers()), Some(keyless));
        // A header set with a missing or garbled coordinate is no origin (the record itself
        // is then its own origin).
        assert_eq!(Origin::from_headers(&h[..2]), None);
        let mut bad = h.clone();
        bad[2].1 = b"three".to_vec();
        assert_eq!(Origin::from_headers(&bad), None);
        assert!(is_pipeline_header(ORIGIN_KEY) && is_pipeline_header(SOURCE_TOPIC));
        assert!(!is_pipeline_header("trace"));
    }
}
