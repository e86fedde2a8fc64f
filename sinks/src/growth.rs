//! Data growth of the views (ADR-007's monitoring list): entities per view and bytes per view or
//! store, read from each store's own statistics. Every sink process samples its store
//! periodically into [`GrowthMetrics`]; `tributary summary` reads the same numbers once.

use std::collections::BTreeMap;

use prometheus::{IntGaugeVec, Opts, Registry};

/// The size of one view (or, with an empty `view`, of the whole store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSize {
    pub store: &'static str,
    pub view: String,
    /// Rows, documents, keys; `None` when the store does not say.
    pub entities: Option<i64>,
    /// Bytes on disk or in memory; `None` when the store does not say.
    pub bytes: Option<i64>,
}

/// Why a store could not be sampled.
#[derive(Debug, thiserror::Error)]
#[error("sampling the size of {store}: {message}")]
pub struct GrowthError {
    pub store: &'static str,
    pub message: String,
}

fn err(store: &'static str) -> impl Fn(String) -> GrowthError {
    move |message| GrowthError { store, message }
}

/// Every table of the current schema (those starting with `_` are bookkeeping and left out).
/// `exact` counts rows with `count(*)`; otherwise the statistics collector's live-row estimate,
/// which costs nothing on large tables.
pub async fn postgres(pool: &sqlx::PgPool, exact: bool) -> Result<Vec<ViewSize>, GrowthError> {
    let e = err("postgres");
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
            store: "postgres",
            view: table,
            entities: Some(entities),
            bytes: Some(bytes),
        });
    }
    Ok(out)
}

/// Every collection of the database (those starting with `_` are bookkeeping and left out).
pub async fn mongodb(db: &mongodb::Database) -> Result<Vec<ViewSize>, GrowthError> {
    let e = err("mongodb");
    let mut names = db
        .list_collection_names()
        .await
        .map_err(|x| e(x.to_string()))?;
    names.sort();
    let mut out = Vec::new();
    for name in names.into_iter().filter(|c| !c.starts_with('_')) {
        let n = db
            .collection::<mongodb::bson::Document>(&name)
            .count_documents(mongodb::bson::doc! {})
            .await
            .map_err(|x| e(format!("counting {name}: {x}")))?;
        out.push(ViewSize {
            store: "mongodb",
            view: name,
            entities: Some(i64::try_from(n).unwrap_or(i64::MAX)),
            bytes: None,
        });
    }
    Ok(out)
}

/// Keys per view (the segment after `prefix`), and the server's memory as the store's size.
pub async fn redis<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    prefix: &str,
) -> Result<Vec<ViewSize>, GrowthError> {
    let e = err("redis");
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|x| e(x.to_string()))?;
        for k in keys {
            let view = k
                .get(prefix.len()..)
                .unwrap_or("")
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            *counts.entry(view).or_insert(0) += 1;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .map_err(|x| e(x.to_string()))?;
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse::<i64>().ok());
    let mut out: Vec<ViewSize> = counts
        .into_iter()
        .map(|(view, n)| ViewSize {
            store: "redis",
            view,
            entities: Some(n),
            bytes: None,
        })
        .collect();
    out.push(ViewSize {
        store: "redis",
        view: String::new(),
        entities: None,
        bytes: used,
    });
    Ok(out)
}

/// Documents behind each of the views' aliases; a missing alias is an empty view.
pub async fn elasticsearch(
    client: &elasticsearch::Elasticsearch,
    aliases: &[String],
) -> Result<Vec<ViewSize>, GrowthError> {
    let e = err("elasticsearch");
    let mut out = Vec::new();
    for alias in aliases {
        let resp = client
            .count(elasticsearch::CountParts::Index(&[alias.as_str()]))
            .send()
            .await
            .map_err(|x| e(x.to_string()))?;
        let status = resp.status_code();
        let entities = if status.as_u16() == 404 {
            0
        } else {
            let body: serde_json::Value = resp.json().await.map_err(|x| e(x.to_string()))?;
            body["count"]
                .as_i64()
                .ok_or_else(|| e(format!("count of {alias}: {status} {body}")))?
        };
        out.push(ViewSize {
            store: "elasticsearch",
            view: alias.clone(),
            entities: Some(entities),
            bytes: None,
        });
    }
    Ok(out)
}

/// `tributary_view_entities{store, view}` and `tributary_view_size_bytes{store, view}`.
#[derive(Clone)]
pub struct GrowthMetrics {
    entities: IntGaugeVec,
    bytes: IntGaugeVec,
}

impl GrowthMetrics {
    pub fn new(registry: &Registry) -> Result<GrowthMetrics, prometheus::Error> {
        let entities = IntGaugeVec::new(
            Opts::new(
                "tributary_view_entities",
                "Rows, documents or keys of a view, as last sampled.",
            ),
            &["store", "view"],
        )?;
        let bytes = IntGaugeVec::new(
            Opts::new(
                "tributary_view_size_bytes",
                "Size of a view (or, with an empty view label, of the whole store), as last sampled.",
            ),
            &["store", "view"],
        )?;
        registry.register(Box::new(entities.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        Ok(GrowthMetrics { entities, bytes })
    }

    pub fn record(&self, sizes: &[ViewSize]) {
        for s in sizes {
            if let Some(n) = s.entities {
                self.entities
                    .with_label_values(&[s.store, s.view.as_str()])
                    .set(n);
            }
            if let Some(b) = s.bytes {
                self.bytes
                    .with_label_values(&[s.store, s.view.as_str()])
                    .set(b);
            }
        }
    }
}
