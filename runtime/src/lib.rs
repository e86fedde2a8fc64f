//! # Layout
//!
//! The pieces every Tributary process shares, kept small on purpose:
//!
//! - [`config`]: the addresses of the services (Kafka, schema registry, PostgreSQL, MongoDB, Redis,
//!   Elasticsearch), read from `TRIBUTARY_*` environment variables with loopback defaults. The same
//!   names and defaults are used by `stack/env.sh`, which starts the local stack.
//! - [`kafka`]: building rdkafka clients from that configuration and creating topics idempotently.
//! - [`metrics`]: `/metrics` and `/health` for long-running processes.
//! - [`redact`]: passwords out of every URL and message that is printed or logged.

pub mod config;
pub mod kafka;
pub mod metrics;
pub mod redact;

pub use config::Endpoints;
pub use kafka::KafkaError;
