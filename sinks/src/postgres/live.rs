//! PostgreSQL as reconcile sees it: the tables of [`VIEWS`], their data columns only.
//!
//! Timestamps are read back in the projection's own format (`iso8601`, UTC, milliseconds), so a
//! `timestamptz` compares equal to the string the projection produced. An order's items go with
//! it (`ON DELETE CASCADE`) and are not written while it is deleted, which [`Rules::children`]
//! tells the fold.

use std::collections::HashMap;

use futures::TryStreamExt;
use serde_json::Value;
use sqlx::PgPool;

use crate::change::Fields;
use crate::postgres::views::{View, ViewKind, VIEWS};
use crate::reconcile::expected::Child;
use crate::reconcile::RELEASED_VERSION;
use crate::reconcile::{
    normalize, Entity, EntityId, LiveStore, ReconcileError, Release, Rules, Snapshot,
};

use super::STORE;
/// See `migrations/postgres/*_tombstones.sql`.
const TOMBSTONES: &str = "sink_tombstones";

/// The PostgreSQL views of one schema (the pool's `search_path`).
#[derive(Clone)]
pub struct PostgresLive {
    pool: PgPool,
}

impl PostgresLive {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    fn error(action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> ReconcileError {
        let action = action.into();
        move |e| ReconcileError::Store {
            store: STORE,
            action,
            message: e.to_string(),
        }
    }

    /// Column name → data type of `table` in the current schema.
    async fn types(&self, table: &str) -> Result<HashMap<String, String>, ReconcileError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await
        .map_err(Self::error(format!("reading the columns of {table}")))?;
        Ok(rows.into_iter().collect())
    }

    /// `jsonb_build_object` of the data columns, timestamps formatted like the projection's.
    async fn document(&self, view: &View) -> Result<String, ReconcileError> {
        let types = self.types(view.name).await?;
        let pairs: Vec<String> = view
            .columns
            .iter()
            .map(|c| {
                let expr = match types.get(*c).map(String::as_str) {
                    Some("timestamp with time zone") => format!(
                        "to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                    ),
                    _ => (*c).to_string(),
                };
                format!("'{c}', {expr}")
            })
            .collect();
        Ok(format!("jsonb_build_object({})", pairs.join(", ")))
    }
}

fn view_of(name: &str) -> Option<&'static View> {
    VIEWS.iter().find(|v| v.name == name)
}

/// `<key>#<version>` → `(key, version)`.
fn split_entry(id: &str) -> Option<(&str, i64)> {
    let (key, version) = id.rsplit_once('#')?;
    Some((key, version.parse().ok()?))
}

#[async_trait::async_trait]
impl LiveStore for PostgresLive {
    fn views(&self) -> Vec<&'static str> {
        VIEWS.iter().map(|v| v.name).collect()
    }

    fn rules(&self) -> Rules {
        Rules {
            remember_deletes: true,
            children: VIEWS
                .iter()
                .filter_map(|v| {
                    v.parent.map(|(parent, field)| Child {
                        parent,
                        view: v.name,
                        field,
                    })
                })
                .collect(),
            ..Rules::default()
        }
    }

    fn expected_fields(&self, id: &EntityId, entity: &Entity, _now_ms: i64) -> Option<Fields> {
        let view = view_of(id.0)?;
        // Only the table's columns: `jsonb_populate_record` ignores anything else.
        let kept: Fields = entity
            .fields
            .iter()
            .filter(|(k, _)| view.columns.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(normalize(kept))
    }

    async fn read(&self) -> Result<Snapshot, ReconcileError> {
        let mut out = Snapshot::new();
        for view in VIEWS {
            let doc = self.document(view).await?;
            let sql = match view.kind {
                ViewKind::State => format!("SELECT id, version, {doc} FROM {}", view.name),
                ViewKind::Append { key, version, .. } => {
                    format!("SELECT {key}, {version}, {doc} FROM {}", view.name)
                }
            };
            let mut rows = sqlx::query_as::<_, (String, i64, Value)>(&sql).fetch(&self.pool);
            while let Some((key, version, doc)) = rows
                .try_next()
                .await
                .map_err(Self::error(format!("reading {}", view.name)))?
            {
                let fields = match doc {
                    Value::Object(map) => normalize(map),
                    _ => Fields::new(),
                };
                let (id, append_key) = match view.kind {
                    ViewKind::State => (key, None),
                    ViewKind::Append { .. } => (format!("{key}#{version}"), Some(key)),
                };
                out.insert(
                    (view.name, id),
                    Entity {
                        version,
                        fields,
                        append_key,
                        event_time_ms: 0,
                    },
                );
            }
        }
        Ok(out)
    }

    /// In one transaction: a state row's version drops to [`RELEASED_VERSION`] (an `UPDATE`,
    /// not a delete, which would cascade to an order's items); tombstones of entities to
    /// rewrite are forgotten (the log says they exist); an append entry is deleted, since its
    /// version is part of its key.
    async fn release(&self, items: &[Release<'_>]) -> Result<(), ReconcileError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Self::error("starting the release"))?;
        for item in items {
            let Some(view) = view_of(item.id.0) else {
                continue;
            };
            let t = view.name;
            match view.kind {
                ViewKind::State => {
                    sqlx::query(&format!("UPDATE {t} SET version = $1 WHERE id = $2"))
                        .bind(RELEASED_VERSION)
                        .bind(&item.id.1)
                        .execute(&mut *tx)
                        .await
                        .map_err(Self::error(format!("releasing {t}/{}", item.id.1)))?;
                    if item.rewrite {
                        sqlx::query(&format!(
                            "DELETE FROM {TOMBSTONES} WHERE view = $1 AND id = $2"
                        ))
                        .bind(t)
                        .bind(&item.id.1)
                        .execute(&mut *tx)
                        .await
                        .map_err(Self::error(format!(
                            "forgetting the delete of {t}/{}",
                            item.id.1
                        )))?;
                    }
                }
                ViewKind::Append { key, version, .. } => {
                    let Some((k, v)) = split_entry(&item.id.1) else {
                        continue;
                    };
                    sqlx::query(&format!(
                        "DELETE FROM {t} WHERE {key} = $1 AND {version} = $2"
                    ))
                    .bind(k)
                    .bind(v)
                    .execute(&mut *tx)
                    .await
                    .map_err(Self::error(format!("releasing {t}/{}", item.id.1)))?;
                }
            }
        }
        tx.commit()
            .await
            .map_err(Self::error("committing the release"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_split_at_the_last_hash() {
        assert_eq!(split_entry("o#1#12"), Some(("o#1", 12)));
        assert_eq!(split_entry("o1"), None);
    }
}
