//! MongoDB: a scratch database, its view collections renamed over the live ones.
//!
//! The copy is the database `<live>_rebuild`, migrated like any sink database ([`migrate`]:
//! collections, validators, unique indexes, seeded templates), and filled through a
//! [`MongoWriter`] over it. The swap renames each view collection (`products`,
//! `stock_reservations`, `notifications`) onto the live one with
//! `renameCollection {dropTarget: true}`: per collection, a reader sees the old documents or the
//! new ones, never a missing or empty collection. The three renames are three steps, so for a
//! moment one collection can be rebuilt and another not yet; each is complete. The seeded
//! `notification_templates` and the live `_migrations` stay as they are. The scratch database
//! (left with its migration records and templates) is dropped afterwards.
//!
//! SecantusDB (the local MongoDB-wire server) supports `renameCollection` across databases with
//! `dropTarget`, as a metadata operation (tests/rebuild.rs checks that a reader never sees the
//! collection empty and that its indexes come along). On MongoDB itself a cross-database rename
//! copies the documents first, which costs time and has not been checked here for atomicity
//! towards readers of the target; the same-database alternative is to build the copy under
//! temporary collection names in the live database, which `MongoWriter` (fixed collection
//! names) does not support yet.

use std::sync::Arc;

use ::mongodb::bson::doc;
use ::mongodb::{Client, Database};

use crate::change::ViewWriter;
use crate::mongodb::projection::{NOTIFICATIONS, PRODUCTS, STOCK_RESERVATIONS};
use crate::mongodb::{migrate, MongoWriter, STORE};
use crate::rebuild::{derived, RebuildError, Target};

/// The collections a rebuild replaces: the views the projection writes.
pub const VIEWS: &[&str] = &[PRODUCTS, STOCK_RESERVATIONS, NOTIFICATIONS];

/// MongoDB limits database names to 63 bytes.
const NAME_MAX: usize = 63;

/// The MongoDB views of one database.
pub struct MongoTarget {
    client: Client,
    live: String,
    scratch: String,
}

fn failed(action: impl Into<String>) -> impl FnOnce(::mongodb::error::Error) -> RebuildError {
    let action = action.into();
    move |e| RebuildError::store(STORE, action)(e.to_string())
}

impl MongoTarget {
    /// Rebuilds the views of `db`.
    pub fn new(db: &Database) -> Self {
        let live = db.name().to_string();
        Self {
            client: db.client().clone(),
            scratch: derived(&live, NAME_MAX, "_rebuild"),
            live,
        }
    }

    /// The database the copy is built in.
    pub fn scratch_database(&self) -> &str {
        &self.scratch
    }

    async fn drop_scratch(&self) -> Result<(), RebuildError> {
        self.client
            .database(&self.scratch)
            .drop()
            .await
            .map_err(failed(format!("dropping database {}", self.scratch)))
    }
}

#[async_trait::async_trait]
impl Target for MongoTarget {
    fn copy(&self) -> String {
        format!("database {}", self.scratch)
    }

    async fn prepare(&self) -> Result<Arc<dyn ViewWriter>, RebuildError> {
        // Leftovers of an interrupted rebuild (the lock says none is running).
        self.drop_scratch().await?;
        let db = self.client.database(&self.scratch);
        migrate(&db).await.map_err(|e| {
            RebuildError::store(STORE, format!("migrating database {}", self.scratch))(
                e.to_string(),
            )
        })?;
        Ok(Arc::new(MongoWriter::new(db)))
    }

    async fn swap(&self) -> Result<(), RebuildError> {
        let admin = self.client.database("admin");
        for view in VIEWS {
            let from = format!("{}.{view}", self.scratch);
            let to = format!("{}.{view}", self.live);
            admin
                .run_command(doc! { "renameCollection": &from, "to": &to, "dropTarget": true })
                .await
                .map_err(failed(format!("renaming {from} to {to}")))?;
        }
        Ok(())
    }

    async fn drop_old(&self) -> Result<(), RebuildError> {
        // `dropTarget` dropped the old collections; what is left is the copy's scaffolding.
        self.drop_scratch().await
    }

    async fn discard(&self) -> Result<(), RebuildError> {
        self.drop_scratch().await
    }
}
