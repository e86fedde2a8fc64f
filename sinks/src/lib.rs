//! # Layout
//!
//! Sink connectors keep each store a materialized view of the event topics.
//!
//! - [`change`]: what a sink writes. An event becomes zero or more [`change::Change`]s (upsert,
//!   patch, delete or append of one entity of one view), each carrying the entity's version: the
//!   event's per-aggregate `sequence`. A store applies a change only when its version is newer than
//!   the stored one, so replaying the log changes nothing.
//! - [`change::ViewWriter`]: the one trait a store implements: apply a batch durably.
//! - [`growth`]: entities and bytes per view, sampled for the data-growth metrics.
//! - [`reconcile`]: replays the log into an expected view, reports each store's drift from it and
//!   repairs it through the same writers.
//! - [`rebuild`]: builds a fresh copy of a store's views from the log and swaps it in atomically.

pub mod change;
pub mod dlq;
pub mod elasticsearch;
pub mod growth;
pub mod metrics;
pub mod mongodb;
pub mod postgres;
pub mod rebuild;
pub mod reconcile;
pub mod redis;
pub mod runner;
