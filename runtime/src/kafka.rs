//! Kafka clients and topic administration.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

/// Errors talking to Kafka. `retriable()` says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic `{topic}` failed: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

impl KafkaError {
    pub fn retriable(&self) -> bool {
        match self {
            KafkaError::Client(e) => e
                .rdkafka_error_code()
                .map(|c| {
                    matches!(
                        c,
                        RDKafkaErrorCode::BrokerTransportFailure
                            | RDKafkaErrorCode::AllBrokersDown
                            | RDKafkaErrorCode::RequestTimedOut
                            | RDKafkaErrorCode::OperationTimedOut
                            | RDKafkaErrorCode::NotCoordinator
                            | RDKafkaErrorCode::LeaderNotAvailable
                    )
                })
                .unwrap_or(false),
            KafkaError::CreateTopic { .. } => false,
        }
    }
}

/// A client configuration pointing at `brokers`, with the settings every client here shares.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        // Fail fast and visibly when the broker is not there rather than hanging.
        .set("socket.timeout.ms", "10000");
    cfg
}

/// Topic layout for [`ensure_topic`].
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub partitions: i32,
    /// Compacted topics keep the last record per key: changelogs and `_schemas`.
    pub compacted: bool,
}

/// Creates `topic` unless it exists already.
pub async fn ensure_topic(brokers: &str, topic: &str, spec: TopicSpec) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let mut new = NewTopic::new(topic, spec.partitions, TopicReplication::Fixed(1));
    if spec.compacted {
        new = new.set("cleanup.policy", "compact");
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&new], &opts).await?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(KafkaError::CreateTopic { topic: name, code }),
        }
    }
    Ok(())
}

/// A topic name unique to this call, for tests and scratch work: `<prefix>-<uuid>`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Closes a consumer within `timeout` before it is dropped.
///
/// Dropping a `BaseConsumer` that stopped part way through a topic can block in
/// `rd_kafka_destroy` for 27–100 s on the local broker. Closing the consumer's queue and polling
/// until librdkafka reports it closed lets the drop return at once.
pub fn close_consumer<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    timeout: Duration,
) {
    if consumer.close_queue().is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + timeout;
    while !consumer.closed() && std::time::Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
    }
}
