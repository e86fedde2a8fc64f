//! Compatibility levels and the check run before a schema joins a subject.
//!
//! The Avro rules themselves are apache-avro's [`SchemaCompatibility::can_read`][can_read];
//! this module decides which pairs to check for a level and words failures like Confluent's
//! checker does, so the 409 body and `?verbose=true` messages read the same way to people used
//! to Confluent.
//!
//! [can_read]: apache_avro::schema_compatibility::SchemaCompatibility::can_read

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;

use apache_avro::error::CompatibilityError;
use apache_avro::schema_compatibility::{
    Compatibility as Resolution, SchemaCompatibility as AvroCompat,
};
use apache_avro::Schema;

/// A subject's (or the registry's) compatibility level, spelt as Confluent spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compatibility {
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

impl Compatibility {
    pub const ALL: [Compatibility; 7] = [
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
        Compatibility::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
            Compatibility::None => "NONE",
        }
    }

    /// Transitive levels check against every live version, the others only against the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    /// The new schema must read what older versions wrote.
    fn checks_backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    /// Older versions must read what the new schema writes.
    fn checks_forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The level named by `s` is not one of Confluent's seven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compatibility level `{0}`; expected one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE")]
pub struct UnknownCompatibility(pub String);

impl FromStr for Compatibility {
    type Err = UnknownCompatibility;

    /// Case-insensitive, as Confluent upper-cases the level before looking it up.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Compatibility::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownCompatibility(s.to_string()))
    }
}

/// One earlier version a new schema is checked against.
pub(crate) struct Existing<'a> {
    pub version: u32,
    pub text: &'a str,
    pub schema: &'a Schema,
}

