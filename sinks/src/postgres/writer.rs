//! Applies batches of changes to PostgreSQL in one transaction.

use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::views::{View, ViewKind, COPY_STAGE, CREATE_STAGE, VIEWS};
use crate::change::{check_id_lengths, Change, Op, ViewWriter, WriteError, WriteOutcome};

use super::STORE;

/// Longest entity id written. A btree entry must fit in a third of an 8 KB page (2704 bytes,
/// tuple header and the other key columns included); PostgreSQL checks the compressed size,
/// which depends on the text, so the writer refuses by raw size, leaving room for the rest of
/// the entry, and the same id is refused whatever it compresses to. A longer value in another
/// indexed column still comes back as SQLSTATE 54000, also a data error.
pub const MAX_ID_BYTES: usize = 2600;

/// The migrations under `sinks/migrations/postgres`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://...`; defaults to the local stack's (`TRIBUTARY_DATABASE_URL`'s default: the
    /// binary sets it from `--database-url`, libraries never read the environment).
    pub url: String,
    /// Schema holding the views (and `_sqlx_migrations`); `None` uses the server's
    /// `search_path`. Tests use a fresh schema each.
    pub schema: Option<String>,
    pub max_connections: u32,
    /// How long a write waits for a connection before the batch counts as unavailable.
    pub acquire_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: tributary_runtime::config::DATABASE_URL.default.to_string(),
            schema: None,
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the PostgreSQL sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("invalid PostgreSQL url or option: {0}")]
    Config(#[source] sqlx::Error),
    #[error("connecting to PostgreSQL failed: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("creating schema `{schema}` failed: {source}")]
    Schema {
        schema: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl PostgresError {
    pub fn retriable(&self) -> bool {
        matches!(self, PostgresError::Connect(_))
    }
}

impl PostgresConfig {
    /// A pool that connects on first use (so a writer can be built while the server is down).
    pub fn pool(&self) -> Result<PgPool, PostgresError> {
        let mut options = PgConnectOptions::from_str(&self.url).map_err(PostgresError::Config)?;
        if let Some(schema) = &self.schema {
            options = options.options([("search_path", schema.as_str())]);
        }
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy_with(options))
    }
}

/// Creates the configured schema if missing and applies the migrations. Safe to run from several
/// processes at once: sqlx's migrator holds a PostgreSQL advisory lock while it applies them.
pub async fn migrate(pool: &PgPool, schema: Option<&str>) -> Result<(), PostgresError> {
    if let Some(schema) = schema {
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            schema.replace('"', "\"\"")
        );
        if let Err(e) = sqlx::query(&sql).execute(pool).await {
            // Two runners creating the schema at once: one of them loses the race with a
            // unique violation, and the schema is there all the same.
            let raced = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "23505" || c == "42P06");
            if !raced {
                return Err(PostgresError::Schema {
                    schema: schema.to_string(),
                    source: e,
                });
            }
        }
    }
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The PostgreSQL [`ViewWriter`].
#[derive(Clone)]
pub struct PostgresWriter {
    pool: PgPool,
    statements: Vec<Statements>,
}

#[derive(Clone)]
struct Statements {
    view: &'static View,
    upsert: String,
    delete: String,
    append: Option<String>,
}

impl PostgresWriter {
    /// A writer over `pool`; the views must exist (see [`migrate`]).
    pub fn new(pool: PgPool) -> Self {
        let statements = VIEWS
            .iter()
            .map(|v| Statements {
                view: v,
                upsert: v.upsert_sql(),
                delete: v.delete_sql(),
                append: v.append_sql(),
            })
            .collect();
        Self { pool, statements }
    }

