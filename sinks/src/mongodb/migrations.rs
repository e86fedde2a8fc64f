//! Versioned MongoDB migrations, applied once (the role Mongock plays in ADR-007).
//!
//! - **Changelog**: each applied migration is a document `{_id: version, name, applied_at,
//!   owner}` in `_migrations`; a migration whose version is there is skipped.
//! - **Lock**: one runner at a time holds the document `{_id: "migrations"}` in
//!   `_migrations_lock`, taken by inserting it (the `_id` index makes that atomic) and released by
//!   deleting it. It expires after a lease, so a runner killed while holding it does not block
//!   the next one forever; a runner that overstays its lease could overlap with the next, which
//!   is why every step below is itself idempotent (create-if-missing, upsert).
//!
//! New migrations are appended to [`MIGRATIONS`] with the next version; an applied migration is
//! never edited.

use std::time::{Duration, Instant};

use ::mongodb::bson::{doc, DateTime, Document};
use ::mongodb::error::{Error, ErrorKind};
use ::mongodb::options::IndexOptions;
use ::mongodb::{Database, IndexModel};

use super::projection::{NOTIFICATIONS, NOTIFICATION_TEMPLATES, PRODUCTS, STOCK_RESERVATIONS};

/// The changelog collection.
pub const CHANGELOG: &str = "_migrations";
/// The lock collection.
pub const LOCK: &str = "_migrations_lock";
const LOCK_ID: &str = "migrations";

/// One migration: its version (its order) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create collections with validators",
    },
    Migration {
        version: 2,
        name: "indexes: unique products.sku, notifications by user, holds by product",
    },
    Migration {
        version: 3,
        name: "seed notification templates",
    },
];

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions this run applied.
    pub applied: Vec<i64>,
    /// Versions found already applied.
    pub skipped: Vec<i64>,
}

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Another runner held the lock for longer than this runner was willing to wait; retrying
    /// later can help.
    #[error("the migration lock is held by `{owner}`; gave up after {waited:?}")]
    LockBusy { owner: String, waited: Duration },
    /// A migration step failed; whether a retry helps depends on `source` (a network error
    /// will pass, a refused validator will not).
    #[error("mongodb migration {version} ({name}) failed: {source}")]
    Step {
        version: i64,
        name: &'static str,
        #[source]
        source: Error,
    },
    /// The changelog or lock could not be read or written.
    #[error("mongodb migration bookkeeping failed: {0}")]
    Bookkeeping(#[from] Error),
}

/// How a run takes the lock.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Names this runner in the lock and changelog (host, pid, ...).
    pub owner: String,
    /// How long a taken lock stays valid.
    pub lease: Duration,
    /// How long to wait for a lock held by another runner.
    pub wait: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            owner: format!(
                "pid-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            lease: Duration::from_secs(60),
            wait: Duration::from_secs(120),
        }
    }
}

/// Applies every pending migration to `db` with default options.
pub async fn migrate(db: &Database) -> Result<MigrationReport, MigrationError> {
    migrate_with(db, &MigrateOptions::default()).await
}

/// Applies every pending migration to `db`.
pub async fn migrate_with(
    db: &Database,
    options: &MigrateOptions,
) -> Result<MigrationReport, MigrationError> {
    acquire(db, options).await?;
    let result = apply_pending(db, options).await;
    // Release even after a failure, so the next runner need not wait out the lease.
    let released = db
        .collection::<Document>(LOCK)
        .delete_one(doc! { "_id": LOCK_ID, "owner": &options.owner })
        .await;
    let report = result?;
    released?;
    Ok(report)
}

async fn apply_pending(
    db: &Database,
    options: &MigrateOptions,
) -> Result<MigrationReport, MigrationError> {
    let changelog = db.collection::<Document>(CHANGELOG);
    let mut report = MigrationReport::default();
    for m in MIGRATIONS {
        if changelog
            .find_one(doc! { "_id": m.version })
            .await?
            .is_some()
        {
            report.skipped.push(m.version);
            continue;
        }
        apply(db, m.version)
            .await
            .map_err(|source| MigrationError::Step {
                version: m.version,
                name: m.name,
                source,
            })?;
        changelog
            .insert_one(doc! {
                "_id": m.version,
                "name": m.name,
                "applied_at": DateTime::now(),
                "owner": &options.owner,
            })
            .await?;
        report.applied.push(m.version);
    }
    Ok(report)
}

