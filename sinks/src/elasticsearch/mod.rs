//! # Layout
//!
//! Elasticsearch keeps the search views (ADR-007):
//!
//! - [`projection`]: `events.inventory`, `events.orders` and `events.analytics` records →
//!   [`Change`]s of the `products`, `orders` and `analytics` indices.
//! - [`writer`]: [`EsWriter`], the [`ViewWriter`] that applies a batch as one `_bulk` of
//!   externally versioned index/delete actions, so the server itself refuses a change older than
//!   the stored document (`version_type=external`, version = the event's sequence).
//! - [`indices`]: the versioned index definitions (explicit, strict mappings), their index
//!   templates, and the alias every write goes through (`<prefix>products` →
//!   `<prefix>products_v1`), so a rebuild can fill `_v2` and swap the alias without read
//!   downtime.
//! - [`store`]: the list entry ([`store::Elasticsearch`]) and [`store::EsConfig`]'s `build()`.
//! - [`live`]: the indices as reconcile reads and releases them.
//! - [`rebuild`]: new indices behind the aliases, switched in one `_aliases` call.
//! - [`growth`]: documents behind each alias.
//!
//! [`Change`]: crate::change::Change
//! [`ViewWriter`]: crate::change::ViewWriter

pub mod connect;
pub mod growth;
pub mod indices;
pub mod live;
pub mod projection;
pub mod rebuild;
pub mod store;
pub mod writer;

pub use connect::{client, EsSecurity};
pub use indices::{migrate, IndexError, IndexReport};
pub use writer::EsWriter;

/// The store name used in metrics and errors.
pub const STORE: &str = "elasticsearch";
