//! PostgreSQL's share of the data-growth metrics: rows and bytes per table.

use super::STORE;
use crate::growth::{err, GrowthError, Sampler, ViewSize};

/// Every table of the current schema (those starting with `_` are bookkeeping and left out).
/// `exact` counts rows with `count(*)`; otherwise the statistics collector's live-row estimate,
/// which costs nothing on large tables.
pub async fn sample(pool: &sqlx::PgPool, exact: bool) -> Result<Vec<ViewSize>, GrowthError> {
    let e = err(STORE);
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT c.relname::text, COALESCE(s.n_live_tup, 0)::bigint, \
                pg_total_relation_size(c.oid)::bigint \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname NOT LIKE '\\_%' \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .map_err(|x| e(x.to_string()))?;
    let mut out = Vec::with_capacity(rows.len());
    for (table, estimate, bytes) in rows {
        let entities = if exact {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM \"{}\"",
                table.replace('"', "\"\"")
            ))
            .fetch_one(pool)
            .await
            .map_err(|x| e(format!("counting {table}: {x}")))?
        } else {
            estimate
        };
        out.push(ViewSize {
            store: STORE,
            view: table,
            entities: Some(entities),
            bytes: Some(bytes),
        });
    }
    Ok(out)
}

/// The tables of the schema a pool's `search_path` names.
#[derive(Clone)]
pub struct PostgresSampler {
    pub pool: sqlx::PgPool,
}

#[async_trait::async_trait]
impl Sampler for PostgresSampler {
    async fn sample(&self, exact: bool) -> Result<Vec<ViewSize>, GrowthError> {
        sample(&self.pool, exact).await
    }
}
