//! The unit of work of every sink: a versioned change to one entity of one view.
//!
//! Events are facts about aggregates; a view row/document/key is an entity. A projection turns one
//! event into changes; a [`ViewWriter`] applies a batch of them to its store. Two rules make every
//! store replay-proof:
//!
//! 1. **Versions, not offsets.** Every change carries the aggregate's per-aggregate `sequence`. A
//!    store applies a change only when it is newer than the version it holds (an equal or older
//!    one is *stale* and skipped, and counted). Offsets change when a topic is replayed or
//!    repartitioned; sequences don't.
//! 2. **Coalescing keeps meaning.** Within a batch, several changes to one entity fold into one
//!    (see [`coalesce`]): a patch merges into what came before it, a delete wins over what came
//!    before it, and the folded change carries the last version. Order between entities does
//!    not matter; order within an entity is the topic's (Kafka keeps it per key).

use std::collections::HashMap;

use serde_json::{Map, Value};

/// Field name → value, as JSON: every store maps it to its own types.
pub type Fields = Map<String, Value>;

/// What a change does to its entity.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Replace the whole entity (create it when missing).
    Upsert(Fields),
    /// Set these fields of an existing entity; a patch of a missing entity creates it with
    /// just these fields.
    Patch(Fields),
    /// Remove the entity (a tombstone on the topic, or an event that ends the entity).
    Delete,
    /// Append-only entry identified by `(key, version)`: written once, never updated (the order
    /// event store). Replays find it present and skip it.
    Append(Fields),
}

/// One versioned change of one entity of one view.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The view: a table, collection, index or key family, named by the store's own terms.
    pub view: &'static str,
    /// The entity's id within the view.
    pub key: String,
    /// The per-aggregate sequence of the event this change comes from.
    pub version: i64,
    /// Event time (ms since the epoch) of that event, for freshness.
    pub event_time_ms: i64,
    pub op: Op,
}

/// Folds the changes of each entity in `changes` into one, keeping the first-seen order of
/// entities. `Append`s are never folded (each is its own entry). A change whose version is not
/// newer than what came before it for the same entity is stale and dropped (see
/// [`coalesce_counted`]).
pub fn coalesce(changes: Vec<Change>) -> Vec<Change> {
    coalesce_counted(changes).0
}

/// [`coalesce`], also returning how many changes it dropped as stale: a batch can hold an older
/// event after a newer one (a replay, or a duplicate), and folding it in would let it overwrite
/// the newer one before the store's version check ever sees it.
pub fn coalesce_counted(changes: Vec<Change>) -> (Vec<Change>, u64) {
    let mut stale = 0u64;
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    let mut index: HashMap<(&'static str, String), usize> = HashMap::new();
    for c in changes {
        if matches!(c.op, Op::Append(_)) {
            out.push(c);
            continue;
        }
        match index.get(&(c.view, c.key.clone())) {
            None => {
                index.insert((c.view, c.key.clone()), out.len());
                out.push(c);
            }
            Some(&i) => {
                let prev = &mut out[i];
                if c.version <= prev.version {
                    stale += 1;
                    continue;
                }
                let op = std::mem::replace(&mut prev.op, Op::Delete);
                prev.op = match (op, c.op) {
                    (Op::Upsert(mut base), Op::Patch(p)) => {
                        base.extend(p);
                        Op::Upsert(base)
                    }
                    (Op::Patch(mut base), Op::Patch(p)) => {
                        base.extend(p);
                        Op::Patch(base)
                    }
                    // A patch after a delete recreates the entity with just the patch.
                    (Op::Delete, Op::Patch(p)) => Op::Upsert(p),
                    (_, later) => later,
                };
                prev.version = prev.version.max(c.version);
                prev.event_time_ms = prev.event_time_ms.max(c.event_time_ms);
            }
        }
    }
    (out, stale)
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Changes that took effect.
    pub applied: u64,
    /// Changes skipped because the store held an equal or newer version.
    pub stale: u64,
}

/// Why a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store is unreachable or timed out: retry the same batch later, unchanged.
    #[error("{store} unavailable: {message}")]
    Unavailable {
        store: &'static str,
        message: String,
    },
    /// The store refused this entity as invalid: retrying cannot help; dead-letter it.
    #[error("{store} rejected {view}/{key}: {message}")]
    Rejected {
        store: &'static str,
        view: &'static str,
        key: String,
        message: String,
    },
}

