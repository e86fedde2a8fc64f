//! # Layout
//!
//! Where commands enter the pipeline. Every way in goes through the same two steps:
//!
//! - [`command`]: a command as JSON (from the CLI, an HTTP body, or the load generator's own
//!   values) becomes a typed envelope of its topic's schema. Input that does not fit is refused
//!   here, with the reason and the offending field, before anything is sent.
//! - [`sender`]: the envelope is encoded in the Confluent wire format and produced, keyed by its
//!   aggregate id (so one aggregate's commands stay in order on one partition); `send` returns
//!   only after the broker acknowledged the record.
//!
//! On top of them: [`gateway`] (HTTP, axum) and [`loadgen`] (a seeded workload).

pub mod command;
pub mod gateway;
pub mod loadgen;
pub mod sender;

pub use command::{Command, CommandError};
pub use sender::{CommandSender, SendError};
