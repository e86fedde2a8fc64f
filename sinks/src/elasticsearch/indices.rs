//! Versioned index definitions, their templates and aliases.
//!
//! Each view is an alias (`<prefix>products`) over one concrete index named with its mapping
//! version (`<prefix>products_v1`). [`migrate`]:
//!
//! 1. puts an index template per view (`<prefix>products_v*`, carrying the template's
//!    `version`), so any index created for a rebuild gets the current mapping;
//! 2. creates `<prefix><view>_v<version>` with the alias as its write index when the alias does
//!    not exist yet (a concurrent runner's "already exists" is success).
//!
//! Changing a mapping means bumping its version: `migrate` then reports the view as
//! [`IndexReport::outdated`]; the rebuild creates the new index ([`create_index`]), replays the
//! topic into it, and [`swap_alias`] moves the alias in one atomic `_aliases` call.
//!
//! Mappings are explicit and `dynamic: strict`: a field a projection forgets to map is refused
//! (and dead-lettered) instead of being guessed at.

use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::{Method, StatusCode};
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};

use super::projection::{ANALYTICS, ORDERS, PRODUCTS};

/// One view's index definition.
#[derive(Debug, Clone, Copy)]
pub struct IndexSpec {
    /// The view (alias without prefix).
    pub view: &'static str,
    /// Version of the mapping; part of the concrete index name.
    pub version: u32,
    /// The mapping.
    pub mappings: fn() -> Value,
}

impl IndexSpec {
    /// The alias writes and reads go through.
    pub fn alias(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.view)
    }

    /// The concrete index of this version.
    pub fn index(&self, prefix: &str) -> String {
        format!("{prefix}{}_v{}", self.view, self.version)
    }
}

/// Every view's current definition.
pub const INDICES: &[IndexSpec] = &[
    IndexSpec {
        view: PRODUCTS,
        version: 1,
        mappings: products_mapping,
    },
    IndexSpec {
        view: ORDERS,
        version: 1,
        mappings: orders_mapping,
    },
    IndexSpec {
        view: ANALYTICS,
        version: 1,
        mappings: analytics_mapping,
    },
];

fn products_mapping() -> Value {
    json!({
        "dynamic": "strict",
        "properties": {
            "sku": { "type": "keyword" },
            "name": { "type": "text", "fields": { "raw": { "type": "keyword" } } },
            "description": { "type": "text" },
            // No event carries a category yet; mapped so filters and future events agree.
            "category": { "type": "keyword" },
            "price_cents": { "type": "long" },
            "currency": { "type": "keyword" },
            "stock": { "type": "long" },
        }
    })
}

fn orders_mapping() -> Value {
    json!({
        "dynamic": "strict",
        "properties": {
            "user_id": { "type": "keyword" },
            "status": { "type": "keyword" },
            "total_cents": { "type": "long" },
            "currency": { "type": "keyword" },
            "placed_at": { "type": "date", "format": "epoch_millis" },
            "product_ids": { "type": "keyword" },
            "item_count": { "type": "long" },
            "payment_id": { "type": "keyword" },
            "cancel_reason": { "type": "keyword" },
        }
    })
}

fn analytics_mapping() -> Value {
    json!({
        "dynamic": "strict",
        "properties": {
            "kind": { "type": "keyword" },
            "window_start": { "type": "date", "format": "epoch_millis" },
            "window_end": { "type": "date", "format": "epoch_millis" },
            "currency": { "type": "keyword" },
            "order_count": { "type": "long" },
            "revenue_cents": { "type": "long" },
            // An object array, not `nested`: the local server has no nested type, and ranking
            // queries read the array as a whole.
            "products": {
                "properties": {
                    "product_id": { "type": "keyword" },
                    "quantity": { "type": "long" },
                }
            },
        }
    })
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexReport {
    /// Concrete indices created (their alias pointed nowhere before).
    pub created: Vec<String>,
    /// Aliases that already point at the current version.
    pub current: Vec<String>,
    /// Aliases that point at another version: the view needs a rebuild and alias swap.
    pub outdated: Vec<String>,
}

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The server could not be reached or timed out; a retry can help.
    #[error("elasticsearch unreachable during {action}: {source}")]
    Unavailable {
        action: String,
        #[source]
        source: elasticsearch::Error,
    },
    /// The server refused the request (bad mapping, bad name); a retry cannot help.
    #[error("elasticsearch refused {action}: HTTP {status}: {body}")]
    Refused {
        action: String,
        status: u16,
        body: String,
    },
}

