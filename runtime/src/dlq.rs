//! Dead letters: the one home of the dead-letter topic's name, of the `dlq.*` header names that
//! processors and sinks write and `tributary dlq` reads, and of the origin headers that carry
//! a producer's coordinates across internal hops.
//!
//! One DLQ per source topic (`<topic>.dlq`), with the consumer group that failed the record in
//! a header rather than a topic per group: one place holds every failure of a topic, and
//! `dlq.consumer.group` tells whose it is (a processor's application id or a sink's group).
//!
//! A record a processor re-keys onto an internal topic (the saga's `commands.orders` →
//! `orders-saga` hop) carries a `tributary.origin` header naming the record the producer wrote;
//! a dead letter of such a record goes to the *origin's* DLQ with the origin's topic, partition,
//! offset, key and timestamp in `dlq.source.*`, and the internal record's coordinates in
//! `dlq.hop.*`, so the producer's team finds its own record whichever hop found the fault.

pub const SOURCE_TOPIC: &str = "dlq.source.topic";
pub const SOURCE_PARTITION: &str = "dlq.source.partition";
pub const SOURCE_OFFSET: &str = "dlq.source.offset";
/// The source record's timestamp (ms since the epoch; empty when it had none).
pub const SOURCE_TIMESTAMP: &str = "dlq.source.timestamp";
/// A failed timer's name, on the dead letter of a processor's timer (which has no source record,
/// so no `dlq.source.topic`/`dlq.source.offset`: there is nothing to re-drive).
pub const SOURCE_TIMER: &str = "dlq.source.timer";
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

/// The record its producer wrote, carried by a record of an internal hop: one header (each
/// header costs the local broker about as much as a small record, so one, not five), its value
/// `<topic>\n<partition>\n<offset>\n<timestamp ms or empty>`, followed by `\nk<key bytes>`
/// (or `\nn`: no key) only when the producer's key differs from the carrying record's.
pub const ORIGIN: &str = "tributary.origin";

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
    name.starts_with("dlq.") || name == ORIGIN
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
    /// The origin a record with `headers` and `key` carries, if it carries a well-formed one.
    pub fn carried(headers: &[(String, Vec<u8>)], key: Option<&[u8]>) -> Option<Origin> {
        let value = headers.iter().find(|(k, _)| k == ORIGIN).map(|(_, v)| v)?;
        let mut parts = value.splitn(5, |b| *b == b'\n');
        let mut text = || parts.next().and_then(|p| std::str::from_utf8(p).ok());
        let topic = text()?.to_string();
        let partition = text()?.parse().ok()?;
        let offset = text()?.parse().ok()?;
        let timestamp = text()?;
        let timestamp_ms = if timestamp.is_empty() {
            None
        } else {
            Some(timestamp.parse().ok()?)
        };
        let key = match parts.next() {
            None => key.map(<[u8]>::to_vec),
            Some([b'n']) => None,
            Some([b'k', rest @ ..]) => Some(rest.to_vec()),
            Some(_) => return None,
        };
        if topic.is_empty() {
            return None;
        }
        Some(Origin {
            topic,
            partition,
            offset,
            timestamp_ms,
            key,
        })
    }

    /// The header that carries this origin on a record keyed `key`.
    pub fn header(&self, key: Option<&[u8]>) -> (String, Vec<u8>) {
        let mut v = format!(
            "{}\n{}\n{}\n{}",
            self.topic,
            self.partition,
            self.offset,
            self.timestamp_ms.map(|t| t.to_string()).unwrap_or_default()
        )
        .into_bytes();
        if self.key.as_deref() != key {
            match &self.key {
                None => v.extend_from_slice(b"\nn"),
                Some(k) => {
                    v.extend_from_slice(b"\nk");
                    v.extend_from_slice(k);
                }
            }
        }
        (ORIGIN.to_string(), v)
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

    /// The header names are a wire contract: dead letters already on a topic carry them, and
    /// `tributary dlq` of another version (or a team's own tooling) reads them. A rename here
    /// is a migration, not a refactoring.
    #[test]
    fn header_names_are_the_wire_contract() {
        let names = [
            (SOURCE_TOPIC, "dlq.source.topic"),
            (SOURCE_PARTITION, "dlq.source.partition"),
            (SOURCE_OFFSET, "dlq.source.offset"),
            (SOURCE_TIMESTAMP, "dlq.source.timestamp"),
            (SOURCE_TIMER, "dlq.source.timer"),
            (CONSUMER_GROUP, "dlq.consumer.group"),
            (ERROR_CLASS, "dlq.error.class"),
            (ERROR_MESSAGE, "dlq.error.message"),
            (REJECTION_REASON, "dlq.rejection.reason"),
            (HOP_TOPIC, "dlq.hop.topic"),
            (HOP_PARTITION, "dlq.hop.partition"),
            (HOP_OFFSET, "dlq.hop.offset"),
            (REPLAYED_FROM, "dlq.replayed.from"),
            (ORIGIN, "tributary.origin"),
        ];
        for (constant, wire) in names {
            assert_eq!(constant, wire);
            assert!(is_pipeline_header(constant), "{constant}");
        }
        assert_eq!(dlq_topic("events.orders"), "events.orders.dlq");
        assert!(is_dlq_topic(&dlq_topic("events.orders")));
        assert!(!is_dlq_topic("events.orders"));
    }

    #[test]
    fn origin_round_trips_through_its_header_and_needs_every_coordinate() {
        let o = Origin {
            topic: "commands.orders".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"o-1".to_vec()),
        };
        let trace = ("trace".to_string(), b"x".to_vec());
        // Carried on a record with the producer's key: the key is not repeated.
        let h = vec![trace.clone(), o.header(Some(b"o-1"))];
        assert_eq!(h[1].1, b"commands.orders\n3\n42\n1700000000000".to_vec());
        assert_eq!(Origin::carried(&h, Some(b"o-1")), Some(o.clone()));
        // Carried on a record keyed otherwise (or not keyed), with a key holding newlines.
        let odd = Origin {
            key: Some(b"a\nb".to_vec()),
            ..o.clone()
        };
        assert_eq!(Origin::carried(&[odd.header(None)], None), Some(odd));
        let keyless = Origin {
            key: None,
            timestamp_ms: None,
            ..o.clone()
        };
        assert_eq!(
            Origin::carried(&[keyless.header(Some(b"k"))], Some(b"k")),
            Some(keyless)
        );
        // A missing or garbled header is no origin (the record itself is then its own).
        assert_eq!(Origin::carried(&h[..1], Some(b"o-1")), None);
        for bad in [
            &b"commands.orders\nthree\n42\n"[..],
            b"t\n1",
            b"\n1\n2\n",
            b"t\n1\n2\n\nx",
        ] {
            let h = [(ORIGIN.to_string(), bad.to_vec())];
            assert_eq!(
                Origin::carried(&h, None),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(is_pipeline_header(ORIGIN) && is_pipeline_header(SOURCE_TOPIC));
        assert!(!is_pipeline_header("trace"));
    }
}
