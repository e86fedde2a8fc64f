//! The value type of every topic and its mapping to that topic's Avro schema.
//!
//! A topic's value is an [`Envelope`] whose `payload` is the topic's union enum, e.g.
//! [`OrderEvent`]; the aliases below ([`OrderEventEnvelope`], ...) name them per topic.
//!
//! The envelope and the payload union are mapped to [`Value`] by hand; apache-avro's serde
//! support is used only for the plain records inside one union branch. Two reasons:
//! `apache_avro::to_value` turns a Rust enum variant into a `{type, value}` record rather than
//! a union branch, and `Value::resolve` picks a union branch by the first one the value's
//! *structure* fits, ignoring the branch index, so two branches with compatible fields would
//! be confused. Resolving each record against its own branch schema avoids both.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::schema::{Name, ResolvedSchema, SchemaKind};
use apache_avro::types::Value;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

pub use crate::domain::*;

/// A Rust type that is the value of one topic, encoded with that topic's Avro schema.
pub trait AvroRecord: Sized {
    /// The topic this type is the value of.
    const TOPIC: &'static str;
    /// The schema text (`include_str!` of the .avsc).
    const SCHEMA_TEXT: &'static str;
    /// The parsed schema, parsed once (std::sync::OnceLock / LazyLock).
    fn schema() -> &'static apache_avro::Schema;
    fn to_avro(&self) -> Result<apache_avro::types::Value, DomainError>;
    fn from_avro(value: apache_avro::types::Value) -> Result<Self, DomainError>;
}

/// Why a domain value could not be mapped to or from its Avro form.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A schema text does not parse.
    #[error("the schema of topic `{topic}` does not parse: {source}")]
    SchemaParse {
        topic: &'static str,
        #[source]
        source: apache_avro::Error,
    },
    /// A schema parses but does not have the shape its Rust type expects.
    #[error("the schema of topic `{topic}` does not match the Rust type `{type_name}`: {reason}")]
    SchemaMismatch {
        topic: &'static str,
        type_name: &'static str,
        reason: String,
    },
    /// A value has the wrong Avro type.
    #[error("{type_name}: expected {expected} in `{field}`, found {found}")]
    WrongShape {
        type_name: &'static str,
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    /// A record value lacks a field.
    #[error("{type_name}: field `{field}` is missing")]
    MissingField {
        type_name: &'static str,
        field: &'static str,
    },
    /// A payload union index names no branch this type knows.
    #[error(
        "{type_name}: payload union branch {index} is unknown (this type has {known} branches)"
    )]
    UnknownBranch {
        type_name: &'static str,
        index: u32,
        known: usize,
    },
    /// A payload record could not be converted (serde mapping or schema resolution failed).
    #[error("{type_name}: cannot {action} payload record `{branch}`: {source}")]
    Payload {
        type_name: &'static str,
        branch: &'static str,
        action: &'static str,
        #[source]
        source: apache_avro::Error,
    },
}

/// The common fields of every topic's value around its `payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// Unique id (UUID v4) of this record.
    pub id: String,
    /// Id of the aggregate this record is about.
    pub aggregate_id: String,
    /// Per-aggregate sequence number; 0 on commands when unknown.
    pub sequence: i64,
    /// Id of the record that directly caused this one.
    pub causation_id: Option<String>,
    /// Id shared by every record of one business flow.
    pub correlation_id: String,
    /// Creation time in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The topic-specific body.
    pub payload: P,
}

impl<P> Envelope<P> {
    /// A record that starts or continues the flow `correlation_id`, with a fresh id, the
    /// current time, sequence 0 and no causation.
    pub fn new(
        aggregate_id: impl Into<String>,
        correlation_id: impl Into<String>,
        payload: impl Into<P>,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            aggregate_id: aggregate_id.into(),
            sequence: 0,
            causation_id: None,
            correlation_id: correlation_id.into(),
            timestamp: tributary_runtime::clock::now_ms(),
            payload: payload.into(),
        }
    }

    /// A record caused by `cause`: it joins the cause's flow and names it as causation.
    pub fn caused_by<Q>(
        cause: &Envelope<Q>,
        aggregate_id: impl Into<String>,
        payload: impl Into<P>,
    ) -> Self {
        Self {
            causation_id: Some(cause.id.clone()),
            ..Self::new(aggregate_id, cause.correlation_id.clone(), payload)
        }
    }

    /// The same record with `sequence` set.
    pub fn with_sequence(mut self, sequence: i64) -> Self {
        self.sequence = sequence;
        self
    }
}