/// Checks `new` against `existing` (oldest first) under `level` and returns Confluent-style
/// messages describing the first incompatibility found, or nothing when compatible.
///
/// Non-transitive levels look at the last element only. Like Confluent, the check stops at the
/// newest version that fails, so the messages name exactly one old version.
pub(crate) fn check(level: Compatibility, new: &Schema, existing: &[Existing<'_>]) -> Vec<String> {
    if level == Compatibility::None {
        return Vec::new();
    }
    let against: &[Existing<'_>] = if level.is_transitive() {
        existing
    } else {
        match existing.len() {
            0 => &[],
            n => &existing[n - 1..],
        }
    };
    for old in against.iter().rev() {
        let mut problems = Vec::new();
        if level.checks_backward() {
            if let Err(e) = can_read(old.schema, new) {
                problems
                    .push(e.message("the new schema cannot read data written by the old schema"));
            }
        }
        if level.checks_forward() {
            if let Err(e) = can_read(new, old.schema) {
                problems
                    .push(e.message("the old schema cannot read data written by the new schema"));
            }
        }
        if !problems.is_empty() {
            problems.push(format!("{{oldSchemaVersion: {}}}", old.version));
            problems.push(format!("{{oldSchema: '{}'}}", old.text));
            problems.push(format!("{{compatibility: '{level}'}}"));
            return problems;
        }
    }
    Vec::new()
}

/// Why a reader cannot read what a writer wrote.
enum Incompatibility {
    Error(CompatibilityError),
    /// apache-avro's "partial" result: some writer values (enum symbols or union branches the
    /// reader lacks) cannot be read. Avro's Java checker, and so Confluent, rejects these.
    Partial,
    Panicked,
}

impl Incompatibility {
    fn message(&self, direction: &str) -> String {
        let (kind, detail) = match self {
            Incompatibility::Error(e) => (error_type(e), e.to_string()),
            Incompatibility::Partial => (
                "MISSING_UNION_BRANCH_OR_ENUM_SYMBOL",
                "some values (enum symbols or union branches) of the writer schema have no counterpart in the reader schema".to_string(),
            ),
            Incompatibility::Panicked => (
                "UNKNOWN",
                "the compatibility checker failed on these schemas".to_string(),
            ),
        };
        format!(
            "{{errorType:'{kind}', description:'{}: {}'}}",
            capitalise(direction),
            detail
        )
    }
}

fn can_read(writer: &Schema, reader: &Schema) -> Result<(), Incompatibility> {
    // A checker bug must not take the request (or the write lock holder) down with it.
    match catch_unwind(AssertUnwindSafe(|| AvroCompat::can_read(writer, reader))) {
        Ok(Ok(Resolution::Full)) => Ok(()),
        Ok(Ok(Resolution::Partial)) => Err(Incompatibility::Partial),
        Ok(Err(e)) => Err(Incompatibility::Error(e)),
        Err(_) => Err(Incompatibility::Panicked),
    }
}

/// Confluent's `errorType` names for apache-avro's failures, innermost cause first.
fn error_type(e: &CompatibilityError) -> &'static str {
    match e {
        CompatibilityError::FieldTypeMismatch(_, inner) => error_type(inner),
        CompatibilityError::MissingDefaultValue(_) => "READER_FIELD_MISSING_DEFAULT_VALUE",
        CompatibilityError::MissingSymbols => "MISSING_ENUM_SYMBOLS",
        CompatibilityError::MissingUnionElements
        | CompatibilityError::SchemaMismatchAllUnionElements => "MISSING_UNION_BRANCH",
        CompatibilityError::FixedMismatch => "FIXED_SIZE_MISMATCH",
        CompatibilityError::NameMismatch { .. } => "NAME_MISMATCH",
        _ => "TYPE_MISMATCH",
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Schema {
        Schema::parse_str(s).unwrap()
    }

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    const V2_DEFAULT: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}]}"#;
    const V2_NO_DEFAULT: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"string"}]}"#;

    fn existing<'a>(texts: &'a [&'a str], schemas: &'a [Schema]) -> Vec<Existing<'a>> {
        texts
            .iter()
            .zip(schemas)
            .enumerate()
            .map(|(i, (text, schema))| Existing {
                version: i as u32 + 1,
                text,
                schema,
            })
            .collect()
    }

    #[test]
    fn levels_round_trip_in_confluent_spelling() {
        for level in Compatibility::ALL {
            assert_eq!(level.to_string().parse::<Compatibility>(), Ok(level));
        }
        assert_eq!("full_transitive".parse(), Ok(Compatibility::FullTransitive));
        assert!("SIDEWAYS".parse::<Compatibility>().is_err());
    }

    #[test]
    fn backward_needs_defaults_for_added_fields() {
        let old = [parse(V1)];
        let olds = existing(&[V1], &old);
        assert!(check(Compatibility::Backward, &parse(V2_DEFAULT), &olds).is_empty());
        let messages = check(Compatibility::Backward, &parse(V2_NO_DEFAULT), &olds);
        assert!(
            messages[0].contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
            "{messages:?}"
        );
        assert!(messages.contains(&"{oldSchemaVersion: 1}".to_string()));
        assert!(check(Compatibility::None, &parse(V2_NO_DEFAULT), &olds).is_empty());
        // Forward: the old reader ignores the new field, so adding one is fine.
        assert!(check(Compatibility::Forward, &parse(V2_NO_DEFAULT), &olds).is_empty());
    }

    #[test]
    fn removing_an_enum_symbol_is_not_backward_compatible() {
        let v1 = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
        let v2 = r#"{"type":"enum","name":"E","symbols":["A"]}"#;
        let old = [parse(v1)];
        let messages = check(Compatibility::Backward, &parse(v2), &existing(&[v1], &old));
        assert!(!messages.is_empty());
    }

    #[test]
    fn transitive_levels_look_at_every_version() {
        let v1 = V1;
        let v2 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}]}"#;
        // v3 drops the default of b: readable from v2 data, not from v1 data.
        let v3 = V2_NO_DEFAULT;
        let olds_parsed = [parse(v1), parse(v2)];
        let texts = [v1, v2];
        let olds = existing(&texts, &olds_parsed);
        assert!(check(Compatibility::Backward, &parse(v3), &olds).is_empty());
        let messages = check(Compatibility::BackwardTransitive, &parse(v3), &olds);
        assert!(messages.contains(&"{oldSchemaVersion: 1}".to_string()));
    }
}
