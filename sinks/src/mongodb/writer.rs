//! [`MongoWriter`]: applies a batch of changes as one client-level `bulkWrite`.
//!
//! Each change becomes one conditional write on its document:
//!
//! - upsert: `replaceOne({_id, version: {$not: {$gte: v}}}, doc, upsert)` (no stored version
//!   or an older one); patch: the same filter with `$set` of the fields. When the stored
//!   document is as new or newer, the filter matches nothing and the upsert tries to insert a
//!   second document with that `_id`: the server answers E11000 (duplicate key), which here
//!   means *stale*. An E11000 can also come from a unique business key (two products with one
//!   sku), so a duplicate is counted as stale only after reading the stored version; otherwise
//!   it is a rejection.
//! - delete: `deleteOne({_id, version: {$not: {$gt: v}}})`; deleting nothing is counted as
//!   stale.
//! - append: `insertOne({_id: "<key>#<version>"})`; a duplicate means already written.
//!
//! The bulk is unordered: the runner hands a coalesced batch (at most one change per entity, and
//! the batch is coalesced again here in case it is not), so the order between operations carries
//! no meaning, and an unordered bulk does not stop at the first stale duplicate.
//!
//! The write concern is majority + journal, since `Ok` lets the runner store offsets. SecantusDB
//! honours `j: true` only when started with `--sync-on-commit`; without it a SIGKILL of the
//! server loses acknowledged writes (tests/mongodb_restart.rs crashes a server started with it).

use std::collections::HashMap;
use std::time::Duration;

use ::mongodb::bson::{doc, Bson, Document};
use ::mongodb::error::{Error, ErrorKind, WriteError as ServerWriteError};
use ::mongodb::options::{
    Acknowledgment, ClientOptions, DeleteOneModel, InsertOneModel, ReplaceOneModel,
    UpdateModifications, UpdateOneModel, WriteConcern, WriteModel,
};
use ::mongodb::{Client, Database};

use super::{to_document, STORE};
use crate::change::{
    check_id_lengths, coalesce_counted, Change, Op, ViewWriter, WriteError, WriteOutcome,
};

/// Duplicate key.
const DUPLICATE_KEY: i32 = 11000;

/// Longest `_id` written: MongoDB's index-key limit (1024 bytes before 4.2, still the limit of
/// servers with `failIndexKeyTooLong`), checked by the writer so that the view does not depend
/// on which server version (or SecantusDB) runs it.
pub const MAX_ID_BYTES: usize = 1024;

/// Server error codes about the document itself: the only ones dead-lettered. Every other code
/// (auth 13/18, quota, server state, anything unknown) is retried, never dead-lettered.
const DATA_CODES: &[i32] = &[
    2,     // BadValue
    9,     // FailedToParse
    14,    // TypeMismatch
    28,    // PathNotViable
    52,    // DollarPrefixedFieldName
    53,    // InvalidIdField
    54,    // NotSingleValueField
    55,    // InvalidDBRef
    56,    // EmptyFieldName
    57,    // DottedFieldName
    66,    // ImmutableField
    121,   // DocumentValidationFailure
    10334, // BSONObjectTooLarge
    11000, // DuplicateKey (a unique business key; see `triage` for the stale case)
    17280, // KeyTooLong
    17419, // document too large after an update
];

/// Server error codes that a retry can cure (the server is shutting down, stepping down or
/// busy), as opposed to codes about the document itself.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Keeps MongoDB views; see the module documentation.
#[derive(Clone, Debug)]
pub struct MongoWriter {
    db: Database,
}

