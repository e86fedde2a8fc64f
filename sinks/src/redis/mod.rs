//! The Redis sink: order-status and product caches, user sessions with expiry and per-user order
//! rate counters, all under a versioned key prefix (`tributary:v1:` by default); plus the
//! distributed lock the pipeline uses to run a job once at a time.
//!
//! - [`projection`]: which events change which keys.
//! - [`writer`]: one pipeline per batch; each entity goes through a compare-and-set script that
//!   applies a change only when its version is newer than the one stored in the hash.
//! - [`lock`]: `SET NX PX` with a token, released by token.

pub mod connect;
pub mod lock;
pub mod projection;
pub mod writer;

pub use connect::{client, REDIS_CA_VAR};
pub use lock::RedisLock;
pub use projection::RedisProjection;
pub use writer::{RedisConfig, RedisSinkError, RedisWriter};
