//! The crate's one error type.

/// Everything that can go wrong in the runtime or in a processor.
///
/// `retriable()` decides what the engine does with a failed record: a retriable error is retried
/// with back-off (the record is not lost and nothing of the failed attempt is kept); any other
/// error from `process` sends the record to the dead-letter topic `<input>.dlq` and the task moves
/// on. Errors outside record processing (broker, disk) stop the app when they are not retriable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The processor rejected the record for good (bad content, broken invariant). `class` is a
    /// short, bounded name that ends up in the `dlq.error.class` header.
    #[error("record rejected ({class}): {message}")]
    Rejected { class: String, message: String },
    /// The processor hit a condition that may clear up (a service down, a lock held).
    #[error("transient failure: {0}")]
    Transient(String),
    /// Decoding the record's bytes failed; retriable only when the schema registry was down.
    #[error("decoding failed: {0}")]
    Decode(#[from] tributary_schemas::CodecError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka admin: {0}")]
    Admin(#[from] tributary_runtime::KafkaError),
    #[error("state store `{store}`: {message}")]
    Store { store: String, message: String },
    #[error("state directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no state store named `{0}` in this topology")]
    UnknownStore(String),
    #[error("configuration: {0}")]
    Config(String),
    /// The processor panicked on the record (or timer); the record goes to the dead-letter topic
    /// with class `panic` and the app goes on.
    #[error("processor panicked: {0}")]
    Panic(String),
    /// A changelog record the engine cannot read: the topic holds something it did not write.
    #[error("changelog `{topic}` partition {partition} offset {offset}: {message}")]
    CorruptChangelog {
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
}

impl Error {
    /// Shorthand for a permanent rejection of the record (it goes to the DLQ).
    pub fn rejected(class: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Rejected {
            class: class.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Error::Transient(message.into())
    }

    pub(crate) fn store(store: &str, e: impl std::fmt::Display) -> Self {
        Error::Store {
            store: store.to_string(),
            message: e.to_string(),
        }
    }

    /// Whether trying the same thing again can succeed.
    pub fn retriable(&self) -> bool {
        match self {
            Error::Transient(_) => true,
            Error::Decode(e) => e.retriable(),
            Error::Kafka(e) => tributary_runtime::kafka::is_retriable(e),
            Error::Admin(e) => e.retriable(),
            Error::Rejected { .. }
            | Error::Store { .. }
            | Error::Io { .. }
            | Error::UnknownStore(_)
            | Error::Config(_)
            | Error::Panic(_)
            | Error::CorruptChangelog { .. } => false,
        }
    }

    /// A short, bounded name for the `dlq.error.class` header and logs.
    pub fn class(&self) -> &str {
        match self {
            Error::Rejected { class, .. } => class,
            Error::Transient(_) => "transient",
            Error::Decode(_) => "decode",
            Error::Kafka(_) | Error::Admin(_) => "kafka",
            Error::Store { .. } | Error::Io { .. } => "store",
            Error::UnknownStore(_) | Error::Config(_) => "config",
            Error::CorruptChangelog { .. } => "changelog",
            Error::Panic(_) => crate::dlq::PANIC_CLASS,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(Error::transient("db down").retriable());
        assert!(!Error::rejected("validation", "negative qty").retriable());
        assert_eq!(Error::rejected("validation", "x").class(), "validation");
        let decode = Error::from(tributary_schemas::CodecError::TooShort { len: 2 });
        assert!(!decode.retriable());
        assert_eq!(decode.class(), "decode");
        // An unknown schema id is retried while its grace lasts, dead-lettered after.
        use std::time::Duration;
        let waiting = Error::from(tributary_schemas::CodecError::UnknownSchemaIdInGrace {
            id: 7,
            unknown_for: Duration::from_secs(1),
            grace: Duration::from_secs(60),
        });
        assert!(waiting.retriable());
        let unknown = Error::from(tributary_schemas::CodecError::UnknownSchemaId { id: 7 });
        assert!(!unknown.retriable());
    }
}
