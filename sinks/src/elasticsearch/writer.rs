//! [`EsWriter`]: applies a batch of changes as one `_bulk` request.
//!
//! Versioning is the server's: every action carries `version_type=external` with the change's
//! version, and the server applies it only when it is greater than the stored `_version`; an
//! older or equal one comes back as item status 409 (`version_conflict_engine_exception`),
//! counted as stale.
//!
//! Patches: `_update` cannot be externally versioned, and the local server has no `if_seq_no`.
//! So a patch is turned into a whole document before the bulk: the current documents of the
//! batch's patched keys are read with one `_mget` per view, the patch is merged into the stored
//! source (or stands alone when there is none, like `doc_as_upsert`), and the result is indexed
//! with the patch's external version. A patch whose stored `_version` is already as new is
//! skipped as stale without being sent. The race this leaves: if another writer indexes the same
//! key between the `_mget` and the `_bulk` with a *lower* version, the merged document overwrites
//! that write's fields. Only one sink task owns a key at a time (keys are partitioned), so this
//! takes two writers of one partition, which the consumer group prevents.
//!
//! Writes go to the alias (see [`super::indices`]), with `require_alias` so that a missing alias
//! is an error rather than a new, dynamically mapped index, and never refresh: visibility follows
//! the index's refresh interval; tests refresh explicitly.
//!
//! Deletes: the local server (noida-db 0.2.3) does not keep the version of a deleted document
//! (Elasticsearch keeps it for `index.gc_deletes`, 60 s), so an older write arriving after a
//! versioned delete recreates the document there. Within one key the topic's order makes that
//! harmless (a redelivery replays up to and including the delete again).

use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};
use std::collections::HashMap;

use super::connect::EsSecurity;
use super::indices::call;
use super::projection::TOMBSTONE_VERSION;
use super::STORE;
use crate::change::{
    check_id_lengths, coalesce_counted, Change, Op, ViewWriter, WriteError, WriteOutcome,
};

/// Keeps Elasticsearch views; see the module documentation.
#[derive(Clone, Debug)]
pub struct EsWriter {
    client: Elasticsearch,
    prefix: String,
}

impl EsWriter {
    /// A writer to the server at `url`, writing to aliases `<prefix><view>`; credentials (the
    /// URL's userinfo), TLS and timeouts as [`super::connect`] sets them.
    pub fn connect(url: &str, prefix: impl Into<String>) -> Result<Self, WriteError> {
        Self::connect_with(url, &EsSecurity::default(), prefix)
    }

    /// [`EsWriter::connect`] with an API key or a CA file.
    pub fn connect_with(
        url: &str,
        security: &EsSecurity,
        prefix: impl Into<String>,
    ) -> Result<Self, WriteError> {
        Ok(Self::new(
            super::connect::client_with(url, security)?,
            prefix,
        ))
    }

    /// A writer over an existing client.
    pub fn new(client: Elasticsearch, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
        }
    }

    /// The client, e.g. to run [`super::indices::migrate`] with.
    pub fn client(&self) -> &Elasticsearch {
        &self.client
    }

    /// The prefix of every alias and index.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The alias of `view`.
    pub fn alias(&self, view: &str) -> String {
        format!("{}{view}", self.prefix)
    }

    /// The stored `_version` and `_source` of every existing document among the patched keys.
    async fn current(&self, batch: &[Change]) -> Result<Stored, WriteError> {
        let mut keys: HashMap<&'static str, Vec<&str>> = HashMap::new();
        for c in batch.iter().filter(|c| matches!(c.op, Op::Patch(_))) {
            keys.entry(c.view).or_default().push(&c.key);
        }
        let mut stored = Stored::new();
        for (view, ids) in keys {
            let path = format!("/{}/_mget", self.alias(view));
            let body = json!({ "ids": ids }).to_string();
            let (status, reply) = call(&self.client, Method::Post, &path, Some(body), JSON)
                .await
                .map_err(unreachable)?;
            if status.as_u16() == 404 {
                return Err(missing_alias(&self.alias(view)));
            }
            if !status.is_success() {
                return Err(status_error(status.as_u16(), view, "(mget)", &reply));
            }
            for doc in reply["docs"].as_array().into_iter().flatten() {
                let (Some(id), Some(version)) = (doc["_id"].as_str(), doc["_version"].as_i64())
                else {
                    continue;
                };
                if doc["found"] == true {
                    stored.insert((view, id.to_string()), (version, doc["_source"].clone()));
                }
            }
        }
        Ok(stored)
    }
}

