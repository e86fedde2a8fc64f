//! Kafka clients and topic administration.
//!
//! Every Kafka client of every process is built by [`client_config`], which is where
//! librdkafka properties from the environment are applied. The binary reads them once at start
//! ([`properties_from`] over its environment) and hands them to [`install_properties`]; this
//! library never reads the environment itself. `TRIBUTARY_KAFKA_<PROPERTY>` sets
//! `<property>`, named the way Confluent's docker images name theirs (lower-cased; `_` is `.`,
//! `__` is `_`, `___` is `-`). So `TRIBUTARY_KAFKA_SECURITY_PROTOCOL=SASL_SSL` is
//! `security.protocol=SASL_SSL`, `TRIBUTARY_KAFKA_SASL_MECHANISMS=SCRAM-SHA-512` is
//! `sasl.mechanisms`, `TRIBUTARY_KAFKA_SSL_CA_LOCATION=/etc/ca.pem` is `ssl.ca.location`, like
//! Kafka Connect's `producer.override.*` but one convention for every process.
//! `TRIBUTARY_KAFKA_BROKERS` stays the broker list; `bootstrap.servers` cannot be set this way.
//! Settings a process makes for itself after (a producer's `acks`, a consumer's `group.id`)
//! win over the environment: the variables are for connecting, not for changing delivery.

use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
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
    #[error("{action} of topic `{topic}` failed: {code}")]
    TopicConfig {
        action: &'static str,
        topic: String,
        code: RDKafkaErrorCode,
    },
}

impl KafkaError {
    /// Whether trying again can help: [`is_retriable`] of the client error, or of the code the
    /// broker answered a topic operation with.
    pub fn retriable(&self) -> bool {
        match self {
            KafkaError::Client(e) => is_retriable(e),
            KafkaError::CreateTopic { code, .. } | KafkaError::TopicConfig { code, .. } => {
                is_retriable_code(*code)
            }
        }
    }
}

/// Whether an operation that failed with `code` can succeed if tried again unchanged: the
/// broker or the network was unavailable, slow, or in the middle of moving a leader or a
/// coordinator, or the client's own queue was full. Every process classifies Kafka errors with
/// this one list (the streams runtime, the sinks, topic administration), so an outage is
/// retried the same way everywhere and a permanent error (a record too large, an unknown topic,
/// an authorization failure) is never retried anywhere.
pub fn is_retriable_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        // The connection: the broker is down, restarting, or unreachable.
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::NetworkException
            // Slow: a request or the whole operation ran past its timeout.
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::MessageTimedOut
            // Leadership or coordination moving: metadata catches up within seconds.
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::CoordinatorLoadInProgress
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            // The client's own queue is full: it drains as deliveries complete.
            | C::QueueFull
    )
}

/// [`is_retriable_code`] of a client error. A transactional error answers for itself
/// (librdkafka knows whether the transaction can be retried); an error without a code (a client
/// that could not be created, a bad configuration) is not retriable.
pub fn is_retriable(e: &rdkafka::error::KafkaError) -> bool {
    match e {
        rdkafka::error::KafkaError::Transaction(t) => t.is_retriable(),
        other => other.rdkafka_error_code().is_some_and(is_retriable_code),
    }
}

/// Whether `e` is a timeout (of a request, an operation or a message's delivery): the broker
/// may have applied the write. The registry answers those with its own error code.
pub fn is_timeout(e: &rdkafka::error::KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut)
    )
}

/// Prefix of the environment variables that set librdkafka properties.
pub const PROPERTY_PREFIX: &str = "TRIBUTARY_KAFKA_";

/// Variables under [`PROPERTY_PREFIX`] that are not librdkafka properties.
const NOT_PROPERTIES: [&str; 1] = ["TRIBUTARY_KAFKA_BROKERS"];

/// Properties that come from `brokers`, never from the environment.
const FROM_BROKERS: [&str; 2] = ["bootstrap.servers", "metadata.broker.list"];

/// The property a variable's suffix names: `SASL_MECHANISMS` → `sasl.mechanisms`,
/// `A__B` → `a_b`, `A___B` → `a-b`.
fn property_name(suffix: &str) -> String {
    let mut out = String::with_capacity(suffix.len());
    let mut chars = suffix.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.extend(c.to_lowercase());
            continue;
        }
        let mut run = 1;
        while chars.peek() == Some(&'_') && run < 3 {
            chars.next();
            run += 1;
        }
        out.push(match run {
            1 => '.',
            2 => '_',
            _ => '-',
        });
    }
    out
}

