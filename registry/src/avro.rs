//! Parsing submitted schemas and deciding when two of them are "the same schema".

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use apache_avro::Schema;

/// A schema that parsed, with the key that identifies it across subjects.
#[derive(Debug, Clone)]
pub(crate) struct ParsedSchema {
    pub schema: Arc<Schema>,
    pub identity: String,
}

/// Parses Avro schema JSON, returning the parser's reason on failure.
pub(crate) fn parse(text: &str) -> Result<ParsedSchema, String> {
    // The parser is not expected to panic, but handlers must never panic on input, so a parser
    // bug becomes a 422 for that schema instead of a dropped connection.
    let schema = match catch_unwind(AssertUnwindSafe(|| Schema::parse_str(text))) {
        Ok(Ok(schema)) => schema,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("the Avro parser failed on this schema".to_string()),
    };
    let identity = identity(&schema, text);
    Ok(ParsedSchema {
        schema: Arc::new(schema),
        identity,
    })
}

/// The key under which equal schemas share one global id.
///
/// This is the parsed schema written back out as compact JSON: whitespace, key order and the
/// spelling of names (`"a.b.R"` versus `"name":"R","namespace":"a.b"`) do not matter, while
/// everything a reader can observe does. That is what Confluent compares (Avro Java's
/// `Schema.toString()`, its "canonical string").
///
/// Avro's *Parsing Canonical Form* (`Schema::canonical_form`) is deliberately not used: it
/// strips `default`, `doc`, `aliases` and `logicalType`, so `"long"` and
/// `{"type":"long","logicalType":"timestamp-millis"}` would share an id, and a consumer
/// fetching the writer schema by id would decode timestamps as plain longs. (It also panics
/// rather than failing on schemas it cannot serialise.)
fn identity(schema: &Schema, text: &str) -> String {
    match serde_json::to_string(schema) {
        Ok(json) => json,
        // Not expected for a schema that just parsed; the submitted text is still a sound
        // (if whitespace-sensitive) key.
        Err(_) => text.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_does_not_change_identity() {
        let a = parse(
            r#"{"type":"record","name":"R","namespace":"n","fields":[{"name":"a","type":"int"}]}"#,
        )
        .unwrap();
        let b = parse(
            r#"{ "fields": [ {"type": {"type": "int"}, "name": "a"} ],
                 "name": "n.R", "type": "record" }"#,
        )
        .unwrap();
        assert_eq!(a.identity, b.identity);
    }

    #[test]
    fn observable_differences_change_identity() {
        let plain = parse(r#""long""#).unwrap();
        let ts = parse(r#"{"type":"long","logicalType":"timestamp-millis"}"#).unwrap();
        assert_ne!(plain.identity, ts.identity);
        let no_default =
            parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#).unwrap();
        let default = parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":1}]}"#,
        )
        .unwrap();
        assert_ne!(no_default.identity, default.identity);
    }

    #[test]
    fn invalid_schemas_carry_the_reason() {
        let err = parse(r#"{"type":"record","name":"R"}"#).unwrap_err();
        assert!(!err.is_empty());
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"type":"nope"}"#).is_err());
    }
}
