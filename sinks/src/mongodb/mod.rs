//! # Layout
//!
//! MongoDB keeps the inventory and notification views (ADR-007):
//!
//! - [`projection`]: `events.inventory` and `events.notifications` records → [`Change`]s of the
//!   `products`, `stock_reservations` and `notifications` collections.
//! - [`writer`]: [`MongoWriter`], the [`ViewWriter`] that applies a batch as one unordered
//!   client-level `bulkWrite` of conditional upserts, so a change older than the stored document
//!   never overwrites it.
//! - [`migrations`]: versioned, once-only migrations (collections, validators, unique indexes,
//!   seeded templates) recorded in the `_migrations` collection behind a lock document: the role
//!   Mongock plays in ADR-007.
//! - [`store`]: the list entry ([`store::Mongodb`]) and [`store::MongoConfig`]'s `build()`.
//! - [`live`]: the collections as reconcile reads and releases them.
//! - [`rebuild`]: a fresh database beside the live one, each collection renamed in.
//! - [`growth`]: documents per collection.
//!
//! Every document a change writes carries `version` (the event's per-aggregate sequence) and
//! `event_time_ms`; the version is what makes replays no-ops.
//!
//! [`Change`]: crate::change::Change
//! [`ViewWriter`]: crate::change::ViewWriter

pub mod growth;
pub mod live;
pub mod migrations;
pub mod projection;
pub mod rebuild;
pub mod store;
pub mod writer;

pub use migrations::{migrate, MigrationError, MigrationReport};
pub use writer::MongoWriter;

use ::mongodb::bson::{Bson, Document};
use serde_json::Value;

use crate::change::Fields;

/// The store name used in metrics and errors.
pub const STORE: &str = "mongodb";

/// Converts change fields to a BSON document.
///
/// Written by hand rather than through `Bson::from(serde_json::Value)`: that conversion picks
/// Int32 or Int64 by magnitude (so one field would change type with its value, which a
/// `$jsonSchema` validator rejects) and reads `$`-keys as extended JSON. Here every integer is an
/// Int64 (Avro `long`/`int` both fit) and keys are taken literally.
pub fn to_document(fields: &Fields) -> Document {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), to_bson(v)))
        .collect()
}

fn to_bson(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect()),
        Value::Object(map) => {
            Bson::Document(map.iter().map(|(k, v)| (k.clone(), to_bson(v))).collect())
        }
    }
}