/// The librdkafka properties named by `vars` (`TRIBUTARY_KAFKA_<PROPERTY>=value`), sorted.
/// Empty values are skipped, so `TRIBUTARY_KAFKA_X=` unsets nothing and sets nothing.
pub fn properties_from(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, v)| !v.is_empty() && !NOT_PROPERTIES.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let suffix = k.strip_prefix(PROPERTY_PREFIX)?;
            let name = property_name(suffix);
            (!name.is_empty() && !FROM_BROKERS.contains(&name.as_str())).then_some((name, v))
        })
        .collect();
    props.sort();
    props
}

/// The properties every client of this process gets, installed once by the binary.
static PROPERTIES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Sets the librdkafka properties every [`client_config`] of this process applies (the binary
/// calls this at start with [`properties_from`] of its environment, before any client exists).
/// One set per process, as the environment is: a second call is ignored and returns `false`.
pub fn install_properties(props: Vec<(String, String)>) -> bool {
    if !props.is_empty() {
        // Names only: values may be passwords.
        let names: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        tracing::info!(properties = ?names, "kafka client properties from the environment");
    }
    PROPERTIES.set(props).is_ok()
}

/// A client configuration pointing at `brokers`, with the settings every client here shares and
/// the properties the binary installed (see the module doc; none when nothing was installed, as
/// in tests and examples).
pub fn client_config(brokers: &str) -> ClientConfig {
    client_config_with(brokers, PROPERTIES.get().map_or(&[], Vec::as_slice))
}

/// [`client_config`] with `props` in place of the installed ones.
pub fn client_config_with(brokers: &str, props: &[(String, String)]) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        // Fail fast and visibly when the broker is not there rather than hanging.
        .set("socket.timeout.ms", "10000");
    for (k, v) in props {
        cfg.set(k, v);
    }
    cfg
}

/// Topic layout for [`ensure_topic`].
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub partitions: i32,
    /// Compacted topics keep the last record per key: changelogs and `_schemas`.
    pub compacted: bool,
}

/// How [`ensure_topic_with`] creates a topic beyond its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicOptions {
    /// Replicas of each partition: 1 on the local single-broker stack, 3 on a 3-broker cluster.
    pub replication: i32,
    /// `retention.ms=-1`: the broker never deletes a record by age. Event and command topics are
    /// the log every store is a view of, so `reconcile` and `rebuild` need all of it.
    pub retain_forever: bool,
}

impl Default for TopicOptions {
    /// One replica, the broker's default retention: scratch and dead-letter topics.
    fn default() -> Self {
        Self {
            replication: 1,
            retain_forever: false,
        }
    }
}

impl TopicOptions {
    /// The log's topics (events and commands): never deleted by age.
    pub fn log(replication: i32) -> Self {
        Self {
            replication,
            retain_forever: true,
        }
    }
}

/// Creates `topic` unless it exists already, with one replica and the broker's retention.
pub async fn ensure_topic(brokers: &str, topic: &str, spec: TopicSpec) -> Result<(), KafkaError> {
    ensure_topic_with(brokers, topic, spec, TopicOptions::default()).await
}

