//! Elasticsearch as reconcile sees it: every document behind each view's alias, its `_source`
//! compared (the version is the server's `_version` metadata, not a field).
//!
//! Documents are listed with the scroll API after a refresh. Deletes are not remembered by
//! the local server (noida-db; see [`crate::elasticsearch::writer`]), nor by the fold.
//!
//! A release deletes the document: external versions cannot be lowered, and the local server
//! keeps no version of a deleted document, so the repair's versioned write then goes through.
//! (A real Elasticsearch keeps a deleted document's version for `index.gc_deletes`; a repair
//! there would need the writer to use `version_type=external_gte`.)

use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};

use crate::change::Fields;
use crate::elasticsearch::indices::call;
use crate::elasticsearch::projection::{ANALYTICS, ORDERS, PRODUCTS};
use crate::reconcile::{
    normalize, Entity, EntityId, LiveStore, ReconcileError, Release, Rules, Snapshot,
};

use super::STORE;
const JSON: &str = "application/json";
const PAGE: usize = 1000;

/// The Elasticsearch views behind the aliases `<prefix><view>`.
#[derive(Clone, Debug)]
pub struct EsLive {
    client: Elasticsearch,
    prefix: String,
}

impl EsLive {
    pub fn new(client: Elasticsearch, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
        }
    }

    fn alias(&self, view: &str) -> String {
        format!("{}{view}", self.prefix)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        content_type: &'static str,
    ) -> Result<Value, ReconcileError> {
        let (status, reply) = call(&self.client, method, path, body, content_type)
            .await
            .map_err(|e| ReconcileError::Store {
                store: STORE,
                action: path.to_string(),
                message: e.to_string(),
            })?;
        if !status.is_success() {
            return Err(ReconcileError::Store {
                store: STORE,
                action: path.to_string(),
                message: format!("HTTP {}: {reply}", status.as_u16()),
            });
        }
        Ok(reply)
    }

    async fn refresh(&self, view: &str) -> Result<(), ReconcileError> {
        let path = format!("/{}/_refresh", self.alias(view));
        self.request(Method::Post, &path, None, JSON).await?;
        Ok(())
    }
}

fn hits(reply: &Value) -> Vec<Value> {
    reply["hits"]["hits"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl LiveStore for EsLive {
    fn views(&self) -> Vec<&'static str> {
        vec![PRODUCTS, ORDERS, ANALYTICS]
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
            self.refresh(view).await?;
            let body = json!({ "size": PAGE, "version": true, "query": { "match_all": {} } });
            let path = format!("/{}/_search?scroll=1m", self.alias(view));
            let mut reply = self
                .request(Method::Post, &path, Some(body.to_string()), JSON)
                .await?;
            loop {
                let page = hits(&reply);
                for h in &page {
                    let Some(id) = h["_id"].as_str() else {
                        continue;
                    };
                    let fields = match &h["_source"] {
                        Value::Object(map) => normalize(map.clone()),
                        _ => Fields::new(),
                    };
                    out.insert(
                        (view, id.to_string()),
                        Entity {
                            version: h["_version"].as_i64().unwrap_or(0),
                            fields,
                            append_key: None,
                            event_time_ms: 0,
                        },
                    );
                }
                let scroll_id = reply["_scroll_id"].as_str().map(str::to_string);
                let Some(scroll_id) = scroll_id else { break };
                if page.is_empty() {
                    let body = json!({ "scroll_id": scroll_id }).to_string();
                    // Freed on expiry anyway; a failure here changes nothing read.
                    let _ = call(
                        &self.client,
                        Method::Delete,
                        "/_search/scroll",
                        Some(body),
                        JSON,
                    )
                    .await;
                    break;
                }
                let body = json!({ "scroll": "1m", "scroll_id": scroll_id }).to_string();
                reply = self
                    .request(Method::Post, "/_search/scroll", Some(body), JSON)
                    .await?;
            }
        }
        Ok(out)
    }

    fn release_removes(&self) -> bool {
        true
    }

    /// Deletes the live documents among `items` (unversioned) and refreshes their views.
    async fn release(&self, items: &[Release<'_>]) -> Result<(), ReconcileError> {
        let mut body = String::new();
        let mut views: Vec<&str> = Vec::new();
        for item in items.iter().filter(|i| i.live.is_some()) {
            let action = json!({ "delete": { "_index": self.alias(item.id.0), "_id": item.id.1 } });
            body.push_str(&action.to_string());
            body.push('\n');
            if !views.contains(&item.id.0) {
                views.push(item.id.0);
            }
        }
        if body.is_empty() {
            return Ok(());
        }
        let reply = self
            .request(Method::Post, "/_bulk", Some(body), "application/x-ndjson")
            .await?;
        for item in reply["items"].as_array().into_iter().flatten() {
            let Some(result) = item.as_object().and_then(|o| o.values().next()) else {
                continue;
            };
            let status = result["status"].as_u64().unwrap_or(0);
            if !(200..300).contains(&status) && status != 404 {
                return Err(ReconcileError::Store {
                    store: STORE,
                    action: format!("releasing {}", result["_id"]),
                    message: result.to_string(),
                });
            }
        }
        for view in views {
            self.refresh(view).await?;
        }
        Ok(())
    }
}
