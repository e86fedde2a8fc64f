//! Elasticsearch's share of the data-growth metrics: documents behind each alias.

use super::STORE;
use crate::growth::{err, GrowthError, Sampler, ViewSize};

/// Documents behind each of the views' aliases; a missing alias is an empty view.
pub async fn sample(
    client: &::elasticsearch::Elasticsearch,
    aliases: &[String],
) -> Result<Vec<ViewSize>, GrowthError> {
    let e = err(STORE);
    let mut out = Vec::new();
    for alias in aliases {
        let resp = client
            .count(::elasticsearch::CountParts::Index(&[alias.as_str()]))
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
            store: STORE,
            view: alias.clone(),
            entities: Some(entities),
            bytes: None,
        });
    }
    Ok(out)
}

/// The documents behind the views' aliases.
#[derive(Clone)]
pub struct EsSampler {
    pub client: ::elasticsearch::Elasticsearch,
    pub aliases: Vec<String>,
}

#[async_trait::async_trait]
impl Sampler for EsSampler {
    /// `_count` is always exact.
    async fn sample(&self, _exact: bool) -> Result<Vec<ViewSize>, GrowthError> {
        sample(&self.client, &self.aliases).await
    }
}