/// Creates `topic` unless it exists already (an existing topic is left as it is: see
/// [`topic_configs`] to check it).
pub async fn ensure_topic_with(
    brokers: &str,
    topic: &str,
    spec: TopicSpec,
    options: TopicOptions,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let mut new = NewTopic::new(
        topic,
        spec.partitions,
        TopicReplication::Fixed(options.replication),
    );
    if spec.compacted {
        new = new.set("cleanup.policy", "compact");
    }
    if options.retain_forever {
        new = new.set("retention.ms", "-1");
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

/// The configuration entries the broker reports for `topic`, by name. Brokers differ in what
/// they list: Kafka lists every entry (defaults included), nisshi only those set on the topic,
/// so a missing `retention.ms` means the broker's default.
pub async fn topic_configs(
    brokers: &str,
    topic: &str,
) -> Result<Vec<(String, Option<String>)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await?;
    let mut out = Vec::new();
    for r in results {
        let resource = r.map_err(|code| KafkaError::TopicConfig {
            action: "describing the configuration",
            topic: topic.to_string(),
            code,
        })?;
        if resource.specifier != OwnedResourceSpecifier::Topic(topic.to_string()) {
            continue;
        }
        for e in resource.entries {
            out.push((e.name, e.value));
        }
    }
    Ok(out)
}

/// Sets `retention.ms=-1` on `topic`, keeping its other entries (`set`: what
/// [`topic_configs`] returned). Uses AlterConfigs, which replaces a topic's whole set of
/// entries, hence `set`; a broker without AlterConfigs answers with its error code.
pub async fn retain_forever(
    brokers: &str,
    topic: &str,
    set: &[(String, Option<String>)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in set {
        if let (Some(v), false) = (v, k == "retention.ms") {
            alter = alter.set(k, v);
        }
    }
    alter = alter.set("retention.ms", "-1");
    let results = admin
        .alter_configs([&alter], &opts)
        .await
        .map_err(|e| match e {
            rdkafka::error::KafkaError::AdminOp(code @ RDKafkaErrorCode::UnsupportedFeature) => {
                KafkaError::TopicConfig {
                    action: "setting retention.ms=-1 (the broker does not support AlterConfigs)",
                    topic: topic.to_string(),
                    code,
                }
            }
            e => KafkaError::Client(e),
        })?;
    for r in results {
        r.map_err(|(_, code)| KafkaError::TopicConfig {
            action: "setting retention.ms=-1",
            topic: topic.to_string(),
            code,
        })?;
    }
    Ok(())
}

/// How many partitions `topic` has, from the broker's metadata; 0 when the topic does not exist
/// (or the broker reports an error for it, which for a topic is the same to a caller: nothing to
/// read or to co-partition with). The one partition probe of every process.
pub fn partition_count<C, K>(
    client: &K,
    topic: &str,
    timeout: Duration,
) -> Result<i32, rdkafka::error::KafkaError>
where
    C: rdkafka::consumer::ConsumerContext,
    K: rdkafka::consumer::Consumer<C>,
{
    let md = client.fetch_metadata(Some(topic), timeout)?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    // A partition count is an i32 in Kafka's protocol; the metadata cannot hold more.
    Ok(i32::try_from(n).unwrap_or(i32::MAX))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_name_librdkafka_properties() {
        let props = properties_from(vars(&[
            ("TRIBUTARY_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("TRIBUTARY_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512"),
            ("TRIBUTARY_KAFKA_SASL_USERNAME", "svc"),
            ("TRIBUTARY_KAFKA_SSL_CA_LOCATION", "/etc/ca.pem"),
            ("TRIBUTARY_KAFKA_A__B___C", "x"),
            // Not properties: the broker list, other variables, empty values.
            ("TRIBUTARY_KAFKA_BROKERS", "h:9092"),
            ("TRIBUTARY_KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092"),
            ("TRIBUTARY_KAFKA_", "x"),
            ("TRIBUTARY_REDIS_URL", "redis://h"),
            ("KAFKA_SECURITY_PROTOCOL", "SSL"),
            ("TRIBUTARY_KAFKA_SASL_PASSWORD", ""),
        ]));
        assert_eq!(
            props,
            vars(&[
                ("a_b-c", "x"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.username", "svc"),
                ("security.protocol", "SASL_SSL"),
                ("ssl.ca.location", "/etc/ca.pem"),
            ])
        );
    }

    #[test]
    fn retriable_codes_are_outages_never_bad_requests() {
        use rdkafka::error::KafkaError as K;
        use RDKafkaErrorCode as C;
        let retriable = [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::NetworkException,
            C::RequestTimedOut,
            C::OperationTimedOut,
            C::MessageTimedOut,
            C::NotCoordinator,
            C::CoordinatorNotAvailable,
            C::CoordinatorLoadInProgress,
            C::LeaderNotAvailable,
            C::NotLeaderForPartition,
            C::QueueFull,
        ];
        for c in retriable {
            assert!(is_retriable_code(c), "{c:?}");
            assert!(is_retriable(&K::MessageProduction(c)), "{c:?}");
        }
        let permanent = [
            C::MessageSizeTooLarge,
            C::InvalidMessageSize,
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::TopicAlreadyExists,
            C::InvalidConfig,
            C::ProducerFenced,
            C::Fatal,
            C::UnsupportedFeature,
        ];
        for c in permanent {
            assert!(!is_retriable_code(c), "{c:?}");
        }
        // No code: the client could not even be built.
        assert!(!is_retriable(&K::ClientCreation("bad".into())));
        let created = KafkaError::CreateTopic {
            topic: "t".into(),
            code: C::RequestTimedOut,
        };
        assert!(created.retriable());
        let exists = KafkaError::CreateTopic {
            topic: "t".into(),
            code: C::InvalidReplicationFactor,
        };
        assert!(!exists.retriable());
        assert!(is_timeout(&K::MessageProduction(C::MessageTimedOut)));
        assert!(!is_timeout(&K::MessageProduction(C::QueueFull)));
    }

    #[test]
    fn properties_go_into_the_client_config_but_not_over_the_brokers() {
        let props = vars(&[("security.protocol", "ssl"), ("socket.timeout.ms", "3000")]);
        let cfg = client_config_with("h1:9092,h2:9092", &props);
        assert_eq!(cfg.get("security.protocol"), Some("ssl"));
        assert_eq!(
            cfg.get("socket.timeout.ms"),
            Some("3000"),
            "the environment wins over defaults"
        );
        assert_eq!(cfg.get("bootstrap.servers"), Some("h1:9092,h2:9092"));
    }
}
