//! PostgreSQL: a fresh schema beside the live one, its tables moved in by one transaction.
//!
//! The copy is the schema `<live>_rebuild`, created and migrated like any sink schema
//! ([`PostgresWriter::connect`] with `schema: Some(..)`), so it holds every table of the
//! migrations: the views, `sink_tombstones` (the replay's deletes leave their tombstones there,
//! exactly as in the sink) and `_sqlx_migrations` (the same migrations, so the same history).
//!
//! The swap is **one** transaction: it locks the live tables, creates `<live>_old`, moves every
//! live table that the copy also has there (`ALTER TABLE .. SET SCHEMA`), then moves every table
//! of the copy into the live schema. Indexes, constraints (the `order_items → orders` foreign
//! key) and owned sequences move with their tables. A reader blocks on the locks for the
//! moment the transaction takes and then sees the new tables; it never sees the schema without
//! them. The sink resolves its unqualified table names through its `search_path` (the live
//! schema's name) and so writes to the new tables after the swap; its prepared statements are
//! re-planned, since the tables they used were altered. Tables of the live schema that the
//! migrations do not create are left alone. `<live>_old` is dropped afterwards.
//!
//! A deadlock with a sink transaction (PostgreSQL aborts one of the two) or a lock timeout is
//! retried a few times; the sink retries its own batch.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::change::ViewWriter;
use crate::postgres::{PostgresConfig, PostgresWriter};
use crate::rebuild::{derived, RebuildError, Target};

use super::STORE;
/// PostgreSQL's limit on identifiers (bytes).
const NAME_MAX: usize = 63;

/// The PostgreSQL views of one schema.
pub struct PostgresTarget {
    /// Connects to the live schema (its `search_path`).
    config: PostgresConfig,
    pool: PgPool,
    live: String,
    scratch: String,
    old: String,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn failed(action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> RebuildError {
    let action = action.into();
    move |e| RebuildError::store(STORE, action)(e.to_string())
}

impl PostgresTarget {
    /// Rebuilds the views `config` points at: its schema, or the server's `current_schema()`
    /// when it names none.
    pub async fn new(config: &PostgresConfig) -> Result<Self, RebuildError> {
        let pool = config
            .pool()
            .map_err(|e| RebuildError::store(STORE, "connecting")(e.to_string()))?;
        Self::with_pool(config, pool).await
    }

    /// [`PostgresTarget::new`] over a pool already connected with `config` (the sink writer's).
    pub async fn with_pool(config: &PostgresConfig, pool: PgPool) -> Result<Self, RebuildError> {
        let live = match &config.schema {
            Some(s) => s.clone(),
            None => sqlx::query_scalar::<_, String>("SELECT current_schema()::text")
                .fetch_one(&pool)
                .await
                .map_err(failed("reading the current schema"))?,
        };
        Ok(Self {
            config: config.clone(),
            pool,
            scratch: derived(&live, NAME_MAX, "_rebuild"),
            old: derived(&live, NAME_MAX, "_old"),
            live,
        })
    }

    /// The schema the copy is built in.
    pub fn scratch_schema(&self) -> &str {
        &self.scratch
    }

    /// The schema the live tables are moved to by the swap (dropped after it).
    pub fn old_schema(&self) -> &str {
        &self.old
    }

    async fn drop_schema(&self, schema: &str) -> Result<(), RebuildError> {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(schema)))
            .execute(&self.pool)
            .await
            .map_err(failed(format!("dropping schema {schema}")))?;
        Ok(())
    }

    async fn tables(&self, schema: &str) -> Result<Vec<String>, RebuildError> {
        sqlx::query_scalar::<_, String>(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY tablename",
        )
        .bind(schema)
        .fetch_all(&self.pool)
        .await
        .map_err(failed(format!("listing the tables of {schema}")))
    }

    async fn swap_once(&self, copy: &[String], live: &[String]) -> Result<(), sqlx::Error> {
        let moving: Vec<&String> = copy.iter().filter(|t| live.contains(t)).collect();
        let (l, s, o) = (quote(&self.live), quote(&self.scratch), quote(&self.old));
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '10s'")
            .execute(&mut *tx)
            .await?;
        if !moving.is_empty() {
            let names: Vec<String> = moving.iter().map(|t| format!("{l}.{}", quote(t))).collect();
            sqlx::query(&format!(
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                names.join(", ")
            ))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(&format!("CREATE SCHEMA {o}"))
            .execute(&mut *tx)
            .await?;
        for t in &moving {
            sqlx::query(&format!("ALTER TABLE {l}.{} SET SCHEMA {o}", quote(t)))
                .execute(&mut *tx)
                .await?;
        }
        for t in copy {
            sqlx::query(&format!("ALTER TABLE {s}.{} SET SCHEMA {l}", quote(t)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

#[async_trait::async_trait]
impl Target for PostgresTarget {
    fn copy(&self) -> String {
        format!("schema {}", self.scratch)
    }

    async fn prepare(&self) -> Result<Arc<dyn ViewWriter>, RebuildError> {
        // Leftovers of an interrupted rebuild (the lock says none is running).
        self.drop_schema(&self.scratch).await?;
        self.drop_schema(&self.old).await?;
        let config = PostgresConfig {
            schema: Some(self.scratch.clone()),
            ..self.config.clone()
        };
        let writer = PostgresWriter::connect(&config).await.map_err(|e| {
            RebuildError::store(STORE, format!("creating schema {}", self.scratch))(e.to_string())
        })?;
        Ok(Arc::new(writer))
    }

    async fn swap(&self) -> Result<(), RebuildError> {
        let copy = self.tables(&self.scratch).await?;
        if copy.is_empty() {
            return Err(RebuildError::store(STORE, "swapping")(format!(
                "the copy {} has no tables",
                self.scratch
            )));
        }
        let mut attempt = 1;
        loop {
            let live = self.tables(&self.live).await?;
            match self.swap_once(&copy, &live).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // 40P01 deadlock, 55P03 lock timeout: a sink transaction was in the way.
                    let busy = e
                        .as_database_error()
                        .and_then(|d| d.code())
                        .is_some_and(|c| c == "40P01" || c == "55P03");
                    if !busy || attempt >= 5 {
                        return Err(failed(format!(
                            "moving the tables of {} into {}",
                            self.scratch, self.live
                        ))(e));
                    }
                    tracing::warn!(error = %e, attempt, "swap blocked by a writer; retrying");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn drop_old(&self) -> Result<(), RebuildError> {
        self.drop_schema(&self.old).await?;
        self.drop_schema(&self.scratch).await
    }

    async fn discard(&self) -> Result<(), RebuildError> {
        self.drop_schema(&self.scratch).await
    }
}