impl MongoWriter {
    /// A writer over database `database` of the server at `url`.
    ///
    /// Server selection and connection timeouts are a few seconds rather than the driver's 30 s,
    /// so an unreachable server surfaces quickly as [`WriteError::Unavailable`] and the runner's
    /// backoff, not the driver, decides how long to wait.
    pub async fn connect(url: &str, database: &str) -> Result<Self, WriteError> {
        let mut options = ClientOptions::parse(url).await.map_err(classify)?;
        // Unless the URL says otherwise (`serverSelectionTimeoutMS`, `connectTimeoutMS`).
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(5));
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(3));
        options.app_name.get_or_insert("tributary-sinks".into());
        let client = Client::with_options(options).map_err(classify)?;
        Ok(Self::new(client.database(database)))
    }

    /// A writer over an existing database handle.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database the views live in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn model(&self, c: &Change) -> WriteModel {
        let namespace = self.db.collection::<Document>(c.view).namespace();
        // "No version, or an older one", written as `$not: {$gte}` rather than an `$or` of
        // `$lt` and `$exists: false`: same meaning, but SecantusDB plans an `$or` beside `_id` as
        // a collection scan (15x slower at a few thousand documents), while this uses `_id`.
        let newer = doc! {
            "_id": &c.key,
            "version": { "$not": { "$gte": c.version } },
        };
        let stamped = |fields| {
            let mut d = to_document(fields);
            d.insert("version", Bson::Int64(c.version));
            d.insert("event_time_ms", Bson::Int64(c.event_time_ms));
            d
        };
        match &c.op {
            Op::Upsert(fields) => ReplaceOneModel::builder()
                .namespace(namespace)
                .filter(newer)
                .replacement(stamped(fields))
                .upsert(true)
                .build()
                .into(),
            Op::Patch(fields) => UpdateOneModel::builder()
                .namespace(namespace)
                .filter(newer)
                .update(UpdateModifications::Document(
                    doc! { "$set": stamped(fields) },
                ))
                .upsert(true)
                .build()
                .into(),
            Op::Delete => DeleteOneModel::builder()
                .namespace(namespace)
                .filter(doc! {
                    "_id": &c.key,
                    "version": { "$not": { "$gt": c.version } },
                })
                .build()
                .into(),
            Op::Append(fields) => {
                let mut d = stamped(fields);
                d.insert("_id", append_id(c));
                d.insert("key", &c.key);
                InsertOneModel::builder()
                    .namespace(namespace)
                    .document(d)
                    .build()
                    .into()
            }
        }
    }

    /// Sorts the write errors of a bulk into stale duplicates and rejections.
    async fn triage(
        &self,
        batch: &[Change],
        errors: Vec<(usize, ServerWriteError)>,
    ) -> Result<u64, WriteError> {
        let mut duplicates: Vec<&Change> = Vec::new();
        for (index, err) in &errors {
            let Some(change) = batch.get(*index) else {
                return Err(unavailable(format!(
                    "bulkWrite reported an error for operation {index} of {}",
                    batch.len()
                )));
            };
            if err.code != DUPLICATE_KEY {
                return Err(if DATA_CODES.contains(&err.code) {
                    rejected(change, err)
                } else {
                    unavailable(format!(
                        "{}/{}: code {}: {}",
                        change.view, change.key, err.code, err.message
                    ))
                });
            }
            // An append's `_id` is its (key, version): a duplicate is that entry, written before.
            if !matches!(change.op, Op::Append(_)) {
                duplicates.push(change);
            }
        }
        let stored = self.stored_versions(&duplicates).await?;
        for (index, err) in &errors {
            let change = &batch[*index];
            if matches!(change.op, Op::Append(_)) {
                continue;
            }
            let newer = stored
                .get(&(change.view, change.key.as_str()))
                .is_some_and(|v| *v >= change.version);
            if !newer {
                // Not our own `_id`: a unique business key (e.g. sku) held by another document.
                return Err(rejected(change, err));
            }
        }
        Ok(errors.len() as u64)
    }

    /// The stored versions of `changes`' documents, one query per collection (a replay makes
    /// every change a duplicate, so this must not be a query per change).
    async fn stored_versions<'a>(
        &self,
        changes: &[&'a Change],
    ) -> Result<HashMap<(&'static str, &'a str), i64>, WriteError> {
        let mut by_view: HashMap<&'static str, Vec<&'a str>> = HashMap::new();
        for c in changes {
            by_view.entry(c.view).or_default().push(&c.key);
        }
        let mut out = HashMap::new();
        for (view, keys) in by_view {
            let mut cursor = self
                .db
                .collection::<Document>(view)
                .find(doc! { "_id": { "$in": &keys } })
                .projection(doc! { "version": 1 })
                .await
                .map_err(classify)?;
            while cursor.advance().await.map_err(classify)? {
                let d = cursor.deserialize_current().map_err(classify)?;
                let (Ok(id), Some(version)) =
                    (d.get_str("_id"), d.get("version").and_then(Bson::as_i64))
                else {
                    continue;
                };
                if let Some(key) = keys.iter().find(|k| **k == id) {
                    out.insert((view, *key), version);
                }
            }
        }
        Ok(out)
    }
}

fn rejected(change: &Change, err: &ServerWriteError) -> WriteError {
    WriteError::Rejected {
        store: STORE,
        view: change.view,
        key: change.key.clone(),
        message: format!("code {}: {}", err.code, err.message),
    }
}

fn append_id(c: &Change) -> String {
    format!("{}#{}", c.key, c.version)
}

