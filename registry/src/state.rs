//! The registry's in-memory state: a pure function of the records of the schemas topic.
//!
//! [`State::apply`] is the only way state changes, both when replaying the topic at start-up
//! and after each write is acknowledged, so a restarted registry serves exactly what the
//! previous one did.

use std::collections::{BTreeMap, HashMap};

use crate::avro::{self, ParsedSchema};
use crate::compat::{self, Compatibility, Existing};
use crate::error::ApiError;
use crate::records::{Record, SchemaValue};

/// A version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VersionEntry {
    pub id: u32,
    pub deleted: bool,
}

/// A schema known under a global id.
#[derive(Debug, Clone)]
pub(crate) struct SchemaEntry {
    pub text: String,
    /// `None` for text apache-avro cannot parse (e.g. written by another registry); such a
    /// schema is still served by id but takes no part in compatibility checks.
    pub parsed: Option<ParsedSchema>,
}

/// Which version a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionSpec {
    Latest,
    Number(u32),
}

impl VersionSpec {
    /// `latest`, `-1` or an integer in `[1, 2^31-1]`, as Confluent accepts.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        if s == "latest" || s == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match s.parse::<i64>() {
            Ok(n) if (1..=i64::from(i32::MAX)).contains(&n) => Ok(VersionSpec::Number(n as u32)),
            _ => Err(ApiError::InvalidVersion(s.to_string())),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    /// Every id ever seen, including ids whose versions were all hard-deleted: an id is never
    /// given to a different schema, and re-registering a hard-deleted schema gets its old id.
    schemas: BTreeMap<u32, SchemaEntry>,
    ids_by_identity: HashMap<String, u32>,
    max_id: u32,
    global_level: Option<Compatibility>,
    subject_levels: BTreeMap<String, Compatibility>,
}