/// Elasticsearch refuses a document `_id` longer than 512 bytes.
pub const MAX_ID_BYTES: usize = 512;

/// The `_id` of a change's document: its key, or `<key>#<version>` for an append entry.
fn document_id(c: &Change) -> String {
    match c.op {
        Op::Append(_) => format!("{}#{}", c.key, c.version),
        _ => c.key.clone(),
    }
}

type Stored = HashMap<(&'static str, String), (i64, Value)>;

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

#[async_trait::async_trait]
impl ViewWriter for EsWriter {
    fn store(&self) -> &'static str {
        STORE
    }

    async fn write(&self, batch: &[Change]) -> Result<WriteOutcome, WriteError> {
        // Coalesced again in case the caller did not; older duplicates of an entity are stale.
        let (batch, dropped) = coalesce_counted(batch.to_vec());
        // Checked here too (the server answers 400 `action_request_validation_exception`, a
        // data error): the rejection then names the entity, so the runner need not guess.
        check_id_lengths(
            STORE,
            &batch,
            MAX_ID_BYTES,
            "Elasticsearch's `_id` limit",
            |c| document_id(c).len(),
        )?;
        let stored = self.current(&batch).await?;
        let mut outcome = WriteOutcome {
            applied: 0,
            stale: dropped,
        };
        let mut body = String::new();
        // Which change each bulk item belongs to, in item order.
        let mut sent: Vec<&Change> = Vec::new();
        for c in &batch {
            let index = self.alias(c.view);
            let versioned = json!({
                "_index": &index,
                "_id": c.key,
                "version": c.version,
                "version_type": "external",
            });
            let (action, source) = match &c.op {
                Op::Upsert(fields) => ("index", Some(Value::Object(fields.clone()))),
                // An entry of its own, written once: `create` answers 409 when it exists.
                Op::Append(fields) => ("create", Some(Value::Object(fields.clone()))),
                Op::Patch(patch) => match stored.get(&(c.view, c.key.clone())) {
                    Some((version, _)) if *version >= c.version => {
                        outcome.stale += 1;
                        continue;
                    }
                    Some((_, Value::Object(current))) => {
                        let mut merged = current.clone();
                        merged.extend(patch.clone());
                        ("index", Some(Value::Object(merged)))
                    }
                    _ => ("index", Some(Value::Object(patch.clone()))),
                },
                Op::Delete => ("delete", None),
            };
            let meta = match &c.op {
                // A tombstone has no version of its own: delete whatever is stored.
                Op::Delete if c.version == TOMBSTONE_VERSION => {
                    json!({ action: { "_index": index, "_id": c.key } })
                }
                Op::Append(_) => json!({ action: {
                    "_index": index,
                    "_id": document_id(c),
                }}),
                _ => json!({ action: versioned }),
            };
            body.push_str(&meta.to_string());
            body.push('\n');
            if let Some(source) = source {
                body.push_str(&source.to_string());
                body.push('\n');
            }
            sent.push(c);
        }
        if sent.is_empty() {
            return Ok(outcome);
        }
        let (status, reply) = call(
            &self.client,
            Method::Post,
            // Without an alias the server would create a dynamically mapped index of that name.
            "/_bulk?require_alias=true",
            Some(body),
            NDJSON,
        )
        .await
        .map_err(unreachable)?;
        if !status.is_success() {
            return Err(status_error(status.as_u16(), "(bulk)", "", &reply));
        }
        let items = reply["items"].as_array().cloned().unwrap_or_default();
        if items.len() != sent.len() {
            // Without one item per action the outcome of each is unknown: retry the batch (it
            // is idempotent).
            return Err(WriteError::Unavailable {
                store: STORE,
                message: format!(
                    "_bulk answered {} items for {} actions",
                    items.len(),
                    sent.len()
                ),
            });
        }
        let mut rejected = None;
        for (item, c) in items.iter().zip(sent) {
            // Each item is `{ "<action>": { status, error?, result? } }`.
            let Some(result) = item.as_object().and_then(|o| o.values().next()) else {
                continue;
            };
            let code = result["status"].as_u64().unwrap_or(0);
            match code {
                200..=299 => outcome.applied += 1,
                // The stored version is as new or newer.
                409 => outcome.stale += 1,
                // A delete that found nothing.
                404 if result["error"].is_null() => outcome.stale += 1,
                // The alias is missing: a setup fault (migrations not run), not the record's.
                404 => return Err(missing_alias(&self.alias(c.view))),
                _ => {
                    let err = status_error(code as u16, c.view, &c.key, result);
                    if err.retriable() {
                        return Err(err);
                    }
                    rejected.get_or_insert(err);
                }
            }
        }
        match rejected {
            // The other items are applied; the runner dead-letters the rejected record and may
            // send the rest again, which the versions make a no-op.
            Some(err) => Err(err),
            None => Ok(outcome),
        }
    }
}

