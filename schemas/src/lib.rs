//! # Layout
//!
//! `schemas/` owns what travels on the topics:
//!
//! - `avro/*.avsc`: one Avro schema per topic. Each is an envelope (record id, aggregate id,
//!   per-aggregate sequence, causation and correlation ids, timestamp) around a union of the
//!   topic's commands or events. One schema per topic keeps Confluent's default subject naming
//!   (TopicNameStrategy, subject `<topic>-value`) and lets a topic gain event types by appending
//!   union branches, a backward-compatible change.
//! - [`types`]: the Rust type of every record and the [`types::AvroRecord`] trait that ties a type
//!   to its topic and schema.
//! - [`codec`]: the Confluent wire format (magic byte, schema id, Avro datum) through a schema
//!   registry, with typed errors for every kind of malformed input.
//! - [`registry_auth`]: the registry's URL and basic-auth credentials (the URL's userinfo, or
//!   `user:password` beside it), as Confluent's clients take them.

pub mod codec;
pub mod domain;
pub mod registry_auth;
mod resolve;
pub mod types;

pub use codec::{Codec, CodecError, DEFAULT_UNKNOWN_SCHEMA_GRACE};
pub use registry_auth::RegistryEndpoint;
pub use types::{AvroRecord, DomainError};
