//! The PostgreSQL sink: users, orders and items, the order event store, payments and refunds,
//! and analytics, as tables kept by version (ADR-007).
//!
//! - `migrations/postgres/`: the tables, applied with sqlx's migrator on start ([`migrate`]).
//! - [`projection`]: which events change which rows.
//! - [`views`]: the tables and their statements. A batch is `COPY`ed into a temporary staging
//!   table, then applied per view with one `DELETE ... USING stage`, one `INSERT ... SELECT FROM
//!   stage ON CONFLICT (id) DO UPDATE ... WHERE version is older`, and for the event store one
//!   `INSERT ... SELECT FROM stage ON CONFLICT DO NOTHING`.
//! - [`writer`]: applies a batch in one transaction and maps SQLSTATEs to retry or reject.
//! - [`store`]: the list entry ([`store::Postgres`]) and [`PostgresConfig`]'s `build()`.
//! - [`live`]: the tables as reconcile reads and releases them.
//! - [`rebuild`]: a fresh schema beside the live one, swapped in by one transaction.
//! - [`growth`]: rows and bytes per table.

pub mod growth;
pub mod live;
pub mod projection;
pub mod rebuild;
pub mod store;
pub mod views;
pub mod writer;

pub use projection::PostgresProjection;
pub use writer::{migrate, PostgresConfig, PostgresError, PostgresWriter, MIGRATOR};

/// The store name used in metrics, errors and the list of stores.
pub const STORE: &str = "postgres";
