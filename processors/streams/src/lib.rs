//! # Layout
//!
//! The streams runtime under every processor, in the spirit of Kafka Streams but byte-oriented
//! and small. One file per concern, each with a doc comment saying what it guarantees:
//!
//! - [`Processor`] (`processor.rs`): the one trait a processor implements — `process` is the only
//!   required method; `init`, `punctuate` (timers), `close` and `admits` (backpressure) have
//!   defaults. It gets a
//!   [`Context`]: the task's named key-value stores, `forward` to output topics, timers and the
//!   runtime's clock.
//! - `config.rs` / `app.rs`: [`StreamsConfig`] and the builder; `run` creates the topics and
//!   starts the engine.
//! - `engine.rs`: the loop — poll, dispatch to tasks, retries with the task's partitions paused
//!   (the member keeps polling), timers, retention sweeps — and the rebalance callbacks.
//! - `task.rs`: one task per input partition number (co-partitioned inputs share it): its
//!   processor instance and stores; what one record or timer does, panics caught.
//! - `store.rs`: redb stores holding the committed state, a per-key batch cache, changelog
//!   entries carrying the batch number and the key's previous value.
//! - `commit.rs`: the commit protocol (at-least-once with a commit marker per task, or one Kafka
//!   transaction), with the argument for every crash point.
//! - `restore.rs`: restore from the changelogs outside the rebalance callback, rolling back a
//!   batch that never reached its commit point; stale local copies are detected and rebuilt.
//! - `dlq.rs`: dead letters and the one home of the `dlq.*` headers.
//! - `clock.rs`: the one wall clock ([`Clock`]), replaceable in tests.
//! - [`testing`]: a driver that runs a processor's tasks with no broker.
//! - [`Metrics`] (`metrics.rs`): Prometheus metrics in a registry the caller passes in.
//! - [`window`]: tumbling and hopping window arithmetic with grace, for aggregations.
//!
//! Shutdown is a [`CancellationToken`](tokio_util::sync::CancellationToken): the loop commits,
//! flushes the stores and leaves the group (closing the consumer's queue first, which keeps its
//! drop from stalling in `rd_kafka_destroy`).

mod app;
mod clock;
mod commit;
mod config;
pub mod dlq;
mod engine;
mod error;
mod metrics;
mod processor;
mod record;
mod restore;
mod store;
mod task;
pub mod testing;
pub mod window;

pub use app::{ProcessorFactory, StreamsApp, StreamsBuilder};
pub use clock::{system_now_ms, Clock, ManualClock, SystemClock};
pub use config::{Guarantee, StreamsConfig};
/// The recovery tests' kill switch: not part of the API, compiled only with the `testing`
/// feature (which this crate's own tests and `tributary-processors`' turn on).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use engine::KillPoint;
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use processor::{Context, Load, Processor, TimeKind, Timer};
pub use record::{Output, Record};
