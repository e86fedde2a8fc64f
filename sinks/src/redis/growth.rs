//! Redis' share of the data-growth metrics: keys per view, and the server's memory.

use std::collections::BTreeMap;

use super::STORE;
use crate::growth::{err, GrowthError, Sampler, ViewSize};

/// Keys per view (the segment after `prefix`), and the server's memory as the store's size.
pub async fn sample<C: ::redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    prefix: &str,
) -> Result<Vec<ViewSize>, GrowthError> {
    let e = err(STORE);
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
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
    let info: String = ::redis::cmd("INFO")
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
            store: STORE,
            view,
            entities: Some(n),
            bytes: None,
        })
        .collect();
    out.push(ViewSize {
        store: STORE,
        view: String::new(),
        entities: None,
        bytes: used,
    });
    Ok(out)
}

/// The views under one key prefix.
#[derive(Clone)]
pub struct RedisSampler {
    pub conn: ::redis::aio::ConnectionManager,
    /// As in [`crate::redis::RedisConfig::prefix`] (without the `:` that ends it in a key).
    pub prefix: String,
}

#[async_trait::async_trait]
impl Sampler for RedisSampler {
    /// Keys are always counted exactly.
    async fn sample(&self, _exact: bool) -> Result<Vec<ViewSize>, GrowthError> {
        let mut conn = self.conn.clone();
        sample(&mut conn, &format!("{}:", self.prefix)).await
    }
}
