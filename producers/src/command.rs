//! A command as it arrives (JSON) → a typed envelope of its topic.
//!
//! The JSON form names the command by its record name, with the record's fields inside:
//!
//! ```json
//! {"payload": {"PlaceOrder": {"order_id": "o-1", "user_id": "u-1", "currency": "EUR",
//!                             "lines": [{"product_id": "p-1", "quantity": 2}]}},
//!  "correlation_id": "optional", "id": "optional, for idempotent retries"}
//! ```
//!
//! The aggregate id (and so the record key and partition) is the entity id the command is about,
//! read from the payload: `user_id`, `product_id`, `order_id` or `payment_id` by topic. Unknown
//! fields are refused, so a typo is an error rather than a silently dropped value.
//!
//! Ids are checked here, at the edge, because every store downstream keys by them: the
//! command's `id`, `correlation_id`, `causation_id` and every payload field named `id` or
//! `*_id` must be at most [`MAX_ID_BYTES`] bytes without control characters (NUL included).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tributary_schemas::domain::{InventoryCommand, OrderCommand, PaymentCommand, UserCommand};
use tributary_schemas::types::{Envelope, TopicPayload};
use tributary_schemas::{AvroRecord, DomainError};

/// The command topics, and the payload field holding each one's aggregate id.
pub const COMMAND_TOPICS: [(&str, &str); 4] = [
    (UserCommand::TOPIC, "user_id"),
    (InventoryCommand::TOPIC, "product_id"),
    (OrderCommand::TOPIC, "order_id"),
    (PaymentCommand::TOPIC, "payment_id"),
];

/// Longest id accepted, in bytes of UTF-8. Generous for any real id (a UUID is 36, a prefixed
/// ULID under 64) and small enough for every store downstream, including the ids sinks compose
/// from two of them: `<order_id>:<product_id>` (513 bytes) stays under MongoDB's and the Redis
/// sink's 1 KB limits, `<id>#<version>` under Elasticsearch's 512-byte `_id`, and any id far
/// under PostgreSQL's ~2.7 KB btree entry.
pub const MAX_ID_BYTES: usize = 256;

/// Why a command was refused before it was sent. Never retriable: the input must change.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(
        "unknown command topic `{topic}` (expected one of: {})",
        command_topic_names()
    )]
    UnknownTopic { topic: String },
    #[error("invalid command for `{topic}`: {message}")]
    Invalid { topic: String, message: String },
    #[error("command for `{topic}` lacks `{field}`, its aggregate id")]
    MissingKey { topic: String, field: &'static str },
    #[error("command for `{topic}`: `{field}` {reason}")]
    InvalidId {
        topic: String,
        field: String,
        reason: String,
    },
    #[error("command for `{topic}` does not fit its schema: {0}", topic = .1)]
    Schema(#[source] DomainError, String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input<P> {
    id: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    payload: P,
}

/// The command topics' names, for messages: `commands.users, commands.inventory, ...`.
fn command_topic_names() -> String {
    COMMAND_TOPICS.map(|(topic, _)| topic).join(", ")
}

/// A validated command of one of the command topics.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Users(Envelope<UserCommand>),
    Inventory(Envelope<InventoryCommand>),
    Orders(Envelope<OrderCommand>),
    Payments(Envelope<PaymentCommand>),
}

macro_rules! each {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            Command::Users($e) => $body,
            Command::Inventory($e) => $body,
            Command::Orders($e) => $body,
            Command::Payments($e) => $body,
        }
    };
}

