//! MongoDB as reconcile sees it: the collections the projection feeds, each document without
//! the writer's bookkeeping (`_id`, `version`, `event_time_ms`).
//!
//! MongoDB keeps no memory of a deleted document's version, so the fold forgets deletes too
//! ([`Rules::remember_deletes`] is false).

use ::mongodb::bson::{doc, Bson, Document};
use ::mongodb::Database;

use crate::change::Fields;
use crate::mongodb::projection::{NOTIFICATIONS, PRODUCTS, STOCK_RESERVATIONS};
use crate::reconcile::RELEASED_VERSION;
use crate::reconcile::{
    normalize, Entity, EntityId, LiveStore, ReconcileError, Release, Rules, Snapshot,
};

use super::STORE;
/// The fields the writer adds to every document.
const BOOKKEEPING: &[&str] = &["_id", "version", "event_time_ms"];

/// The MongoDB views of one database.
#[derive(Clone, Debug)]
pub struct MongoLive {
    db: Database,
}

impl MongoLive {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

fn error(action: String) -> impl FnOnce(::mongodb::error::Error) -> ReconcileError {
    move |e| ReconcileError::Store {
        store: STORE,
        action,
        message: e.to_string(),
    }
}

/// A document's `_id` as a string (the writer always writes strings; anything else is shown as
/// its extended JSON).
fn id_of(d: &Document) -> String {
    match d.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.clone().into_relaxed_extjson().to_string(),
        None => String::new(),
    }
}

#[async_trait::async_trait]
impl LiveStore for MongoLive {
    fn views(&self) -> Vec<&'static str> {
        vec![PRODUCTS, STOCK_RESERVATIONS, NOTIFICATIONS]
    }

    fn rules(&self) -> Rules {
        Rules {
            remember_deletes: false,
            ..Rules::default()
        }
    }

    fn expected_fields(&self, _id: &EntityId, entity: &Entity, _now_ms: i64) -> Option<Fields> {
        Some(normalize(entity.fields.clone()))
    }

    async fn read(&self) -> Result<Snapshot, ReconcileError> {
        let mut out = Snapshot::new();
        for view in self.views() {
            let mut cursor = self
                .db
                .collection::<Document>(view)
                .find(doc! {})
                .await
                .map_err(error(format!("reading {view}")))?;
            while cursor
                .advance()
                .await
                .map_err(error(format!("reading {view}")))?
            {
                let d = cursor
                    .deserialize_current()
                    .map_err(error(format!("reading a document of {view}")))?;
                let id = id_of(&d);
                let version = d.get("version").and_then(Bson::as_i64).unwrap_or(0);
                let fields: Fields = d
                    .into_iter()
                    .filter(|(k, _)| !BOOKKEEPING.contains(&k.as_str()))
                    .map(|(k, v)| (k, v.into_relaxed_extjson()))
                    .collect();
                out.insert(
                    (view, id),
                    Entity {
                        version,
                        fields: normalize(fields),
                        append_key: None,
                        event_time_ms: 0,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Sets `version` to [`RELEASED_VERSION`]: the writer's filter (`version` not `>=` the
    /// change's) then matches, and its replace or delete goes through.
    async fn release(&self, items: &[Release<'_>]) -> Result<(), ReconcileError> {
        for view in self.views() {
            let ids: Vec<&str> = items
                .iter()
                .filter(|i| i.id.0 == view && i.live.is_some())
                .map(|i| i.id.1.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            self.db
                .collection::<Document>(view)
                .update_many(
                    doc! { "_id": { "$in": ids } },
                    doc! { "$set": { "version": Bson::Int64(RELEASED_VERSION) } },
                )
                .await
                .map_err(error(format!("releasing documents of {view}")))?;
        }
        Ok(())
    }
}