    /// Connects, migrates and returns the writer.
    pub async fn connect(config: &PostgresConfig) -> Result<Self, PostgresError> {
        let pool = config.pool()?;
        migrate(&pool, config.schema.as_deref()).await?;
        Ok(Self::new(pool))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The staged rows of a batch in `COPY` text format, and how many rows each view and operation
/// got (to skip statements with nothing to do and to count stale rows).
#[derive(Default)]
struct Stage {
    text: Vec<u8>,
    /// Per view (index in [`VIEWS`]): deletes, upserts, appends.
    counts: Vec<[u64; 3]>,
}

const DELETE: usize = 0;
const UPSERT: usize = 1;
const APPEND: usize = 2;

impl Stage {
    fn new() -> Self {
        Self {
            text: Vec::new(),
            counts: vec![[0; 3]; VIEWS.len()],
        }
    }

    fn push(&mut self, view: usize, op: usize, c: &Change, doc: Option<Value>) {
        let op_name = ["delete", "upsert", "append"][op];
        copy_field(&mut self.text, c.view);
        self.text.push(b'\t');
        copy_field(&mut self.text, op_name);
        self.text.push(b'\t');
        copy_field(&mut self.text, &c.key);
        self.text.push(b'\t');
        self.text
            .extend_from_slice(c.version.to_string().as_bytes());
        self.text.push(b'\t');
        self.text
            .extend_from_slice(c.event_time_ms.to_string().as_bytes());
        self.text.push(b'\t');
        match doc {
            Some(d) => copy_field(&mut self.text, &d.to_string()),
            None => self.text.extend_from_slice(b"\\N"),
        }
        self.text.push(b'\n');
        self.counts[view][op] += 1;
    }
}

/// Appends `s` as one field of `COPY`'s text format: backslash, tab, newline and carriage return
/// are escaped; everything else (UTF-8 included) goes as is.
fn copy_field(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

#[async_trait::async_trait]
impl ViewWriter for PostgresWriter {
    fn store(&self) -> &'static str {
        STORE
    }

    async fn write(&self, batch: &[Change]) -> Result<WriteOutcome, WriteError> {
        if batch.is_empty() {
            return Ok(WriteOutcome::default());
        }
        check_id_lengths(STORE, batch, MAX_ID_BYTES, "a btree index entry", |c| {
            c.key.len()
        })?;
        let mut stage = Stage::new();
        for c in batch {
            let Some(i) = VIEWS.iter().position(|v| v.name == c.view) else {
                return Err(WriteError::Rejected {
                    store: STORE,
                    view: c.view,
                    key: c.key.clone(),
                    message: "no such view in PostgreSQL".into(),
                });
            };
            let v = &VIEWS[i];
            match (&c.op, v.kind) {
                (Op::Upsert(fields), ViewKind::State) => {
                    // Every column present: absent ones become NULL rather than kept.
                    let mut doc = fields.clone();
                    for col in v.columns {
                        doc.entry(col.to_string()).or_insert(Value::Null);
                    }
                    stage.push(i, UPSERT, c, Some(Value::Object(doc)));
                }
                (Op::Patch(fields), ViewKind::State) => {
                    stage.push(i, UPSERT, c, Some(Value::Object(fields.clone())))
                }
                (Op::Delete, ViewKind::State) => stage.push(i, DELETE, c, None),
                (Op::Append(fields), ViewKind::Append { .. }) => {
                    stage.push(i, APPEND, c, Some(Value::Object(fields.clone())))
                }
                (op, _) => {
                    return Err(WriteError::Rejected {
                        store: STORE,
                        view: c.view,
                        key: c.key.clone(),
                        message: format!("{} does not fit view `{}`", op_name(op), v.name),
                    })
                }
            }
        }

        let batch_error = |e| classify(e, "(batch)");
        let mut tx = self.pool.begin().await.map_err(batch_error)?;
        sqlx::query(CREATE_STAGE)
            .execute(&mut *tx)
            .await
            .map_err(batch_error)?;
        let mut copy = tx.copy_in_raw(COPY_STAGE).await.map_err(batch_error)?;
        copy.send(stage.text).await.map_err(batch_error)?;
        copy.finish().await.map_err(batch_error)?;

        let mut total = 0u64;
        let mut applied = 0u64;
        for (i, st) in self.statements.iter().enumerate() {
            let counts = stage.counts[i];
            for (op, sql) in [
                (DELETE, Some(&st.delete)),
                (UPSERT, Some(&st.upsert)),
                (APPEND, st.append.as_ref()),
            ] {
                let Some(sql) = sql else { continue };
                if counts[op] == 0 {
                    continue;
                }
                total += counts[op];
                let done = sqlx::query(sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| classify(e, st.view.name))?;
                applied += done.rows_affected();
            }
        }
        // The staging table empties itself here (ON COMMIT DELETE ROWS).
        tx.commit().await.map_err(batch_error)?;
        Ok(WriteOutcome {
            applied,
            stale: total.saturating_sub(applied),
        })
    }

    fn pool_usage(&self) -> Option<(i64, i64)> {
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX);
        Some((idle, size.saturating_sub(idle)))
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Upsert(_) => "an upsert",
        Op::Patch(_) => "a patch",
        Op::Delete => "a delete",
        Op::Append(_) => "an append",
    }
}

/// Only an allow-list of SQLSTATEs is about the rows themselves and dead-lettered: integrity
/// constraints (class 23), data exceptions (class 22: bad values, too long for the column, NUL
/// bytes) and `54000` program limit exceeded (an index entry over btree's ~2.7 KB limit). The
/// statement covers many rows and PostgreSQL does not say which one failed; the runner narrows
/// it down record by record. Everything else is the server's or the deployment's state and is
/// retried, never dead-lettered: connection loss (08), auth (28), insufficient privilege
/// (42501) and other schema errors a migration or a grant fixes (42), insufficient resources
/// (53), operator intervention and shutdown (57), system errors (58), lock conflicts, timeouts.
fn classify(e: sqlx::Error, view: &'static str) -> WriteError {
    let code = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned());
    match code.as_deref() {
        Some(c) if is_data_error(c) => WriteError::Rejected {
            store: STORE,
            view,
            key: String::new(),
            message: format!("SQLSTATE {c}: {e}"),
        },
        Some(c) => WriteError::Unavailable {
            store: STORE,
            message: format!("SQLSTATE {c}: {e}"),
        },
        None => WriteError::Unavailable {
            store: STORE,
            message: e.to_string(),
        },
    }
}

/// The SQLSTATEs a retry cannot cure because they are about the data written.
pub(crate) fn is_data_error(sqlstate: &str) -> bool {
    sqlstate.starts_with("22") || sqlstate.starts_with("23") || sqlstate == "54000"
}

#[cfg(test)]
mod tests {
    use super::is_data_error;

    #[test]
    fn only_data_sqlstates_are_data_errors() {
        for data in ["23505", "23514", "22001", "22P02", "22021", "54000"] {
            assert!(is_data_error(data), "{data}");
        }
        for infra in [
            "08006", "28P01", "42501", "42P01", "53100", "57P01", "58030", "40001",
        ] {
            assert!(!is_data_error(infra), "{infra}");
        }
    }
}
