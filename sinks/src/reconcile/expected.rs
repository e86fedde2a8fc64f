//! The expected view: every change of a replay folded into memory with the stores' versioned
//! semantics.
//!
//! - **Newer wins.** An upsert, patch or delete applies only when its version is newer than the
//!   entity's (and, where the store remembers deletes, newer than the entity's last delete).
//! - **Patches merge** into the entity, or create it with just their fields.
//! - **Deletes remove** the entity; a parent's delete removes its children too (PostgreSQL's
//!   `ON DELETE CASCADE`) and keeps them from being written while the parent is deleted.
//! - **Appends** are entries written once, identified by `(key, version)` unless the store says
//!   otherwise (see [`Rules::entry_id`]).
//!
//! The fold applies changes one at a time in log order, which is what the sink's coalescing
//! within a batch and the store's version check across batches amount to.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Entity, EntityId, Snapshot};
use crate::change::{Change, Fields, Op};

/// A child view whose rows belong to a parent entity, named by one of the child's fields.
#[derive(Debug, Clone, Copy)]
pub struct Child {
    pub parent: &'static str,
    pub view: &'static str,
    /// The child's field holding the parent's key.
    pub field: &'static str,
}

/// What a store does beyond the common rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The store remembers the version of a deleted entity (PostgreSQL's `sink_tombstones`,
    /// Redis' tombstone keys), so an older change after a delete stays deleted. MongoDB and the
    /// local Elasticsearch forget it: an entity deleted at `v` is recreated by any later change.
    pub remember_deletes: bool,
    pub children: Vec<Child>,
    /// The id of an append entry of `key` at `version` with `fields`.
    pub entry_id: fn(&str, i64, &Fields) -> String,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            remember_deletes: true,
            children: Vec::new(),
            entry_id,
        }
    }
}

/// The default append entry id: `<key>#<version>` (MongoDB's and Elasticsearch's `_id`).
pub fn entry_id(key: &str, version: i64, _fields: &Fields) -> String {
    format!("{key}#{version}")
}

