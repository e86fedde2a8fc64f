//! Elasticsearch: a new concrete index per view behind the same alias.
//!
//! Every view is an alias (`<prefix>products`) over one concrete index (see
//! [`crate::elasticsearch::indices`]). The copy is a new index per view,
//! `<prefix>products_v<version>-r<stamp>` (it matches the view's index template, and is created
//! with the current mapping explicitly), reachable for writing through a scratch alias
//! `<prefix>rebuild-<stamp>-products`, so the sink's [`EsWriter`] (which writes to aliases with
//! `require_alias`) fills it unchanged.
//!
//! The swap is **one** `_aliases` request for all views: remove each live alias from its old
//! index, add it (as write index) to the new one, and remove the scratch alias. Elasticsearch
//! applies the actions of one request atomically, so a search through the alias sees either
//! the old indices or the new ones. The copy is refreshed just before, since the writer never
//! refreshes and a search would otherwise find it empty. The old indices are deleted afterwards.
//!
//! `migrate` reports a rebuilt view as `outdated` (its index is not named exactly
//! `<alias>_v<version>`); that report is informational, writes and reads go through the alias.

use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::Mutex;

use crate::change::ViewWriter;
use crate::elasticsearch::indices::{alias_target, call, IndexSpec, INDICES};
use crate::elasticsearch::{EsWriter, STORE};
use crate::rebuild::{RebuildError, Target};

/// The Elasticsearch views under one prefix.
pub struct EsTarget {
    client: Elasticsearch,
    prefix: String,
    stamp: String,
    /// The live index of each view as found by [`Target::swap`], dropped by
    /// [`Target::drop_old`].
    old: Mutex<Vec<String>>,
}

impl EsTarget {
    /// Rebuilds the views whose aliases are `<prefix><view>`.
    pub fn new(client: Elasticsearch, prefix: impl Into<String>) -> Self {
        let stamp = tributary_runtime::clock::now_ms().to_string();
        Self {
            client,
            prefix: prefix.into(),
            stamp,
            old: Mutex::new(Vec::new()),
        }
    }

    /// The concrete index the copy of `spec` is built in.
    pub fn copy_index(&self, spec: &IndexSpec) -> String {
        format!("{}-r{}", spec.index(&self.prefix), self.stamp)
    }

    /// The prefix of the scratch aliases the copy is written through.
    pub fn scratch_prefix(&self) -> String {
        format!("{}rebuild-{}-", self.prefix, self.stamp)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        action: &str,
    ) -> Result<(u16, Value), RebuildError> {
        let (status, reply) = call(
            &self.client,
            method,
            path,
            body.map(|b| b.to_string()),
            "application/json",
        )
        .await
        .map_err(|e| RebuildError::store(STORE, action)(e.to_string()))?;
        Ok((status.as_u16(), reply))
    }

    async fn delete_index(&self, index: &str) -> Result<(), RebuildError> {
        let action = format!("deleting index {index}");
        let (status, reply) = self
            .send(Method::Delete, &format!("/{index}"), None, &action)
            .await?;
        if (200..300).contains(&status) || status == 404 {
            Ok(())
        } else {
            Err(RebuildError::store(STORE, action)(format!(
                "HTTP {status}: {reply}"
            )))
        }
    }
}

#[async_trait::async_trait]
impl Target for EsTarget {
    fn copy(&self) -> String {
        format!(
            "indices {}",
            INDICES
                .iter()
                .map(|s| self.copy_index(s))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    async fn prepare(&self) -> Result<Arc<dyn ViewWriter>, RebuildError> {
        let scratch = self.scratch_prefix();
        for spec in INDICES {
            let index = self.copy_index(spec);
            let body = json!({
                "mappings": (spec.mappings)(),
                "aliases": { spec.alias(&scratch): { "is_write_index": true } },
            });
            let action = format!("creating index {index}");
            let (status, reply) = self
                .send(Method::Put, &format!("/{index}"), Some(body), &action)
                .await?;
            if !(200..300).contains(&status) {
                return Err(RebuildError::store(STORE, action)(format!(
                    "HTTP {status}: {reply}"
                )));
            }
        }
        Ok(Arc::new(EsWriter::new(self.client.clone(), scratch)))
    }

    async fn swap(&self) -> Result<(), RebuildError> {
        // The writer never refreshes: make the copy searchable before readers get it.
        for spec in INDICES {
            let index = self.copy_index(spec);
            let action = format!("refreshing index {index}");
            let (status, reply) = self
                .send(Method::Post, &format!("/{index}/_refresh"), None, &action)
                .await?;
            if !(200..300).contains(&status) {
                return Err(RebuildError::store(STORE, action)(format!(
                    "HTTP {status}: {reply}"
                )));
            }
        }
        let scratch = self.scratch_prefix();
        let mut actions = Vec::new();
        let mut old = Vec::new();
        for spec in INDICES {
            let alias = spec.alias(&self.prefix);
            let live = alias_target(&self.client, &alias).await.map_err(|e| {
                RebuildError::store(STORE, format!("reading alias {alias}"))(e.to_string())
            })?;
            let index = self.copy_index(spec);
            if let Some(from) = live {
                actions.push(json!({ "remove": { "index": from, "alias": alias } }));
                old.push(from);
            }
            actions
                .push(json!({ "add": { "index": index, "alias": alias, "is_write_index": true } }));
            actions.push(json!({ "remove": { "index": index, "alias": spec.alias(&scratch) } }));
        }
        let action = "swapping the aliases";
        let (status, reply) = self
            .send(
                Method::Post,
                "/_aliases",
                Some(json!({ "actions": actions })),
                action,
            )
            .await?;
        if !(200..300).contains(&status) {
            return Err(RebuildError::store(STORE, action)(format!(
                "HTTP {status}: {reply}"
            )));
        }
        *self.old.lock().await = old;
        Ok(())
    }

    async fn drop_old(&self) -> Result<(), RebuildError> {
        let old = std::mem::take(&mut *self.old.lock().await);
        for index in old {
            self.delete_index(&index).await?;
        }
        Ok(())
    }

    async fn discard(&self) -> Result<(), RebuildError> {
        for spec in INDICES {
            self.delete_index(&self.copy_index(spec)).await?;
        }
        Ok(())
    }
}