/// The union enum that is the `payload` of one topic's envelope.
///
/// Implemented by the `topic_payload!` macro in [`crate::domain`]; the variant order is the
/// union's branch order in the schema, which is checked when the schema is first used.
pub trait TopicPayload: Sized {
    /// The topic whose envelope carries this payload.
    const TOPIC: &'static str;
    /// That topic's schema text.
    const SCHEMA_TEXT: &'static str;
    /// Name of the Rust enum, for error messages.
    const TYPE_NAME: &'static str;
    /// Record name of each union branch, in union order (= variant order).
    const BRANCHES: &'static [&'static str];

    /// The topic's schema, parsed once.
    fn topic_schema() -> &'static TopicSchema;
    /// Record name of this value's branch (also its variant name), e.g. `"OrderPlaced"`.
    fn branch_name(&self) -> &'static str;
    /// The branch record as an unresolved serde-built [`Value`].
    #[doc(hidden)]
    fn branch_value(&self) -> Result<Value, apache_avro::Error>;
    /// The variant `branch` read from its record value; `None` if no variant has that name.
    #[doc(hidden)]
    fn from_branch_value(branch: &str, value: &Value) -> Option<Result<Self, apache_avro::Error>>;
}

/// One topic's schema, parsed on first use and then shared.
pub struct TopicSchema {
    topic: &'static str,
    text: &'static str,
    schema: OnceLock<Schema>,
    payload: OnceLock<Result<PayloadSchema, String>>,
}

/// The payload union's branch schemas and the named types they may refer to.
struct PayloadSchema {
    names: HashMap<Name, &'static Schema>,
    branches: Vec<&'static Schema>,
}

impl TopicSchema {
    /// A lazily parsed schema; usable in a `static`.
    pub const fn new(topic: &'static str, text: &'static str) -> Self {
        Self {
            topic,
            text,
            schema: OnceLock::new(),
            payload: OnceLock::new(),
        }
    }