impl State {
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Schema {
                subject,
                version,
                value: Some(value),
            } => self.apply_schema(subject, *version, value),
            Record::Schema {
                subject,
                version,
                value: None,
            } => {
                if let Some(versions) = self.subjects.get_mut(subject) {
                    versions.remove(version);
                    if versions.is_empty() {
                        self.subjects.remove(subject);
                    }
                }
            }
            Record::Config {
                subject: None,
                level,
            } => self.global_level = *level,
            Record::Config {
                subject: Some(subject),
                level: Some(level),
            } => {
                self.subject_levels.insert(subject.clone(), *level);
            }
            Record::Config {
                subject: Some(subject),
                level: None,
            } => {
                self.subject_levels.remove(subject);
            }
            Record::DeleteSubject { subject, version } => {
                if let Some(versions) = self.subjects.get_mut(subject) {
                    for (_, entry) in versions.range_mut(..=*version) {
                        entry.deleted = true;
                    }
                }
            }
        }
    }

    fn apply_schema(&mut self, subject: &str, version: u32, value: &SchemaValue) {
        self.reserve_id(value.id);
        let is_avro = value
            .schema_type
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case("AVRO"));
        if !is_avro {
            tracing::warn!(
                subject,
                version,
                id = value.id,
                "skipping a {} schema: only AVRO is supported",
                value.schema_type.as_deref().unwrap_or_default()
            );
            return;
        }
        let entry = self.schemas.entry(value.id).or_insert_with(|| {
            let parsed = match avro::parse(&value.schema) {
                Ok(parsed) => Some(parsed),
                Err(reason) => {
                    tracing::warn!(id = value.id, "stored schema does not parse: {reason}");
                    None
                }
            };
            SchemaEntry {
                text: value.schema.clone(),
                parsed,
            }
        });
        if let Some(parsed) = &entry.parsed {
            self.ids_by_identity
                .entry(parsed.identity.clone())
                .or_insert(value.id);
        }
        self.subjects
            .entry(subject.to_string())
            .or_default()
            .insert(
                version,
                VersionEntry {
                    id: value.id,
                    deleted: value.deleted,
                },
            );
    }

    /// Marks `id` as used, so it is never handed to another schema. Called for every id seen
    /// and for ids of writes whose outcome is unknown (a failed produce may still have landed).
    pub fn reserve_id(&mut self, id: u32) {
        self.max_id = self.max_id.max(id);
    }

    // ---- reads -------------------------------------------------------------------------

    /// Subject names, sorted; subjects whose versions are all soft-deleted only on request.
    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, versions)| include_deleted || versions.values().any(|v| !v.deleted))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The versions of `subject` (ascending), or 40401 when there are none to show.
    pub fn versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<(u32, VersionEntry)>, ApiError> {
        let versions: Vec<_> = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, v)| include_deleted || !v.deleted)
            .map(|(n, v)| (*n, *v))
            .collect();
        if versions.is_empty() {
            return Err(ApiError::SubjectNotFound(subject.to_string()));
        }
        Ok(versions)
    }

    /// The version `spec` names, with 40401 for an unknown subject and 40402 for an unknown
    /// (or, without `include_deleted`, soft-deleted) version.
    pub fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<(u32, VersionEntry), ApiError> {
        let versions = self.versions(subject, include_deleted)?;
        let found = match spec {
            VersionSpec::Latest => versions.last().copied(),
            VersionSpec::Number(n) => versions.iter().find(|(v, _)| *v == n).copied(),
        };
        found.ok_or_else(|| {
            ApiError::VersionNotFound(match spec {
                VersionSpec::Latest => "latest".to_string(),
                VersionSpec::Number(n) => n.to_string(),
            })
        })
    }

    pub fn schema(&self, id: u32) -> Option<&SchemaEntry> {
        self.schemas.get(&id)
    }

    /// The schema of `id` if any version (soft-deleted ones included, since data written with
    /// them still needs decoding) refers to it.
    pub fn served_schema(&self, id: u32) -> Option<&SchemaEntry> {
        let referenced = self
            .subjects
            .values()
            .any(|versions| versions.values().any(|v| v.id == id));
        if referenced {
            self.schemas.get(&id)
        } else {
            None
        }
    }

    /// The subject/version pairs using `id`, sorted.
    pub fn usages(&self, id: u32, include_deleted: bool) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for (subject, versions) in &self.subjects {
            for (version, entry) in versions {
                if entry.id == id && (include_deleted || !entry.deleted) {
                    out.push((subject.clone(), *version));
                }
            }
        }
        out
    }

    /// The newest version of `subject` holding a schema equal to `schema`.
    pub fn find(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        include_deleted: bool,
    ) -> Option<(u32, VersionEntry)> {
        let id = *self.ids_by_identity.get(&schema.identity)?;
        self.subjects
            .get(subject)?
            .iter()
            .rev()
            .find(|(_, v)| v.id == id && (include_deleted || !v.deleted))
            .map(|(n, v)| (*n, *v))
    }

    /// The id `schema` has or would get.
    pub fn id_for(&self, schema: &ParsedSchema) -> u32 {
        match self.ids_by_identity.get(&schema.identity) {
            Some(id) => *id,
            None => self.max_id + 1,
        }
    }

    /// The number the next version of `subject` gets: one past every version it still holds,
    /// soft-deleted ones included, so a soft-deleted version is never overwritten.
    pub fn next_version(&self, subject: &str) -> u32 {
        self.subjects
            .get(subject)
            .and_then(|versions| versions.keys().next_back())
            .map_or(1, |v| v + 1)
    }

    pub fn global_level(&self) -> Option<Compatibility> {
        self.global_level
    }

    pub fn subject_level(&self, subject: &str) -> Option<Compatibility> {
        self.subject_levels.get(subject).copied()
    }

    /// The level that applies to `subject`: its own, else the global one, else `default`.
    pub fn effective_level(&self, subject: &str, default: Compatibility) -> Compatibility {
        self.subject_level(subject)
            .or(self.global_level)
            .unwrap_or(default)
    }

    /// Checks `schema` against the live versions of `subject` (all of them, or only `only`)
    /// and returns the incompatibility messages, empty when compatible.
    pub fn check_compatibility(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        level: Compatibility,
        only: Option<u32>,
    ) -> Vec<String> {
        let existing: Vec<Existing<'_>> = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(n, v)| !v.deleted && only.is_none_or(|o| o == **n))
            .filter_map(|(n, v)| {
                let entry = self.schemas.get(&v.id)?;
                Some(Existing {
                    version: *n,
                    text: &entry.text,
                    schema: &entry.parsed.as_ref()?.schema,
                })
            })
            .collect();
        compat::check(level, &schema.schema, &existing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_record(subject: &str, version: u32, id: u32, text: &str, deleted: bool) -> Record {
        Record::Schema {
            subject: subject.into(),
            version,
            value: Some(SchemaValue {
                subject: subject.into(),
                version,
                id,
                schema_type: None,
                schema: text.into(),
                deleted,
            }),
        }
    }

    #[test]
    fn versions_and_ids_follow_the_records() {
        let mut st = State::default();
        st.apply(&schema_record("a", 1, 1, r#""int""#, false));
        st.apply(&schema_record("a", 2, 2, r#""long""#, false));
        st.apply(&schema_record("b", 1, 1, r#""int""#, false));
        assert_eq!(st.subjects(false), vec!["a", "b"]);
        assert_eq!(st.version("a", VersionSpec::Latest, false).unwrap().0, 2);
        assert_eq!(st.usages(1, false), vec![("a".into(), 1), ("b".into(), 1)]);

        // Soft delete hides, hard delete removes, ids are never reused.
        st.apply(&schema_record("a", 2, 2, r#""long""#, true));
        assert_eq!(st.version("a", VersionSpec::Latest, false).unwrap().0, 1);
        assert_eq!(st.next_version("a"), 3);
        st.apply(&Record::Schema {
            subject: "a".into(),
            version: 2,
            value: None,
        });
        assert!(st.served_schema(2).is_none());
        let long = avro::parse(r#""long""#).unwrap();
        assert_eq!(st.id_for(&long), 2);
        let new = avro::parse(r#""string""#).unwrap();
        assert_eq!(st.id_for(&new), 3);
    }

    #[test]
    fn version_specs() {
        assert_eq!(VersionSpec::parse("latest").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("-1").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("7").unwrap(), VersionSpec::Number(7));
        for bad in ["0", "abc", "-2", "2147483648", ""] {
            assert!(VersionSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