fn missing_alias(alias: &str) -> WriteError {
    WriteError::Unavailable {
        store: STORE,
        message: format!("alias `{alias}` does not exist: run the index migrations"),
    }
}

fn unreachable(e: elasticsearch::Error) -> WriteError {
    WriteError::Unavailable {
        store: STORE,
        message: e.to_string(),
    }
}

/// Only an allow-list of answers is about the document and dead-lettered: a 400 whose error
/// type says the document does not fit (mapping, parsing, strict mapping, illegal argument such
/// as an over-long `_id`), and 413 (the request is too large; for a whole `_bulk` the runner
/// narrows it down record by record). Everything else is the server's or the cluster's state
/// and is retried, never dead-lettered: 401/403 (credentials, and the `index.blocks.write` /
/// read-only blocks, `cluster_block_exception`), 404 (index or alias missing), 408, 429, 5xx,
/// a 400 of another type (e.g. `index_closed_exception`) and no answer at all.
fn status_error(status: u16, view: &'static str, key: &str, reply: &Value) -> WriteError {
    let kind = reply["error"]["type"].as_str().unwrap_or("");
    let reason = match &reply["error"] {
        Value::Null => reply.to_string(),
        Value::String(s) => s.clone(),
        e => format!(
            "{}: {}",
            e["type"].as_str().unwrap_or("error"),
            e["reason"].as_str().unwrap_or("")
        ),
    };
    if is_data_error(status, kind) {
        WriteError::Rejected {
            store: STORE,
            view,
            key: key.to_string(),
            message: format!("HTTP {status}: {reason}"),
        }
    } else {
        WriteError::Unavailable {
            store: STORE,
            message: format!("HTTP {status} for {view}/{key}: {reason}"),
        }
    }
}

/// Error types of a 400 that are about the document.
const DATA_ERROR_TYPES: &[&str] = &[
    "mapper_parsing_exception",
    "document_parsing_exception",
    "strict_dynamic_mapping_exception",
    "mapper_exception",
    "illegal_argument_exception",
    "parse_exception",
    "x_content_parse_exception",
    "json_parse_exception",
    "action_request_validation_exception",
    "number_format_exception",
    "date_time_parse_exception",
];

fn is_data_error(status: u16, error_type: &str) -> bool {
    match status {
        413 => true,
        400 => DATA_ERROR_TYPES.contains(&error_type),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_data_error;

    #[test]
    fn only_document_errors_are_data_errors() {
        assert!(is_data_error(400, "mapper_parsing_exception"));
        assert!(is_data_error(400, "strict_dynamic_mapping_exception"));
        assert!(is_data_error(413, ""));
        assert!(!is_data_error(400, "index_closed_exception"));
        for status in [401, 403, 404, 408, 429, 500, 502, 503] {
            assert!(
                !is_data_error(status, "cluster_block_exception"),
                "{status}"
            );
        }
    }
}
