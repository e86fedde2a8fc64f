//! The crate's one error type, and how the runtime should treat each kind.

use std::time::Duration;

use tributary_schemas::CodecError;

/// What can go wrong in a domain processor. Converted into [`tributary_streams::Error`] at the
/// processor boundary: retriable kinds become `Transient` (the runtime retries the record with
/// back-off), the rest become `Rejected` (the record goes to `<input>.dlq` with the reason).
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// The record's bytes are not a readable envelope of the topic (or the registry is down).
    #[error("decoding record {record}: {source}")]
    Decode {
        record: String,
        #[source]
        source: CodecError,
    },
    /// An output could not be encoded (schema not registrable, or the registry is down).
    #[error("encoding a `{topic}` record: {source}")]
    Encode {
        topic: &'static str,
        #[source]
        source: CodecError,
    },
    /// A record without a value: the command and event topics carry no tombstones.
    #[error("record {0} has no value")]
    NoValue(String),
    /// A record on a topic this processor does not read: a wiring mistake.
    #[error("record {0} comes from a topic this processor does not read")]
    UnexpectedTopic(String),
    /// A stored value this version cannot read.
    #[error("state `{store}` key `{key}` is unreadable: {reason}")]
    CorruptState {
        store: &'static str,
        key: String,
        reason: String,
    },
    /// The catalog reader did not reach the end of the inventory events in time; the order is
    /// retried rather than judged on a stale catalog.
    #[error("the product catalog did not catch up with `{topic}` within {waited:?}")]
    CatalogLagging { topic: String, waited: Duration },
    /// Kafka (metadata, topic creation, the catalog reader).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Creating a topic failed.
    #[error("creating topics: {0}")]
    Admin(#[from] tributary_runtime::KafkaError),
    /// The streams runtime failed (stores, commit, configuration).
    #[error(transparent)]
    Streams(#[from] tributary_streams::Error),
    /// The processors were started without what they need (no tokio runtime, bad topics).
    #[error("configuration: {0}")]
    Config(String),
}

impl ProcessorError {
    /// Whether processing the same record again later can succeed.
    pub fn retriable(&self) -> bool {
        match self {
            ProcessorError::Decode { source, .. } | ProcessorError::Encode { source, .. } => {
                source.retriable()
            }
            ProcessorError::CatalogLagging { .. } => true,
            ProcessorError::Kafka(_) => true,
            ProcessorError::Admin(e) => e.retriable(),
            ProcessorError::Streams(e) => e.retriable(),
            ProcessorError::NoValue(_)
            | ProcessorError::UnexpectedTopic(_)
            | ProcessorError::CorruptState { .. }
            | ProcessorError::Config(_) => false,
        }
    }

    /// A short, bounded name for the `dlq.error.class` header.
    pub fn class(&self) -> &'static str {
        match self {
            ProcessorError::Decode { .. } => "decode",
            ProcessorError::Encode { .. } => "encode",
            ProcessorError::NoValue(_) => "no-value",
            ProcessorError::UnexpectedTopic(_) => "routing",
            ProcessorError::CorruptState { .. } => "state",
            ProcessorError::CatalogLagging { .. } => "catalog",
            ProcessorError::Kafka(_) | ProcessorError::Admin(_) => "kafka",
            ProcessorError::Streams(_) => "streams",
            ProcessorError::Config(_) => "config",
        }
    }
}

impl From<ProcessorError> for tributary_streams::Error {
    fn from(e: ProcessorError) -> Self {
        match e {
            ProcessorError::Streams(inner) => inner,
            other if other.retriable() => tributary_streams::Error::transient(other.to_string()),
            other => tributary_streams::Error::rejected(other.class(), other.to_string()),
        }
    }
}

pub type Result<T, E = ProcessorError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry failover is not bad data: an unknown schema id within its grace becomes a
    /// transient error (the runtime retries the record), and a rejection once the grace is over.
    #[test]
    fn an_unknown_schema_id_is_transient_within_its_grace() {
        let decode = |source| ProcessorError::Decode {
            record: "commands.orders/0@5".into(),
            source,
        };
        let waiting = decode(CodecError::UnknownSchemaIdInGrace {
            id: 7,
            unknown_for: Duration::from_secs(1),
            grace: Duration::from_secs(60),
        });
        assert!(waiting.retriable());
        assert!(matches!(
            tributary_streams::Error::from(waiting),
            tributary_streams::Error::Transient(_)
        ));
        let unknown = decode(CodecError::UnknownSchemaId { id: 7 });
        assert!(!unknown.retriable());
        assert!(matches!(
            tributary_streams::Error::from(unknown),
            tributary_streams::Error::Rejected { .. }
        ));
    }
}