fn build<P>(
    topic: &str,
    key_field: &'static str,
    json: serde_json::Value,
) -> Result<Envelope<P>, CommandError>
where
    P: TopicPayload + DeserializeOwned + serde::Serialize,
{
    check_ids(topic, &json)?;
    let raw_payload = json.get("payload").cloned();
    let input: Input<P> = serde_json::from_value(json).map_err(|e| CommandError::Invalid {
        topic: topic.to_string(),
        message: e.to_string(),
    })?;
    // serde ignores fields the record does not have; a typo must not vanish silently.
    if let (Some(raw), Ok(parsed)) = (raw_payload, serde_json::to_value(&input.payload)) {
        if let Some(path) = unknown_field(&raw, &parsed, String::new()) {
            return Err(CommandError::Invalid {
                topic: topic.to_string(),
                message: format!("unknown field `{path}`"),
            });
        }
    }
    let key = aggregate_id(&input.payload, key_field).ok_or(CommandError::MissingKey {
        topic: topic.to_string(),
        field: key_field,
    })?;
    let correlation = input.correlation_id.clone();
    let mut env: Envelope<P> = Envelope::new(key, String::new(), input.payload);
    env.correlation_id = correlation.unwrap_or_else(|| env.id.clone());
    if let Some(id) = input.id {
        env.id = id;
    }
    env.causation_id = input.causation_id;
    Ok(env)
}

/// Refuses the first id of `json` (see the module documentation) that is too long or holds a
/// control character, naming its path.
fn check_ids(topic: &str, json: &serde_json::Value) -> Result<(), CommandError> {
    fn walk(v: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let here = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let is_id = k == "id" || k.ends_with("_id");
                    match v {
                        serde_json::Value::String(s) if is_id => {
                            if let Some(reason) = id_problem(s) {
                                out.push((here, reason));
                            }
                        }
                        _ => walk(v, &here, out),
                    }
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut problems = Vec::new();
    walk(json, "", &mut problems);
    match problems.into_iter().next() {
        None => Ok(()),
        Some((field, reason)) => Err(CommandError::InvalidId {
            topic: topic.to_string(),
            field,
            reason,
        }),
    }
}

/// What is wrong with id `s`, if anything.
pub fn id_problem(s: &str) -> Option<String> {
    if s.len() > MAX_ID_BYTES {
        return Some(format!(
            "is {} bytes long; ids are at most {MAX_ID_BYTES} bytes",
            s.len()
        ));
    }
    s.char_indices()
        .find(|(_, c)| c.is_control())
        .map(|(at, c)| {
            format!(
                "holds control character U+{:04X} at byte {at}; ids must not contain control characters",
                c as u32
            )
        })
}

/// The first path present in `given` but not in `parsed` (what serde kept), if any.
fn unknown_field(
    given: &serde_json::Value,
    parsed: &serde_json::Value,
    path: String,
) -> Option<String> {
    use serde_json::Value::{Array, Object};
    match (given, parsed) {
        (Object(g), Object(p)) => g.iter().find_map(|(k, gv)| {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match p.get(k) {
                None => Some(here),
                Some(pv) => unknown_field(gv, pv, here),
            }
        }),
        (Array(g), Array(p)) => g
            .iter()
            .zip(p)
            .enumerate()
            .find_map(|(i, (gv, pv))| unknown_field(gv, pv, format!("{path}[{i}]"))),
        _ => None,
    }
}

/// The payload's `field`, looked up inside its single variant (`{"PlaceOrder": {...}}`).
fn aggregate_id<P: serde::Serialize>(payload: &P, field: &str) -> Option<String> {
    let v = serde_json::to_value(payload).ok()?;
    let (_, record) = v.as_object()?.iter().next()?;
    record
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Command {
    /// Parses a command for `topic` from JSON text.
    pub fn parse(topic: &str, json: &str) -> Result<Command, CommandError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| CommandError::Invalid {
                topic: topic.to_string(),
                message: format!("not JSON: {e}"),
            })?;
        Command::from_json(topic, value)
    }

    /// Builds a command for `topic` from a JSON value.
    pub fn from_json(topic: &str, value: serde_json::Value) -> Result<Command, CommandError> {
        let field = COMMAND_TOPICS
            .iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, f)| *f)
            .ok_or_else(|| CommandError::UnknownTopic {
                topic: topic.to_string(),
            })?;
        let cmd = match topic {
            UserCommand::TOPIC => Command::Users(build(topic, field, value)?),
            InventoryCommand::TOPIC => Command::Inventory(build(topic, field, value)?),
            OrderCommand::TOPIC => Command::Orders(build(topic, field, value)?),
            _ => Command::Payments(build(topic, field, value)?),
        };
        // Fail here, not at send time, when a value does not fit the schema.
        cmd.to_avro()?;
        Ok(cmd)
    }

    pub fn topic(&self) -> &'static str {
        each!(self, e => topic_of(e))
    }

    /// The record's id: the command id a caller can quote.
    pub fn id(&self) -> &str {
        each!(self, e => e.id.as_str())
    }

    /// The id shared by every record of the command's business flow.
    pub fn correlation_id(&self) -> &str {
        each!(self, e => e.correlation_id.as_str())
    }

    /// The entity the command is about; the record key.
    pub fn aggregate_id(&self) -> &str {
        each!(self, e => e.aggregate_id.as_str())
    }

    /// The user on whose behalf the command is sent, when the command names one.
    pub fn user_id(&self) -> Option<String> {
        each!(self, e => aggregate_id(&e.payload, "user_id"))
    }

    /// Sets the record's creation time (ms since the epoch).
    pub fn set_timestamp(&mut self, timestamp_ms: i64) {
        each!(self, e => e.timestamp = timestamp_ms)
    }

    /// The record name of the command, e.g. `PlaceOrder`.
    pub fn name(&self) -> &'static str {
        each!(self, e => e.payload.branch_name())
    }

    /// The command as an Avro value of its topic's schema, with that schema's text.
    pub fn to_avro(&self) -> Result<(apache_avro::types::Value, &'static str), CommandError> {
        let topic = self.topic();
        each!(self, e => {
            let v = e.to_avro().map_err(|err| CommandError::Schema(err, topic.to_string()))?;
            Ok((v, schema_text_of(e)))
        })
    }
}