    /// The parsed schema.
    ///
    /// # Panics
    /// If the embedded schema text does not parse: that is a build defect, which the
    /// crate's tests catch, not a run-time condition.
    pub fn schema(&'static self) -> &'static Schema {
        self.schema.get_or_init(|| {
            Schema::parse_str(self.text).unwrap_or_else(|e| {
                panic!("embedded schema of topic `{}` is invalid: {e}", self.topic)
            })
        })
    }

    fn payload<P: TopicPayload>(&'static self) -> Result<&'static PayloadSchema, DomainError> {
        self.payload
            .get_or_init(|| PayloadSchema::new(self.schema(), P::BRANCHES))
            .as_ref()
            .map_err(|reason| DomainError::SchemaMismatch {
                topic: self.topic,
                type_name: P::TYPE_NAME,
                reason: reason.clone(),
            })
    }
}

impl PayloadSchema {
    fn new(schema: &'static Schema, expected: &[&str]) -> Result<Self, String> {
        let names = ResolvedSchema::new(schema)
            .map_err(|e| e.to_string())?
            .get_names()
            .clone();
        let Schema::Record(record) = schema else {
            return Err("the schema is not a record".into());
        };
        let payload = record
            .fields
            .iter()
            .find(|f| f.name == "payload")
            .ok_or("the envelope has no `payload` field")?;
        let Schema::Union(union) = &payload.schema else {
            return Err("`payload` is not a union".into());
        };
        let mut branches = Vec::new();
        let mut found = Vec::new();
        for variant in union.variants() {
            // A branch may be a reference to a record defined earlier in the schema.
            let target = match variant {
                Schema::Ref { name } => *names
                    .get(name)
                    .ok_or_else(|| format!("unresolved reference `{name}`"))?,
                other => other,
            };
            let Schema::Record(branch) = target else {
                return Err(format!("payload branch {target:?} is not a record"));
            };
            found.push(branch.name.name().to_string());
            branches.push(target);
        }
        if found != expected {
            return Err(format!(
                "payload branches are {found:?} but the Rust variants are {expected:?}"
            ));
        }
        Ok(Self { names, branches })
    }
}

impl<P: TopicPayload> AvroRecord for Envelope<P> {
    const TOPIC: &'static str = P::TOPIC;
    const SCHEMA_TEXT: &'static str = P::SCHEMA_TEXT;

    fn schema() -> &'static Schema {
        P::topic_schema().schema()
    }

    fn to_avro(&self) -> Result<Value, DomainError> {
        let causation_id = match &self.causation_id {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(id) => Value::Union(1, Box::new(Value::String(id.clone()))),
        };
        Ok(Value::Record(vec![
            ("id".into(), Value::String(self.id.clone())),
            (
                "aggregate_id".into(),
                Value::String(self.aggregate_id.clone()),
            ),
            ("sequence".into(), Value::Long(self.sequence)),
            ("causation_id".into(), causation_id),
            (
                "correlation_id".into(),
                Value::String(self.correlation_id.clone()),
            ),
            ("timestamp".into(), Value::TimestampMillis(self.timestamp)),
            ("payload".into(), encode_payload(&self.payload)?),
        ]))
    }

    fn from_avro(value: Value) -> Result<Self, DomainError> {
        let ty = P::TYPE_NAME;
        let Value::Record(fields) = value else {
            return Err(wrong_shape(ty, "(envelope)", "a record", &value));
        };
        // By name, so the field order of the writer's schema does not matter.
        let mut fields: HashMap<String, Value> = fields.into_iter().collect();
        let mut take = |field: &'static str| {
            fields.remove(field).ok_or(DomainError::MissingField {
                type_name: ty,
                field,
            })
        };
        Ok(Self {
            id: string(ty, "id", take("id")?)?,
            aggregate_id: string(ty, "aggregate_id", take("aggregate_id")?)?,
            sequence: long(ty, "sequence", take("sequence")?)?,
            causation_id: optional_string(ty, "causation_id", take("causation_id")?)?,
            correlation_id: string(ty, "correlation_id", take("correlation_id")?)?,
            timestamp: long(ty, "timestamp", take("timestamp")?)?,
            payload: decode_payload(take("payload")?)?,
        })
    }
}

fn encode_payload<P: TopicPayload>(payload: &P) -> Result<Value, DomainError> {
    let schema = P::topic_schema().payload::<P>()?;
    let branch = payload.branch_name();
    let index = P::BRANCHES
        .iter()
        .position(|b| *b == branch)
        .ok_or_else(|| DomainError::SchemaMismatch {
            topic: P::TOPIC,
            type_name: P::TYPE_NAME,
            reason: format!("variant `{branch}` is not listed in BRANCHES"),
        })?;
    let error = |source| DomainError::Payload {
        type_name: P::TYPE_NAME,
        branch,
        action: "encode",
        source,
    };
    // Resolving against the branch's own schema turns serde's output (enum symbols as
    // strings, plain longs for timestamps, untagged option unions) into exactly the
    // schema's form, without letting resolution choose the branch.
    let record = payload
        .branch_value()
        .and_then(|raw| raw.resolve_with_names(schema.branches[index], &schema.names))
        .map_err(error)?;
    Ok(Value::Union(index as u32, Box::new(record)))
}

