//! Idempotency keys: a client that did not get an answer (a timeout, a dropped connection)
//! retries with the same `Idempotency-Key` header and the gateway answers with the command id
//! of the first attempt instead of sending the command again.
//!
//! The gateway assigns every command id itself, so without a key a retry would be a new
//! command (the processors deduplicate by command id, and a fresh id is never a duplicate). A
//! key is scoped to the principal (two callers cannot collide, nor probe each other's keys)
//! and lives in Redis, shared by every gateway instance, for [`Idempotency::ttl`].
//!
//! The key is claimed (`SET NX`) *before* the command is sent, so two concurrent attempts
//! cannot both send; a send that fails releases it, so the caller's retry is sent. A gateway
//! that dies between the claim and the broker's acknowledgement leaves a claim whose command
//! may or may not have been written: retries within the TTL are answered as duplicates of it
//! (its id is returned, which the caller can look for), never sent twice.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

/// Where keys are kept and for how long.
#[derive(Clone)]
pub struct Idempotency {
    pub redis: ConnectionManager,
    /// Key prefix, e.g. `tributary:v1:idempotency:`.
    pub prefix: String,
    /// How long a key is remembered (a retry after that is a new command).
    pub ttl: Duration,
}

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is new: send the command; [`Idempotency::release`] it if the send fails.
    Claimed,
    /// An earlier request with the same key and body: its command id.
    Duplicate { command_id: String },
    /// The key was used for a different body (a client bug: the same key for two commands).
    Conflict { command_id: String },
}

/// The header a client sends.
pub const HEADER: &str = "idempotency-key";

impl Idempotency {
    fn key(&self, principal: &str, key: &str) -> String {
        // Hashed: keys are client-chosen text; the Redis key stays bounded and printable.
        let digest = Sha256::digest(format!("{principal}\n{key}").as_bytes());
        format!("{}{}", self.prefix, hex(&digest))
    }

    /// Claims `key` of `principal` for `command_id` sent with `body`.
    pub async fn claim(
        &self,
        principal: &str,
        key: &str,
        body: &[u8],
        command_id: &str,
    ) -> redis::RedisResult<Claim> {
        let redis_key = self.key(principal, key);
        let fingerprint = hex(&Sha256::digest(body));
        let value = format!("{command_id} {fingerprint}");
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.redis.clone();
        // SET NX PX returns the previous value with GET (Redis >= 7): one round trip.
        let previous: Option<String> = redis::cmd("SET")
            .arg(&redis_key)
            .arg(&value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        let Some(previous) = previous else {
            return Ok(Claim::Claimed);
        };
        let (id, print) = previous.split_once(' ').unwrap_or((previous.as_str(), ""));
        Ok(if print == fingerprint {
            Claim::Duplicate {
                command_id: id.to_string(),
            }
        } else {
            Claim::Conflict {
                command_id: id.to_string(),
            }
        })
    }

    /// Gives `key` up after its command could not be sent, so that a retry is sent.
    pub async fn release(&self, principal: &str, key: &str) {
        let mut conn = self.redis.clone();
        let r: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.key(principal, key))
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "releasing an idempotency key; a retry within its TTL will be answered as a duplicate");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