impl WriteError {
    pub fn retriable(&self) -> bool {
        matches!(self, WriteError::Unavailable { .. })
    }
}

/// Refuses the first change of `batch` whose id in the store (`id_len` of the change: the key,
/// or what the writer builds from it) is longer than `max` bytes. Every store has such a limit
/// (an index entry, a document id); an id past it can never be written, so it is a data error
/// of that one change, found before the batch is sent rather than as an error the store may
/// report without saying which entity it was.
pub fn check_id_lengths(
    store: &'static str,
    batch: &[Change],
    max: usize,
    what: &str,
    id_len: impl Fn(&Change) -> usize,
) -> Result<(), WriteError> {
    match batch.iter().find(|c| id_len(c) > max) {
        None => Ok(()),
        Some(c) => Err(WriteError::Rejected {
            store,
            view: c.view,
            key: c.key.clone(),
            message: format!(
                "id of {} bytes is longer than {what} ({max} bytes)",
                id_len(c)
            ),
        }),
    }
}

/// A store that keeps views. `write` must be durable when it returns `Ok` (the runner stores
/// offsets right after) and idempotent by version (the runner may deliver a batch again after a
/// crash).
#[async_trait::async_trait]
pub trait ViewWriter: Send + Sync {
    /// The store's name, for metrics and errors: `postgres`, `mongodb`, `redis`, `elasticsearch`.
    fn store(&self) -> &'static str;
    /// Applies a coalesced batch.
    async fn write(&self, batch: &[Change]) -> Result<WriteOutcome, WriteError>;
    /// Connections of the store's pool as `(idle, in_use)`, when the writer keeps a pool; the
    /// runner exports it as a metric after each batch.
    fn pool_usage(&self) -> Option<(i64, i64)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    fn change(key: &str, version: i64, op: Op) -> Change {
        Change {
            view: "orders",
            key: key.into(),
            version,
            event_time_ms: version * 10,
            op,
        }
    }

    #[test]
    fn folds_per_entity_and_keeps_entity_order() {
        let out = coalesce(vec![
            change(
                "a",
                1,
                Op::Upsert(fields(json!({"status": "PLACED", "total": 5}))),
            ),
            change("b", 1, Op::Patch(fields(json!({"status": "PLACED"})))),
            change("a", 2, Op::Patch(fields(json!({"status": "CONFIRMED"})))),
            change("b", 2, Op::Delete),
            change("a", 3, Op::Append(fields(json!({"type": "X"})))),
        ]);
        assert_eq!(
            out,
            vec![
                Change {
                    event_time_ms: 20,
                    ..change(
                        "a",
                        2,
                        Op::Upsert(fields(json!({"status": "CONFIRMED", "total": 5})))
                    )
                },
                Change {
                    event_time_ms: 20,
                    ..change("b", 2, Op::Delete)
                },
                change("a", 3, Op::Append(fields(json!({"type": "X"})))),
            ]
        );
    }

    #[test]
    fn drops_older_versions_of_an_entity() {
        let (out, stale) = coalesce_counted(vec![
            change("a", 3, Op::Upsert(fields(json!({"name": "new"})))),
            change("a", 2, Op::Patch(fields(json!({"name": "old"})))),
            change("a", 3, Op::Patch(fields(json!({"name": "dup"})))),
        ]);
        assert_eq!(stale, 2);
        assert_eq!(
            out,
            vec![change("a", 3, Op::Upsert(fields(json!({"name": "new"}))))]
        );
    }

    #[test]
    fn patch_after_delete_recreates() {
        let out = coalesce(vec![
            change("a", 1, Op::Delete),
            change("a", 2, Op::Patch(fields(json!({"x": 1})))),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].op, Op::Upsert(fields(json!({"x": 1}))));
        assert_eq!(out[0].version, 2);
    }
}
