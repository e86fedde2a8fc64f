//! MongoDB's share of the data-growth metrics: documents per collection.

use super::STORE;
use crate::growth::{err, GrowthError, Sampler, ViewSize};

/// Every collection of the database (those starting with `_` are bookkeeping and left out).
pub async fn sample(db: &::mongodb::Database) -> Result<Vec<ViewSize>, GrowthError> {
    let e = err(STORE);
    let mut names = db
        .list_collection_names()
        .await
        .map_err(|x| e(x.to_string()))?;
    names.sort();
    let mut out = Vec::new();
    for name in names.into_iter().filter(|c| !c.starts_with('_')) {
        let n = db
            .collection::<::mongodb::bson::Document>(&name)
            .count_documents(::mongodb::bson::doc! {})
            .await
            .map_err(|x| e(format!("counting {name}: {x}")))?;
        out.push(ViewSize {
            store: STORE,
            view: name,
            entities: Some(i64::try_from(n).unwrap_or(i64::MAX)),
            bytes: None,
        });
    }
    Ok(out)
}

/// The collections of one database.
#[derive(Clone)]
pub struct MongoSampler {
    pub db: ::mongodb::Database,
}

#[async_trait::async_trait]
impl Sampler for MongoSampler {
    /// Document counts are always exact.
    async fn sample(&self, _exact: bool) -> Result<Vec<ViewSize>, GrowthError> {
        sample(&self.db).await
    }
}
