//! The records of the schemas topic, byte-compatible with Confluent's `_schemas`.
//!
//! Keys are JSON with a fixed field order, because log compaction compares key *bytes*: the
//! same logical key must always serialise identically, and identically to Confluent's so a
//! topic written by either registry compacts correctly.
//!
//! - `{"keytype":"SCHEMA","subject":s,"version":v,"magic":1}` →
//!   `{"subject":s,"version":v,"id":n,"schema":"…","deleted":false}`; a null value (tombstone)
//!   is a hard delete.
//! - `{"keytype":"CONFIG","subject":s|null,"magic":0}` → `{"compatibilityLevel":"FULL"}`; a
//!   null value removes the level.
//! - `DELETE_SUBJECT` (written by Confluent for a soft delete of a subject) is understood on
//!   load; other key types Confluent writes (`NOOP`, `MODE`, `CLEAR_SUBJECT`, …) are skipped.

use serde::{Deserialize, Serialize};

use crate::compat::Compatibility;

/// One record of the schemas topic, as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Schema {
        subject: String,
        version: u32,
        /// `None` is a tombstone: the version is permanently deleted.
        value: Option<SchemaValue>,
    },
    Config {
        /// `None` is the global level.
        subject: Option<String>,
        /// `None` removes the level (a tombstone, or a value without `compatibilityLevel`).
        level: Option<Compatibility>,
    },
    /// Every version of `subject` up to and including `version` is soft-deleted.
    DeleteSubject { subject: String, version: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    /// Confluent omits the type for Avro; other types are kept on load only to be skipped.
    #[serde(
        rename = "schemaType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_type: Option<String>,
    pub schema: String,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Serialize)]
struct SchemaKey<'a> {
    keytype: &'static str,
    subject: &'a str,
    version: u32,
    magic: u32,
}

#[derive(Serialize)]
struct ConfigKey<'a> {
    keytype: &'static str,
    subject: Option<&'a str>,
    magic: u32,
}

#[derive(Serialize, Deserialize)]
struct ConfigValue {
    #[serde(rename = "compatibilityLevel", default)]
    compatibility_level: Option<String>,
}

/// Any key, read loosely: only the fields the key types we understand need.
#[derive(Deserialize)]
struct AnyKey {
    keytype: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    version: Option<u32>,
}

#[derive(Deserialize)]
struct DeleteSubjectValue {
    subject: String,
    version: u32,
}

impl Record {
    pub fn key_bytes(&self) -> Vec<u8> {
        let encoded = match self {
            Record::Schema {
                subject, version, ..
            } => serde_json::to_vec(&SchemaKey {
                keytype: "SCHEMA",
                subject,
                version: *version,
                magic: 1,
            }),
            Record::Config { subject, .. } => serde_json::to_vec(&ConfigKey {
                keytype: "CONFIG",
                subject: subject.as_deref(),
                magic: 0,
            }),
            Record::DeleteSubject { subject, .. } => serde_json::to_vec(&serde_json::json!({
                "keytype": "DELETE_SUBJECT", "subject": subject, "magic": 0,
            })),
        };
        // Serialising these plain structs cannot fail.
        encoded.unwrap_or_default()
    }

    /// The record's value; `None` is a tombstone.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        let encoded = match self {
            Record::Schema { value, .. } => serde_json::to_vec(value.as_ref()?),
            Record::Config { level, .. } => serde_json::to_vec(&ConfigValue {
                compatibility_level: Some(level.as_ref()?.to_string()),
            }),
            Record::DeleteSubject { subject, version } => {
                serde_json::to_vec(&serde_json::json!({ "subject": subject, "version": version }))
            }
        };
        encoded.ok()
    }

    /// Reads a record of the topic. `Ok(None)` for key types this registry does not act on;
    /// `Err` with a reason for records that cannot be understood.
    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<Record>, String> {
        let key = key.ok_or("record without a key")?;
        let parsed: AnyKey =
            serde_json::from_slice(key).map_err(|e| format!("unreadable key: {e}"))?;
        match parsed.keytype.as_str() {
            "SCHEMA" => {
                let subject = parsed.subject.ok_or("SCHEMA key without a subject")?;
                let version = parsed.version.ok_or("SCHEMA key without a version")?;
                let value = match value {
                    None => None,
                    Some(bytes) => Some(
                        serde_json::from_slice::<SchemaValue>(bytes)
                            .map_err(|e| format!("unreadable SCHEMA value: {e}"))?,
                    ),
                };
                Ok(Some(Record::Schema {
                    subject,
                    version,
                    value,
                }))
            }
            "CONFIG" => {
                let level = match value {
                    None => None,
                    Some(bytes) => {
                        let v: ConfigValue = serde_json::from_slice(bytes)
                            .map_err(|e| format!("unreadable CONFIG value: {e}"))?;
                        match v.compatibility_level {
                            None => None,
                            Some(s) => Some(s.parse::<Compatibility>().map_err(|e| e.to_string())?),
                        }
                    }
                };
                Ok(Some(Record::Config {
                    subject: parsed.subject,
                    level,
                }))
            }
            "DELETE_SUBJECT" => match value {
                None => Ok(None),
                Some(bytes) => {
                    let v: DeleteSubjectValue = serde_json::from_slice(bytes)
                        .map_err(|e| format!("unreadable DELETE_SUBJECT value: {e}"))?;
                    Ok(Some(Record::DeleteSubject {
                        subject: v.subject,
                        version: v.version,
                    }))
                }
            },
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_confluent_byte_for_byte() {
        let schema = Record::Schema {
            subject: "orders-value".into(),
            version: 3,
            value: None,
        };
        assert_eq!(
            schema.key_bytes(),
            br#"{"keytype":"SCHEMA","subject":"orders-value","version":3,"magic":1}"#
        );
        let global = Record::Config {
            subject: None,
            level: None,
        };
        assert_eq!(
            global.key_bytes(),
            br#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
    }

    #[test]
    fn records_round_trip() {
        let records = [
            Record::Schema {
                subject: "s".into(),
                version: 1,
                value: Some(SchemaValue {
                    subject: "s".into(),
                    version: 1,
                    id: 7,
                    schema_type: None,
                    schema: r#""string""#.into(),
                    deleted: true,
                }),
            },
            Record::Schema {
                subject: "s".into(),
                version: 1,
                value: None,
            },
            Record::Config {
                subject: Some("s".into()),
                level: Some(Compatibility::FullTransitive),
            },
            Record::Config {
                subject: None,
                level: None,
            },
        ];
        for r in records {
            let decoded = Record::decode(Some(&r.key_bytes()), r.value_bytes().as_deref());
            assert_eq!(decoded, Ok(Some(r)));
        }
    }

    #[test]
    fn confluent_records_are_understood_or_skipped() {
        let value = br#"{"subject":"s","version":1,"id":1,"schema":"\"int\"","deleted":false}"#;
        let key = br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#;
        assert!(matches!(
            Record::decode(Some(key), Some(value)),
            Ok(Some(Record::Schema { .. }))
        ));
        let noop = br#"{"keytype":"NOOP","magic":0}"#;
        assert_eq!(Record::decode(Some(noop), None), Ok(None));
        let delete = br#"{"keytype":"DELETE_SUBJECT","subject":"s","magic":0}"#;
        assert_eq!(
            Record::decode(Some(delete), Some(br#"{"subject":"s","version":2}"#)),
            Ok(Some(Record::DeleteSubject {
                subject: "s".into(),
                version: 2
            }))
        );
        assert!(Record::decode(Some(b"garbage"), None).is_err());
        assert!(Record::decode(None, None).is_err());
    }
}