/// The fold of a replay.
#[derive(Debug)]
pub struct Expected {
    rules: Rules,
    entities: HashMap<EntityId, Entity>,
    /// Version of the last delete of each deleted entity.
    deleted: HashMap<EntityId, i64>,
    /// Children of each parent key, per child view: `(child view, parent key) → child keys`.
    children: HashMap<(&'static str, String), HashSet<String>>,
    changes: u64,
}

/// What the fold ends with.
#[derive(Debug, Clone, Default)]
pub struct ExpectedView {
    pub entities: Snapshot,
    /// Versions of deleted entities (what a repair deletes an extra entity with).
    pub deleted: BTreeMap<EntityId, i64>,
    /// Changes folded.
    pub changes: u64,
}

impl Expected {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            entities: HashMap::new(),
            deleted: HashMap::new(),
            children: HashMap::new(),
            changes: 0,
        }
    }

    /// Folds one change in.
    pub fn apply(&mut self, c: Change) {
        self.changes += 1;
        if let Op::Append(fields) = c.op {
            let id = (c.view, (self.rules.entry_id)(&c.key, c.version, &fields));
            self.entities.entry(id).or_insert(Entity {
                version: c.version,
                fields,
                append_key: Some(c.key),
                event_time_ms: c.event_time_ms,
            });
            return;
        }
        let id: EntityId = (c.view, c.key);
        let held = self.entities.get(&id).map(|e| e.version);
        let deleted = if self.rules.remember_deletes {
            self.deleted.get(&id).copied()
        } else {
            None
        };
        if held.max(deleted).is_some_and(|v| c.version <= v) {
            return;
        }
        match c.op {
            Op::Delete => {
                self.entities.remove(&id);
                self.deleted.insert(id.clone(), c.version);
                self.cascade(&id);
            }
            Op::Upsert(fields) => {
                if self.parent_deleted(id.0, &fields) {
                    return;
                }
                self.index_child(&id, &fields);
                self.entities.insert(
                    id,
                    Entity {
                        version: c.version,
                        fields,
                        append_key: None,
                        event_time_ms: c.event_time_ms,
                    },
                );
            }
            Op::Patch(patch) => {
                if self.parent_deleted(id.0, &patch) {
                    return;
                }
                self.index_child(&id, &patch);
                let entity = self.entities.entry(id).or_insert(Entity {
                    version: c.version,
                    fields: Fields::new(),
                    append_key: None,
                    event_time_ms: c.event_time_ms,
                });
                entity.version = c.version;
                entity.event_time_ms = entity.event_time_ms.max(c.event_time_ms);
                entity.fields.extend(patch);
            }
            Op::Append(_) => {}
        }
    }

    /// True when `fields` name a parent that is deleted (PostgreSQL does not write a child of a
    /// tombstoned parent, whatever the versions).
    fn parent_deleted(&self, view: &'static str, fields: &Fields) -> bool {
        self.rules.children.iter().any(|rule| {
            rule.view == view
                && fields
                    .get(rule.field)
                    .and_then(|v| v.as_str())
                    .is_some_and(|p| self.deleted.contains_key(&(rule.parent, p.to_string())))
        })
    }

    fn index_child(&mut self, id: &EntityId, fields: &Fields) {
        for rule in self.rules.children.iter().filter(|r| r.view == id.0) {
            if let Some(parent) = fields.get(rule.field).and_then(|v| v.as_str()) {
                self.children
                    .entry((rule.view, parent.to_string()))
                    .or_default()
                    .insert(id.1.clone());
            }
        }
    }

    /// Removes the children of a deleted parent.
    fn cascade(&mut self, parent: &EntityId) {
        let rules: Vec<Child> = self
            .rules
            .children
            .iter()
            .filter(|r| r.parent == parent.0)
            .copied()
            .collect();
        for rule in rules {
            let Some(keys) = self.children.remove(&(rule.view, parent.1.clone())) else {
                continue;
            };
            for key in keys {
                let id = (rule.view, key);
                // The index may be stale: a patch can have moved the child to another parent.
                let belongs = self
                    .entities
                    .get(&id)
                    .and_then(|e| e.fields.get(rule.field))
                    .and_then(|v| v.as_str())
                    .is_some_and(|p| p == parent.1);
                if belongs {
                    self.entities.remove(&id);
                }
            }
        }
    }

    /// The expected entities and deletes, in id order.
    pub fn finish(self) -> ExpectedView {
        ExpectedView {
            entities: self.entities.into_iter().collect(),
            deleted: self.deleted.into_iter().collect(),
            changes: self.changes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: serde_json::Value) -> Fields {
        v.as_object().cloned().unwrap_or_default()
    }

    fn change(view: &'static str, key: &str, version: i64, op: Op) -> Change {
        Change {
            view,
            key: key.into(),
            version,
            event_time_ms: 0,
            op,
        }
    }

    #[test]
    fn newer_wins_patches_merge_and_deletes_are_remembered() {
        let mut e = Expected::new(Rules::default());
        e.apply(change(
            "u",
            "a",
            1,
            Op::Upsert(fields(json!({"x": 1, "y": 1}))),
        ));
        e.apply(change("u", "a", 3, Op::Patch(fields(json!({"y": 3})))));
        e.apply(change("u", "a", 2, Op::Patch(fields(json!({"y": 2})))));
        e.apply(change("u", "b", 1, Op::Upsert(fields(json!({"x": 1})))));
        e.apply(change("u", "b", 2, Op::Delete));
        e.apply(change("u", "b", 1, Op::Upsert(fields(json!({"x": 1})))));
        e.apply(change("o", "k", 1, Op::Append(fields(json!({"t": 1})))));
        e.apply(change("o", "k", 1, Op::Append(fields(json!({"t": 9})))));
        let view = e.finish();
        let ids: Vec<_> = view.entities.keys().cloned().collect();
        assert_eq!(ids, [("o", "k#1".to_string()), ("u", "a".to_string())]);
        let a = &view.entities[&("u", "a".to_string())];
        assert_eq!(
            (a.version, &a.fields),
            (3, &fields(json!({"x": 1, "y": 3})))
        );
        assert_eq!(
            view.entities[&("o", "k#1".to_string())].fields,
            fields(json!({"t": 1}))
        );
        assert_eq!(view.deleted.get(&("u", "b".to_string())), Some(&2));
    }

    #[test]
    fn a_store_without_delete_memory_recreates() {
        let mut e = Expected::new(Rules {
            remember_deletes: false,
            ..Rules::default()
        });
        e.apply(change("u", "b", 5, Op::Delete));
        e.apply(change("u", "b", 1, Op::Patch(fields(json!({"x": 1})))));
        assert_eq!(e.finish().entities.len(), 1);
    }

    #[test]
    fn a_parent_delete_removes_and_blocks_children() {
        let mut e = Expected::new(Rules {
            children: vec![Child {
                parent: "orders",
                view: "items",
                field: "order_id",
            }],
            ..Rules::default()
        });
        e.apply(change("orders", "o1", 1, Op::Upsert(Fields::new())));
        e.apply(change(
            "items",
            "o1/1",
            1,
            Op::Upsert(fields(json!({"order_id": "o1"}))),
        ));
        e.apply(change(
            "items",
            "o2/1",
            1,
            Op::Upsert(fields(json!({"order_id": "o2"}))),
        ));
        e.apply(change("orders", "o1", i64::MAX, Op::Delete));
        e.apply(change(
            "items",
            "o1/2",
            3,
            Op::Upsert(fields(json!({"order_id": "o1"}))),
        ));
        let ids: Vec<_> = e.finish().entities.into_keys().collect();
        assert_eq!(ids, [("items", "o2/1".to_string())]);
    }
}
