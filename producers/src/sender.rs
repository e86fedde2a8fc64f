//! Encodes commands and produces them, returning once the broker has acknowledged each.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_runtime::kafka::client_config;
use tributary_schemas::domain::{CommandRejected, RejectionEvent, RejectionReason};
use tributary_schemas::types::{Envelope, TopicPayload};
use tributary_schemas::{Codec, CodecError};

use crate::command::{Command, CommandError};

/// Why a command could not be sent. `retriable()` says whether sending it again can succeed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("producing to `{topic}` failed: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl SendError {
    pub fn retriable(&self) -> bool {
        match self {
            SendError::Command(_) => false,
            SendError::Codec(e) => e.retriable(),
            // librdkafka already retried within its delivery timeout; a caller may try again.
            SendError::Kafka { .. } => true,
        }
    }
}

/// Where a command landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// Sends commands to their topics (optionally prefixed, to isolate a test or a tenant).
#[derive(Clone)]
pub struct CommandSender {
    producer: FutureProducer,
    codec: Arc<Codec>,
    topic_prefix: String,
}

impl CommandSender {
    pub fn new(
        brokers: &str,
        codec: Arc<Codec>,
        topic_prefix: &str,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = client_config(brokers)
            // Every in-sync replica has the record before `send` returns.
            .set("acks", "all")
            // Retries keep per-key order: one aggregate's commands never overtake each other.
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5")
            .create()?;
        Ok(CommandSender {
            producer,
            codec,
            topic_prefix: topic_prefix.to_string(),
        })
    }

    /// The topic a command goes to.
    pub fn topic_for(&self, command: &Command) -> String {
        tributary_runtime::topics::prefixed(&self.topic_prefix, command.topic())
    }

    /// Encodes and produces `command` keyed by its aggregate id; returns after the broker's ack.
    pub async fn send(&self, command: &Command) -> Result<Delivery, SendError> {
        let topic = self.topic_for(command);
        let (value, schema) = command.to_avro()?;
        let bytes = self.codec.encode_value(&topic, schema, value).await?;
        self.produce(topic, command.aggregate_id(), &bytes).await
    }

    /// Produces one record and waits for the broker's acknowledgement.
    async fn produce(&self, topic: String, key: &str, bytes: &[u8]) -> Result<Delivery, SendError> {
        let record = FutureRecord::to(&topic).key(key).payload(bytes);
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(d) => Ok(Delivery {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((source, _)) => Err(SendError::Kafka { topic, source }),
        }
    }

    /// Records on `events.rejections` that `command` was refused before it reached its topic
    /// (e.g. over the user's rate), so that the refusal is a fact of the log like any other.
    pub async fn reject(
        &self,
        command: &Command,
        reason: RejectionReason,
        message: String,
    ) -> Result<Delivery, SendError> {
        let topic = tributary_runtime::topics::prefixed(&self.topic_prefix, RejectionEvent::TOPIC);
        let rejected = CommandRejected {
            command_topic: self.topic_for(command),
            command_id: command.id().to_string(),
            command_type: command.name().to_string(),
            reason,
            message,
        };
        // Each rejection is its own aggregate (the command), so sequence 1 is its only version.
        let mut env: Envelope<RejectionEvent> =
            Envelope::new(command.id(), command.correlation_id(), rejected).with_sequence(1);
        env.causation_id = Some(command.id().to_string());
        let bytes = self.codec.encode(&env).await?;
        self.produce(topic, command.aggregate_id(), &bytes).await
    }
}
