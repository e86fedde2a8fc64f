//! # Layout
//!
//! The streams runtime under every processor, in the spirit of Kafka Streams but byte-oriented
//! and small. The moving parts:
//!
//! - [`Processor`] (`processor.rs`): the one trait a processor implements — `process` is the only
//!   required method; `init`, `punctuate` (timers) and `close` have defaults. It gets a
//!   [`Context`]: the task's named key-value stores, `forward` to output topics, and timers.
//! - Tasks (`app.rs`): work is split by input partition number, so co-partitioned inputs land in
//!   the same task; each task has its own processor instance and stores. Instances with the same
//!   application id are members of one consumer group and a rebalance moves tasks between them.
//! - Stores (`store.rs`): one redb file per task and store under the state directory, every write
//!   also produced to the compacted changelog `<app>-<store>-changelog`, on the task's partition.
//!   The local copy keeps, in the same redb transaction as the data, the changelog offset it
//!   reached; on assignment a task reads only the changelog tail past it, or the whole changelog
//!   when the local copy is gone.
//! - Delivery (`app.rs`): at-least-once by default. Per batch: outputs, dead letters and changelog writes are
//!   produced and acknowledged, then the stores are written locally, then input offsets are
//!   committed. Each stored value is tagged with the input position that wrote it, so a record
//!   redelivered after a crash does not apply its writes twice. Exactly-once (brokers with
//!   transactions) wraps the same produce step and the input offsets in one transaction, and
//!   aborts and re-reads the batch when it fails.
//! - Errors (`error.rs`): one enum; a retriable failure of a record is retried with back-off, any
//!   other goes to `<input>.dlq` with `dlq.*` headers and the task moves on.
//! - Timers: one-shot timers on wall-clock or stream time, kept in the task's `_timers` store (and
//!   its changelog), so they survive restarts and follow the task to another instance.
//! - [`Metrics`] (`metrics.rs`): Prometheus counters in a registry the caller passes in.
//! - [`window`]: tumbling and hopping window arithmetic with grace, for aggregations.
//!
//! Shutdown is a [`CancellationToken`](tokio_util::sync::CancellationToken): the loop commits,
//! flushes the stores and leaves the group (closing the consumer's queue first, which keeps its
//! drop from stalling in `rd_kafka_destroy`).

mod app;
mod error;
mod metrics;
mod processor;
mod record;
mod store;
pub mod window;

pub use app::{Guarantee, ProcessorFactory, StreamsApp, StreamsBuilder, StreamsConfig};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use processor::{Context, Processor, TimeKind, Timer};
pub use record::{Output, Record};
