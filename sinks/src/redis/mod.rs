//! The Redis sink: order-status and product caches, user sessions with expiry and per-user order
//! rate counters, all under a versioned key prefix ([`DEFAULT_PREFIX`], `tributary:v1`, by default); plus the
//! distributed lock the pipeline uses to run a job once at a time.
//!
//! - [`projection`]: which events change which keys.
//! - [`writer`]: one pipeline per batch; each entity goes through a compare-and-set script that
//!   applies a change only when its version is newer than the one stored in the hash.
//! - [`lock`]: `SET NX PX` with a token, released by token.
//! - [`connect`]: the one place a Redis client is built.
//! - [`store`]: the list entry ([`store::Redis`]) and [`RedisConfig`]'s `build()`.
//! - [`live`]: the hashes as reconcile reads and releases them.
//! - [`rebuild`]: a scratch key prefix, renamed onto the live one by one script.
//! - [`growth`]: keys per view, and the server's memory.

pub mod connect;
pub mod growth;
pub mod live;
pub mod lock;
pub mod projection;
pub mod rebuild;
pub mod store;
pub mod writer;

pub use connect::{client, manager, REDIS_CA_VAR};
pub use lock::RedisLock;
pub use projection::RedisProjection;
pub use writer::{RedisConfig, RedisSinkError, RedisWriter, DEFAULT_PREFIX};

/// The store name used in metrics, errors and the list of stores.
pub const STORE: &str = "redis";