fn topic_of<P: TopicPayload>(_: &Envelope<P>) -> &'static str {
    P::TOPIC
}

fn schema_text_of<P: TopicPayload>(_: &Envelope<P>) -> &'static str {
    P::SCHEMA_TEXT
}

impl From<Envelope<UserCommand>> for Command {
    fn from(e: Envelope<UserCommand>) -> Self {
        Command::Users(e)
    }
}
impl From<Envelope<InventoryCommand>> for Command {
    fn from(e: Envelope<InventoryCommand>) -> Self {
        Command::Inventory(e)
    }
}
impl From<Envelope<OrderCommand>> for Command {
    fn from(e: Envelope<OrderCommand>) -> Self {
        Command::Orders(e)
    }
}
impl From<Envelope<PaymentCommand>> for Command {
    fn from(e: Envelope<PaymentCommand>) -> Self {
        Command::Payments(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"{"payload": {"PlaceOrder": {"order_id": "o-1", "user_id": "u-1",
        "currency": "EUR", "lines": [{"product_id": "p-1", "quantity": 2}]}}}"#;

    #[test]
    fn parses_a_command_and_keys_it_by_aggregate() {
        let cmd = Command::parse("commands.orders", ORDER).unwrap();
        assert_eq!(cmd.topic(), "commands.orders");
        assert_eq!(cmd.aggregate_id(), "o-1");
        assert_eq!(cmd.user_id().as_deref(), Some("u-1"));
        assert_eq!(cmd.name(), "PlaceOrder");
        // Without a correlation id the command starts its own flow.
        let Command::Orders(env) = &cmd else {
            panic!("an order command")
        };
        assert_eq!(env.correlation_id, env.id);
        assert_eq!(env.sequence, 0);
    }

    #[test]
    fn caller_ids_are_kept_for_idempotent_retries() {
        let json = r#"{"id": "cmd-9", "correlation_id": "c-9", "payload": {"RegisterUser":
            {"user_id": "u-9", "email": "a@b.c", "display_name": "A", "locale": null}}}"#;
        let cmd = Command::parse("commands.users", json).unwrap();
        assert_eq!(cmd.id(), "cmd-9");
        let Command::Users(env) = &cmd else {
            panic!("a user command")
        };
        assert_eq!(env.correlation_id, "c-9");
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let err = Command::parse("commands.nope", ORDER).unwrap_err();
        assert!(err.to_string().contains("commands.nope"), "{err}");

        let err = Command::parse("commands.orders", "{ nope").unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");

        let missing =
            r#"{"payload": {"PlaceOrder": {"order_id": "o-1", "currency": "EUR", "lines": []}}}"#;
        let err = Command::parse("commands.orders", missing).unwrap_err();
        assert!(err.to_string().contains("user_id"), "{err}");

        let typo = r#"{"payload": {"PlaceOrder": {"order_id": "o-1", "user_id": "u", "currency": "EUR",
            "lines": [], "colour": "red"}}}"#;
        let err = Command::parse("commands.orders", typo).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");

        let wrong_type =
            r#"{"payload": {"RestockProduct": {"product_id": "p", "quantity": "many"}}}"#;
        let err = Command::parse("commands.inventory", wrong_type).unwrap_err();
        assert!(err.to_string().contains("many"), "{err}");

        let unknown_command = r#"{"payload": {"ShipOrder": {"order_id": "o-1"}}}"#;
        let err = Command::parse("commands.orders", unknown_command).unwrap_err();
        assert!(err.to_string().contains("ShipOrder"), "{err}");

        let empty_key =
            r#"{"payload": {"CancelOrder": {"order_id": "", "user_id": "u", "note": null}}}"#;
        let err = Command::parse("commands.orders", empty_key).unwrap_err();
        assert!(
            matches!(
                err,
                CommandError::MissingKey {
                    field: "order_id",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn ids_too_long_or_with_control_characters_are_refused_naming_the_field() {
        let huge = "o".repeat(8 * 1024);
        let json = format!(
            r#"{{"payload": {{"PlaceOrder": {{"order_id": "{huge}", "user_id": "u-1",
                "currency": "EUR", "lines": [{{"product_id": "p-1", "quantity": 2}}]}}}}}}"#
        );
        let err = Command::parse("commands.orders", &json).unwrap_err();
        assert_eq!(
            err.to_string(),
            "command for `commands.orders`: `payload.PlaceOrder.order_id` is 8192 bytes long; \
             ids are at most 256 bytes"
        );

        let json = format!(
            r#"{{"payload": {{"RegisterUser": {{"user_id": "{huge}", "email": "a@b.c",
                "display_name": "A", "locale": null}}}}}}"#
        );
        let err = Command::parse("commands.users", &json).unwrap_err();
        assert!(
            matches!(&err, CommandError::InvalidId { field, .. } if field == "payload.RegisterUser.user_id"),
            "{err}"
        );

        // Nested ids, and the envelope's own.
        let nul = r#"{"payload": {"PlaceOrder": {"order_id": "o-1", "user_id": "u-1",
            "currency": "EUR", "lines": [{"product_id": "p\u0000x", "quantity": 2}]}}}"#;
        let err = Command::parse("commands.orders", nul).unwrap_err();
        assert!(
            err.to_string().contains(
                "`payload.PlaceOrder.lines[0].product_id` holds control character U+0000"
            ),
            "{err}"
        );
        let json = format!(
            r#"{{"correlation_id": "{huge}", "payload": {{"CancelOrder": {{"order_id": "o", "user_id": "u", "note": null}}}}}}"#
        );
        let err = Command::parse("commands.orders", &json).unwrap_err();
        assert!(err.to_string().contains("`correlation_id`"), "{err}");

        // Exactly the limit is fine, and so is non-ASCII text.
        let at_limit = "é".repeat(MAX_ID_BYTES / 2);
        let json = format!(
            r#"{{"payload": {{"RegisterUser": {{"user_id": "{at_limit}", "email": "a@b.c",
                "display_name": "A", "locale": null}}}}}}"#
        );
        assert!(Command::parse("commands.users", &json).is_ok());
    }

    #[test]
    fn empty_keys_stay_missing_keys() {
        let empty_key =
            r#"{"payload": {"CancelOrder": {"order_id": "", "user_id": "u", "note": null}}}"#;
        let err = Command::parse("commands.orders", empty_key).unwrap_err();
        assert!(
            matches!(
                err,
                CommandError::MissingKey {
                    field: "order_id",
                    ..
                }
            ),
            "{err}"
        );
    }
}
