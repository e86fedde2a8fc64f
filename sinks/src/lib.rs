//! # Layout
//!
//! Sink connectors keep each store a materialized view of the event topics.
//!
//! - [`change`]: what a sink writes. An event becomes zero or more [`change::Change`]s (upsert,
//!   patch, delete or append of one entity of one view), each carrying the entity's version: the
//!   event's per-aggregate `sequence`. A store applies a change only when its version is newer than
//!   the stored one, so replaying the log changes nothing.
//! - [`change::ViewWriter`]: the trait a store's sink writer implements: apply a batch durably.
//! - [`runner`]: the sink runner (consume → decode → project → coalesce → write → store offsets).
//! - one folder per store ([`postgres`], [`mongodb`], [`redis`], [`elasticsearch`]) holding
//!   everything of that store: its config and list entry (`store.rs`), projection, writer, live
//!   view for reconcile (`live.rs`), rebuild target (`rebuild.rs`) and growth sampler
//!   (`growth.rs`).
//! - [`store`]: the trait family a store folder implements ([`store::Store`],
//!   [`store::StoreConfig`] whose `build()` returns the store's [`store::StoreParts`]).
//! - [`stores`]: the one list of stores, which the CLI and the machinery below iterate. A new
//!   store is one folder and one line there.
//! - [`growth`]: entities and bytes per view, sampled for the data-growth metrics.
//! - [`job`]: what reconcile and rebuild share: the store's lock, their parts, progress.
//! - [`reconcile`]: replays the log into an expected view, reports each store's drift from it and
//!   repairs it through the same writers.
//! - [`rebuild`]: builds a fresh copy of a store's views from the log and swaps it in atomically.

pub mod change;
pub mod dlq;
pub mod elasticsearch;
pub mod growth;
pub mod job;
pub mod metrics;
pub mod mongodb;
pub mod postgres;
pub mod rebuild;
pub mod reconcile;
pub mod redis;
pub mod runner;
pub mod store;
pub mod stores;
