//! # Layout
//!
//! The pieces every Tributary process shares, kept small on purpose:
//!
//! - [`clock`]: wall-clock milliseconds since the epoch, the one definition of "now".
//! - [`config`]: the addresses of the services (Kafka, schema registry, PostgreSQL, MongoDB, Redis,
//!   Elasticsearch), read from `TRIBUTARY_*` environment variables with loopback defaults. The same
//!   names and defaults are used by `stack/env.sh`, which starts the local stack.
//! - [`dlq`]: dead-letter topic names, the `dlq.*` headers, and the origin headers that carry a
//!   producer's coordinates across internal hops.
//! - [`kafka`]: building rdkafka clients from that configuration and creating topics idempotently.
//! - [`metrics`]: `/metrics` and `/health` for long-running processes.
//! - [`redact`]: passwords out of every URL and message that is printed or logged.
//! - [`topics`]: names under the pipeline's `--topic-prefix` (topics, application ids, groups).
//! - [`shutdown`]: one `CancellationToken`, cancelled on SIGINT/SIGTERM, for every part of a
//!   process.

pub mod clock;
pub mod config;
pub mod dlq;
pub mod kafka;
pub mod metrics;
pub mod redact;
pub mod shutdown;
pub mod topics;

pub use config::Endpoints;
pub use kafka::KafkaError;