/// Sends one JSON request and returns its status and body (`Null` when the body is not JSON).
pub(crate) async fn call(
    client: &Elasticsearch,
    method: Method,
    path: &str,
    body: Option<String>,
    content_type: &'static str,
) -> Result<(StatusCode, Value), elasticsearch::Error> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let response = client
        .send(method, path, headers, Option::<&()>::None, body, None)
        .await?;
    let status = response.status_code();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn request(
    client: &Elasticsearch,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), IndexError> {
    call(
        client,
        method,
        path,
        body.map(|b| b.to_string()),
        "application/json",
    )
    .await
    .map_err(|source| IndexError::Unavailable {
        action: path.to_string(),
        source,
    })
}

fn refused(action: impl Into<String>, status: StatusCode, body: &Value) -> IndexError {
    IndexError::Refused {
        action: action.into(),
        status: status.as_u16(),
        body: body.to_string(),
    }
}

/// Puts every view's template and creates the indices whose alias does not exist yet.
/// Idempotent, and safe to run from several processes at once.
pub async fn migrate(client: &Elasticsearch, prefix: &str) -> Result<IndexReport, IndexError> {
    let mut report = IndexReport::default();
    for spec in INDICES {
        let alias = spec.alias(prefix);
        let template = json!({
            "index_patterns": [format!("{alias}_v*")],
            "template": { "mappings": (spec.mappings)() },
            "version": spec.version,
            "_meta": { "view": spec.view },
        });
        let path = format!("/_index_template/{alias}");
        let (status, body) = request(client, Method::Put, &path, Some(template)).await?;
        if !status.is_success() {
            return Err(refused(path, status, &body));
        }
        match alias_target(client, &alias).await? {
            // `<alias>_v<version>`, or a rebuild of it (`<alias>_v<version>-r<stamp>`).
            Some(index)
                if index == spec.index(prefix)
                    || index.starts_with(&format!("{}-r", spec.index(prefix))) =>
            {
                report.current.push(alias)
            }
            Some(_) => report.outdated.push(alias),
            None => {
                if create_index(client, prefix, spec, true).await? {
                    report.created.push(spec.index(prefix));
                } else {
                    report.current.push(alias);
                }
            }
        }
    }
    Ok(report)
}

/// The concrete index `alias` points at, if the alias exists.
pub async fn alias_target(
    client: &Elasticsearch,
    alias: &str,
) -> Result<Option<String>, IndexError> {
    let path = format!("/_alias/{alias}");
    let (status, body) = request(client, Method::Get, &path, None).await?;
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(refused(path, status, &body));
    }
    Ok(body
        .as_object()
        .and_then(|indices| indices.keys().next().cloned()))
}

/// Creates the concrete index of `spec` with its mapping, pointing the alias at it when
/// `with_alias`. Returns `false` when the index already existed.
pub async fn create_index(
    client: &Elasticsearch,
    prefix: &str,
    spec: &IndexSpec,
    with_alias: bool,
) -> Result<bool, IndexError> {
    let mut body = json!({ "mappings": (spec.mappings)() });
    if with_alias {
        body["aliases"] = json!({ spec.alias(prefix): { "is_write_index": true } });
    }
    let path = format!("/{}", spec.index(prefix));
    let (status, reply) = request(client, Method::Put, &path, Some(body)).await?;
    if status.is_success() {
        return Ok(true);
    }
    if reply["error"]["type"] == "resource_already_exists_exception" {
        return Ok(false);
    }
    Err(refused(path, status, &reply))
}

/// Points the alias of `spec` at its current-version index, removing it from `from` in the
/// same atomic call.
pub async fn swap_alias(
    client: &Elasticsearch,
    prefix: &str,
    spec: &IndexSpec,
    from: &str,
) -> Result<(), IndexError> {
    let alias = spec.alias(prefix);
    let body = json!({ "actions": [
        { "remove": { "index": from, "alias": alias } },
        { "add": { "index": spec.index(prefix), "alias": alias, "is_write_index": true } },
    ]});
    let (status, reply) = request(client, Method::Post, "/_aliases", Some(body)).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(refused("/_aliases", status, &reply))
    }
}

/// Deletes every index and template of `prefix` (tests, and tearing down a rebuilt prefix).
pub async fn drop_all(client: &Elasticsearch, prefix: &str) -> Result<(), IndexError> {
    for spec in INDICES {
        let alias = spec.alias(prefix);
        if let Some(index) = alias_target(client, &alias).await? {
            request(client, Method::Delete, &format!("/{index}"), None).await?;
        }
        request(
            client,
            Method::Delete,
            &format!("/{}", spec.index(prefix)),
            None,
        )
        .await?;
        request(
            client,
            Method::Delete,
            &format!("/_index_template/{alias}"),
            None,
        )
        .await?;
    }
    Ok(())
}
