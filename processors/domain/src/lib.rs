//! # Layout
//!
//! The domain processors, each a [`tributary_streams`] application over the pipeline's topics
//! (all names optionally prefixed, see [`Topics`]). Start one with [`DomainApp::run`].
//!
//! | file | app id | reads | writes |
//! |---|---|---|---|
//! | `inventory.rs` | `tributary-inventory` | `commands.inventory`, internal `inventory-ledger` (1 partition) | `events.inventory`, `events.rejections` |
//! | `payments.rs` | `tributary-payments` | `commands.payments` | `events.payments`, `events.rejections` |
//! | `saga.rs` (+ `orders.rs`, `catalog.rs`) | `tributary-orders` | `commands.orders`, internal `orders-saga`, `events.inventory`, `events.payments` | `events.orders`, `commands.inventory`, `commands.payments`, `events.rejections` |
//! | `users.rs` | `tributary-users` | `commands.users`, internal `users`, `users-emails` | `events.users`, `events.rejections` |
//! | `analytics.rs` | `tributary-analytics` | `events.orders`, internal `analytics` (1 partition) | `events.analytics` |
//! | `notifications.rs` | `tributary-notifications` | `events.orders`, `events.users` | `events.notifications` |
//!
//! ## How the saga talks to inventory and payments
//!
//! Orchestration by commands: the saga sends `ReserveStock` / `ReleaseStock` / `CommitStock` on
//! `commands.inventory` and `AuthorizePayment` / `CapturePayment` / `RefundPayment` on
//! `commands.payments`, all keyed by the order id, and listens for the answers on
//! `events.inventory` and `events.payments`, which inventory and payments key by the order id.
//!
//! ## Keys and co-partitioning
//!
//! The saga keeps an order's state in the task of the order's partition, so an order's command
//! and its answers must share a partition number. The answers are produced by the runtime
//! (murmur2 on the key, as Java clients do); a command produced by another client may have been
//! partitioned differently (librdkafka's default is CRC32). So the saga first forwards
//! `commands.orders` unchanged to the internal `orders-saga` topic, which puts each order on the
//! runtime's partition for its id, and works from there. `orders-saga`, `events.inventory` and
//! `events.payments` must have equal partition counts; the saga checks this at start.
//!
//! The stock ledger is one task: a reservation takes all of an order's lines or none, and its
//! products are on every partition of `commands.inventory`. The inventory app forwards every
//! inventory command to the one-partition `inventory-ledger` topic and applies them there, in
//! the order of each source partition (so a saga's release always follows its reservation).
//!
//! The saga needs every product's price and sees only its own partition of `events.inventory`;
//! `catalog.rs` keeps a process-wide table read from all partitions (a global table).
//!
//! ## State and timers
//!
//! Stores (changelogged by the runtime): inventory `products`, `reservations`, `seen`;
//! payments `payments`, `seen`; saga `orders`, `seen`; notifications `sent`. The `seen` stores
//! hold the envelope ids already handled, which makes redelivered and duplicated records no-ops.
//! The saga schedules one wall-clock timer per open order (`timeout:<order id>`); when it fires
//! before the order is final, the saga compensates and cancels. Every emitted event carries its
//! aggregate's next `sequence`, kept in the same store entry as the aggregate.
//!
//! ## Invariants
//!
//! [`invariants`] checks, over the events of a run: every order ends confirmed or cancelled,
//! stock is conserved, a payment is captured iff its order was confirmed and refunded iff the
//! order was compensated after authorization, one notification per order outcome.

mod analytics;
mod app;
mod catalog;
mod common;
mod error;
pub mod invariants;
pub mod inventory;
mod notifications;
pub mod orders;
pub mod payments;
pub mod saga;
mod topics;
pub mod users;

pub use analytics::AnalyticsProcessor;
pub use app::{App, Build, Building, DomainApp, DomainConfig, Factory};
pub use catalog::{Catalog, Price};
pub use error::{ProcessorError, Result};
pub use inventory::InventoryProcessor;
pub use notifications::NotificationsProcessor;
pub use payments::{DeclineRule, PaymentsProcessor};
pub use saga::{OrderSaga, DEFAULT_SAGA_MAX_OPEN};
pub use topics::Topics;
pub use users::UsersProcessor;