fn decode_payload<P: TopicPayload>(value: Value) -> Result<P, DomainError> {
    let ty = P::TYPE_NAME;
    let Value::Union(index, record) = value else {
        return Err(wrong_shape(ty, "payload", "a union", &value));
    };
    let unknown = DomainError::UnknownBranch {
        type_name: ty,
        index,
        known: P::BRANCHES.len(),
    };
    let Some(&branch) = P::BRANCHES.get(index as usize) else {
        return Err(unknown);
    };
    if !matches!(*record, Value::Record(_)) {
        return Err(wrong_shape(ty, "payload", "a record in the union", &record));
    }
    match P::from_branch_value(branch, &record) {
        None => Err(unknown),
        Some(result) => result.map_err(|source| DomainError::Payload {
            type_name: ty,
            branch,
            action: "decode",
            source,
        }),
    }
}

fn wrong_shape(
    type_name: &'static str,
    field: &'static str,
    expected: &'static str,
    found: &Value,
) -> DomainError {
    DomainError::WrongShape {
        type_name,
        field,
        expected,
        // The kind, not the value: values can be large and may hold personal data.
        found: format!("{:?}", SchemaKind::from(found)),
    }
}

fn string(ty: &'static str, field: &'static str, value: Value) -> Result<String, DomainError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(wrong_shape(ty, field, "a string", &other)),
    }
}

fn long(ty: &'static str, field: &'static str, value: Value) -> Result<i64, DomainError> {
    match value {
        Value::Long(n) | Value::TimestampMillis(n) => Ok(n),
        Value::Int(n) => Ok(i64::from(n)),
        other => Err(wrong_shape(ty, field, "a long", &other)),
    }
}

fn optional_string(
    ty: &'static str,
    field: &'static str,
    value: Value,
) -> Result<Option<String>, DomainError> {
    match value {
        Value::Union(_, inner) => match *inner {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(wrong_shape(ty, field, "null or a string", &other)),
        },
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(wrong_shape(ty, field, "null or a string", &other)),
    }
}

/// Value of `commands.users`.
pub type UserCommandEnvelope = Envelope<UserCommand>;
/// Value of `events.users`.
pub type UserEventEnvelope = Envelope<UserEvent>;
/// Value of `commands.inventory`.
pub type InventoryCommandEnvelope = Envelope<InventoryCommand>;
/// Value of `events.inventory`.
pub type InventoryEventEnvelope = Envelope<InventoryEvent>;
/// Value of `commands.orders`.
pub type OrderCommandEnvelope = Envelope<OrderCommand>;
/// Value of `events.orders`.
pub type OrderEventEnvelope = Envelope<OrderEvent>;
/// Value of `commands.payments`.
pub type PaymentCommandEnvelope = Envelope<PaymentCommand>;
/// Value of `events.payments`.
pub type PaymentEventEnvelope = Envelope<PaymentEvent>;
/// Value of `events.notifications`.
pub type NotificationEventEnvelope = Envelope<NotificationEvent>;
/// Value of `events.analytics`.
pub type AnalyticsEventEnvelope = Envelope<AnalyticsEvent>;
/// Value of `events.rejections`.
pub type RejectionEventEnvelope = Envelope<RejectionEvent>;

macro_rules! all_topics {
    ($($payload:ty),+ $(,)?) => {
        /// Every topic and the text of its value schema (subject `<topic>-value`).
        pub const ALL_TOPICS: &[(&str, &str)] = &[
            $((<$payload as TopicPayload>::TOPIC, <$payload as TopicPayload>::SCHEMA_TEXT)),+
        ];
    };
}

all_topics!(
    UserCommand,
    UserEvent,
    InventoryCommand,
    InventoryEvent,
    OrderCommand,
    OrderEvent,
    PaymentCommand,
    PaymentEvent,
    NotificationEvent,
    AnalyticsEvent,
    RejectionEvent,
);

/// Every topic with its schema freshly parsed from [`ALL_TOPICS`].
pub fn all_schemas() -> Result<Vec<(&'static str, Schema)>, DomainError> {
    ALL_TOPICS
        .iter()
        .map(|&(topic, text)| {
            Schema::parse_str(text)
                .map(|schema| (topic, schema))
                .map_err(|source| DomainError::SchemaParse { topic, source })
        })
        .collect()
}
