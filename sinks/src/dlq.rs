//! The dead-letter topic: where a record goes when no retry can make it apply.
//!
//! A dead letter keeps the original key and value untouched (so it can be replayed once the
//! cause is fixed) and says where it came from and why in headers. The runner awaits each
//! delivery before it stores the source offset, so a record is never both skipped and absent
//! from the DLQ. The source record's own headers and timestamp are kept too, and a header
//! names the consumer group that failed it: one DLQ per source topic (`<topic>.dlq`) with the
//! group in a header, rather than a topic per group, so that one place holds every failure of
//! a topic and `dlq.consumer.group` tells whose it is.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

// The header names and the topic's name have one home, `tributary_runtime::dlq`, shared with
// the processors and `tributary dlq`.
use tributary_runtime::dlq::{
    dlq_topic, CONSUMER_GROUP, ERROR_CLASS, ERROR_MESSAGE, SOURCE_OFFSET, SOURCE_PARTITION,
    SOURCE_TIMESTAMP, SOURCE_TOPIC,
};

/// Why a record was dead-lettered; the value of the `dlq.error.class` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The value could not be decoded (bad framing, unknown schema, corrupt datum...).
    Decode,
    /// The value decoded, but the projection found the event invalid.
    Projection,
    /// The store refused the record's changes as invalid (constraint or data error).
    Rejected,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Decode => "decode",
            ErrorClass::Projection => "projection",
            ErrorClass::Rejected => "rejected",
        }
    }
}

/// A record on its way to the DLQ.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub class: ErrorClass,
    pub message: String,
    /// The source record's timestamp, when it had one.
    pub timestamp_ms: Option<i64>,
    /// The source record's headers, kept as they were (before the `dlq.*` ones).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The consumer group that failed the record.
    pub group: String,
}

/// Why a dead letter could not be delivered; always worth a retry (the record stays unacked).
#[derive(Debug, thiserror::Error)]
#[error("delivering the dead letter of {topic}/{partition}@{offset} failed: {source}")]
pub struct DlqError {
    topic: String,
    partition: i32,
    offset: i64,
    #[source]
    source: rdkafka::error::KafkaError,
}

impl DlqError {
    pub fn retriable(&self) -> bool {
        true
    }
}

/// Produces dead letters.
pub struct DeadLetterQueue {
    producer: FutureProducer,
}

impl DeadLetterQueue {
    pub fn new(brokers: &str) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = tributary_runtime::kafka::client_config(brokers)
            // A dead letter must not be lost or duplicated out of order by producer retries.
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self { producer })
    }

    /// Sends one dead letter and waits until the broker has it.
    pub async fn send(&self, letter: &DeadLetter) -> Result<(), DlqError> {
        let topic = dlq_topic(&letter.topic);
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let timestamp = letter
            .timestamp_ms
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mut headers = OwnedHeaders::new();
        for (key, value) in &letter.headers {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: value.as_deref(),
            });
        }
        let headers = headers
            .insert(Header {
                key: SOURCE_TOPIC,
                value: Some(letter.topic.as_bytes()),
            })
            .insert(Header {
                key: SOURCE_PARTITION,
                value: Some(partition.as_bytes()),
            })
            .insert(Header {
                key: SOURCE_OFFSET,
                value: Some(offset.as_bytes()),
            })
            .insert(Header {
                key: ERROR_CLASS,
                value: Some(letter.class.as_str().as_bytes()),
            })
            .insert(Header {
                key: ERROR_MESSAGE,
                value: Some(letter.message.as_bytes()),
            })
            .insert(Header {
                key: SOURCE_TIMESTAMP,
                value: Some(timestamp.as_bytes()),
            })
            .insert(Header {
                key: CONSUMER_GROUP,
                value: Some(letter.group.as_bytes()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(k) = &letter.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &letter.value {
            record = record.payload(v.as_slice());
        }
        if let Some(t) = letter.timestamp_ms {
            record = record.timestamp(t);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(source, _)| DlqError {
                topic: letter.topic.clone(),
                partition: letter.partition,
                offset: letter.offset,
                source,
            })
    }
}