async fn acquire(db: &Database, options: &MigrateOptions) -> Result<(), MigrationError> {
    let locks = db.collection::<Document>(LOCK);
    let started = Instant::now();
    loop {
        let expires = DateTime::from_millis(
            DateTime::now().timestamp_millis()
                + i64::try_from(options.lease.as_millis()).unwrap_or(i64::MAX / 2),
        );
        let taken = locks
            .insert_one(doc! { "_id": LOCK_ID, "owner": &options.owner, "expires_at": expires })
            .await;
        match taken {
            Ok(_) => return Ok(()),
            Err(e) if is_duplicate(&e) => {}
            Err(e) => return Err(e.into()),
        }
        // Held: take it over only if its lease ran out (its holder died).
        let stolen = locks
            .update_one(
                doc! { "_id": LOCK_ID, "expires_at": { "$lt": DateTime::now() } },
                doc! { "$set": { "owner": &options.owner, "expires_at": expires } },
            )
            .await?;
        if stolen.modified_count == 1 {
            return Ok(());
        }
        if started.elapsed() >= options.wait {
            let owner = locks
                .find_one(doc! { "_id": LOCK_ID })
                .await?
                .and_then(|d| d.get_str("owner").ok().map(str::to_string))
                .unwrap_or_default();
            return Err(MigrationError::LockBusy {
                owner,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn apply(db: &Database, version: i64) -> Result<(), Error> {
    match version {
        1 => {
            create_collection(db, PRODUCTS, Some(products_validator())).await?;
            create_collection(db, STOCK_RESERVATIONS, None).await?;
            create_collection(db, NOTIFICATIONS, None).await?;
            create_collection(db, NOTIFICATION_TEMPLATES, None).await
        }
        2 => {
            // Partial: a product created by a patch has no sku yet, and a plain unique index
            // would treat every missing sku as the same value `null`.
            let sku = IndexModel::builder()
                .keys(doc! { "sku": 1 })
                .options(
                    IndexOptions::builder()
                        .name("sku_unique".to_string())
                        .unique(true)
                        .partial_filter_expression(doc! { "sku": { "$type": "string" } })
                        .build(),
                )
                .build();
            db.collection::<Document>(PRODUCTS)
                .create_index(sku)
                .await?;
            let by_user = IndexModel::builder()
                .keys(doc! { "user_id": 1, "sent_at_ms": -1 })
                .build();
            db.collection::<Document>(NOTIFICATIONS)
                .create_index(by_user)
                .await?;
            let by_product = IndexModel::builder()
                .keys(doc! { "product_id": 1, "state": 1 })
                .build();
            db.collection::<Document>(STOCK_RESERVATIONS)
                .create_index(by_product)
                .await?;
            Ok(())
        }
        3 => {
            let templates = db.collection::<Document>(NOTIFICATION_TEMPLATES);
            for (id, channel, text) in TEMPLATES {
                templates
                    .update_one(
                        doc! { "_id": id },
                        doc! { "$setOnInsert": { "channel": channel, "text": text } },
                    )
                    .upsert(true)
                    .await?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The templates the notification processor renders, by id.
const TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "order_confirmed",
        "EMAIL",
        "Your order {{order_id}} is confirmed: {{total}}.",
    ),
    (
        "order_cancelled",
        "EMAIL",
        "Your order {{order_id}} was cancelled: {{reason}}.",
    ),
    (
        "payment_declined",
        "EMAIL",
        "The payment for order {{order_id}} was declined.",
    ),
    ("welcome", "EMAIL", "Welcome, {{name}}!"),
];

/// Rejects product documents whose fields have the wrong type (e.g. a string stock level), so
/// a bad projection surfaces as a rejected change instead of a silently odd view.
fn products_validator() -> Document {
    doc! {
        "$jsonSchema": {
            "bsonType": "object",
            "required": ["version"],
            "properties": {
                "version": { "bsonType": "long" },
                "event_time_ms": { "bsonType": "long" },
                "sku": { "bsonType": "string" },
                "name": { "bsonType": "string" },
                "description": { "bsonType": ["string", "null"] },
                "unit_price_cents": { "bsonType": "long" },
                "currency": { "bsonType": "string" },
                "available": { "bsonType": "long" },
                "reserved": { "bsonType": "long" },
            },
        },
    }
}

async fn create_collection(
    db: &Database,
    name: &str,
    validator: Option<Document>,
) -> Result<(), Error> {
    let result = match &validator {
        Some(v) => db.create_collection(name).validator(v.clone()).await,
        None => db.create_collection(name).await,
    };
    match result {
        Ok(()) => Ok(()),
        // Already there: created by an overlapping runner (see the lock's lease), or implicitly
        // by a write that ran before the migrations. The validator must hold either way.
        Err(e) if command_code(&e) == Some(48) => match validator {
            Some(v) => db
                .run_command(doc! { "collMod": name, "validator": v })
                .await
                .map(|_| ()),
            None => Ok(()),
        },
        Err(e) => Err(e),
    }
}

fn command_code(e: &Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(::mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

fn is_duplicate(e: &Error) -> bool {
    command_code(e) == Some(11000)
}