#[async_trait::async_trait]
impl ViewWriter for MongoWriter {
    fn store(&self) -> &'static str {
        STORE
    }

    async fn write(&self, batch: &[Change]) -> Result<WriteOutcome, WriteError> {
        // Coalesced again in case the caller did not; older duplicates of an entity are stale.
        let (batch, dropped) = coalesce_counted(batch.to_vec());
        check_id_lengths(
            STORE,
            &batch,
            MAX_ID_BYTES,
            "MongoDB's index-key limit",
            |c| match c.op {
                Op::Append(_) => append_id(c).len(),
                _ => c.key.len(),
            },
        )?;
        if batch.is_empty() {
            return Ok(WriteOutcome {
                applied: 0,
                stale: dropped,
            });
        }
        let models: Vec<WriteModel> = batch.iter().map(|c| self.model(c)).collect();
        let total = batch.len() as u64;
        // Majority + journal: `Ok` is what lets the runner store offsets, so the batch must
        // survive a server crash by then.
        let durable = WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .build();
        let result = self
            .db
            .client()
            .bulk_write(models)
            .ordered(false)
            .write_concern(durable)
            .await;
        let (summary, errors) = match result {
            Ok(summary) => (summary, Vec::new()),
            Err(e) => {
                let ErrorKind::BulkWrite(bulk) = &*e.kind else {
                    return Err(classify(e));
                };
                if !bulk.write_concern_errors.is_empty() {
                    // Not acknowledged as durable: retry the batch (it is idempotent).
                    return Err(unavailable(format!(
                        "write concern not satisfied: {:?}",
                        bulk.write_concern_errors
                    )));
                }
                if bulk.write_errors.is_empty() {
                    // The bulk failed as a whole (e.g. the connection dropped part way).
                    return Err(classify(e));
                }
                let summary = match &bulk.partial_result {
                    Some(::mongodb::error::PartialBulkWriteResult::Summary(s)) => s.clone(),
                    _ => Default::default(),
                };
                let mut errors: Vec<_> = bulk
                    .write_errors
                    .iter()
                    .map(|(i, w)| (*i, w.clone()))
                    .collect();
                errors.sort_by_key(|(i, _)| *i);
                (summary, errors)
            }
        };
        let stale_duplicates = self.triage(&batch, errors).await?;
        let applied = u64::try_from(
            summary.inserted_count
                + summary.upserted_count
                + summary.matched_count
                + summary.deleted_count,
        )
        .unwrap_or(0)
        .min(total);
        // Everything that neither took effect nor failed matched nothing because the stored
        // version is newer (or, for a delete, the document is already gone): stale.
        let stale = (total - applied).max(stale_duplicates) + dropped;
        Ok(WriteOutcome { applied, stale })
    }
}

fn unavailable(message: String) -> WriteError {
    WriteError::Unavailable {
        store: STORE,
        message,
    }
}

/// Maps a driver error that is not about one document: only a server code of [`DATA_CODES`]
/// or a document the driver cannot encode is the batch's fault (the runner narrows it down
/// record by record); network, selection, authentication and every other server error is
/// retried.
pub(crate) fn classify(e: Error) -> WriteError {
    if !is_transient(&e) && is_data_error(&e) {
        WriteError::Rejected {
            store: STORE,
            view: "(batch)",
            key: String::new(),
            message: e.to_string(),
        }
    } else {
        unavailable(e.to_string())
    }
}

fn is_data_error(e: &Error) -> bool {
    match &*e.kind {
        ErrorKind::Command(c) => DATA_CODES.contains(&c.code),
        ErrorKind::Write(::mongodb::error::WriteFailure::WriteError(w)) => {
            DATA_CODES.contains(&w.code)
        }
        ErrorKind::BsonSerialization(_) | ErrorKind::InvalidArgument { .. } => true,
        _ => false,
    }
}

fn is_transient(e: &Error) -> bool {
    // A failed bulk carries the error that stopped it (e.g. the connection dropped part way)
    // as its source.
    let source = std::error::Error::source(e).and_then(|s| s.downcast_ref::<Error>());
    let own = match &*e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. } => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        // Not acknowledged by enough members: the write may not be durable yet.
        ErrorKind::Write(::mongodb::error::WriteFailure::WriteConcernError(_)) => true,
        // Failed as a whole with nothing more said: the outcome is unknown, and a retry of the
        // (idempotent) batch settles it.
        ErrorKind::BulkWrite(b) => {
            !b.write_concern_errors.is_empty() || (b.write_errors.is_empty() && source.is_none())
        }
        _ => false,
    };
    own || e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
        || source.is_some_and(is_transient)
}
