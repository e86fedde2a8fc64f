//! Applies batches of changes to Redis: one pipeline per batch, one compare-and-set script call
//! per entity.

use std::sync::{Arc, RwLock};
use std::time::Duration;
use tributary_runtime::redact;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{ErrorKind, RedisError, Script};
use serde_json::Value;

use super::projection::{EXPIRE_AT_FIELD, MEMBER_FIELD};
use crate::change::{check_id_lengths, Change, Op, ViewWriter, WriteError, WriteOutcome};

use super::STORE;

/// Longest entity id written. Redis itself takes keys up to 512 MB; this sink refuses ids over
/// 1 KB, MongoDB's index-key limit, so that the two key-value views agree on which entities
/// exist and a scan of the prefix stays cheap.
pub const MAX_ID_BYTES: usize = 1024;

/// Versioned compare-and-set of one entity hash.
///
/// The hash keeps its version in the `_version` field. A deleted entity leaves its version in a
/// tombstone key (`<key>:tombstone`, expiring) so that replaying older events after a delete
/// does not bring the entity back. Applies only when `ARGV[1]` is newer than both; returns 1 when
/// applied, 0 when stale.
///
/// KEYS: entity hash, tombstone key.
/// ARGV: version, op (`upsert` | `patch` | `delete`), expire-at ms (0: none), tombstone TTL ms,
/// number of fields to set N, then N field/value pairs, then fields to remove.
///
/// The `#!lua` line (Redis 7 script flags, none given) makes Redis check `maxmemory` before the
/// script starts: a script without flags is only checked at its first write and may then write
/// on, and this one's first write is a `DEL`, which is always allowed; so without the line a
/// full Redis with `noeviction` took every change.
const CAS_SCRIPT: &str = r"#!lua
local version = tonumber(ARGV[1])
local current = redis.call('HGET', KEYS[1], '_version') or redis.call('GET', KEYS[2])
if current and tonumber(current) >= version then
  return 0
end
local op = ARGV[2]
if op == 'delete' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
  return 1
end
if op == 'upsert' then
  redis.call('DEL', KEYS[1])
end
redis.call('DEL', KEYS[2])
local n = tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
redis.call('HSET', KEYS[1], '_version', ARGV[1])
local expire_at = tonumber(ARGV[3])
if expire_at > 0 then
  redis.call('PEXPIREAT', KEYS[1], expire_at)
end
return 1
";

/// The key prefix of the views unless told otherwise: a key is `<prefix>:<view>:<id>`. The one
/// spelling of the default (the gateway's keys, `<prefix>:ratelimit:...`, derive from it too).
pub const DEFAULT_PREFIX: &str = "tributary:v1";

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://...` or `rediss://...` (TLS), ACL user and password in the userinfo; defaults
    /// to the local stack's (the binary sets it from `--redis-url`).
    pub url: String,
    /// PEM file of the CAs a `rediss://` server is verified against instead of the system's
    /// roots; none by default (the binary sets it from `--redis-ca`; see [`super::connect`]).
    pub ca_file: Option<String>,
    /// Prefix of every key, versioned so that a new layout can live beside the old one; a key is
    /// `<prefix>:<view>:<id>` ([`DEFAULT_PREFIX`] by default).
    pub prefix: String,
    /// How long a deleted entity's version is remembered.
    pub tombstone_ttl: Duration,
    /// Bound on one request; a slower one counts as unavailable.
    pub response_timeout: Duration,
    pub connection_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: tributary_runtime::config::REDIS_URL.default.to_string(),
            ca_file: None,
            prefix: DEFAULT_PREFIX.into(),
            tombstone_ttl: Duration::from_secs(7 * 24 * 3600),
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(2),
        }
    }
}

/// Why the Redis sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    #[error("invalid Redis url `{url}`: {source}")]
    Url {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("connecting to Redis at {url} failed: {source}")]
    Connect {
        url: String,
        #[source]
        source: RedisError,
    },
}

impl RedisSinkError {
    pub fn retriable(&self) -> bool {
        matches!(self, RedisSinkError::Connect { .. })
    }
}

/// The Redis [`ViewWriter`].
#[derive(Clone)]
pub struct RedisWriter {
    /// Replaced by a fresh manager when its connection cannot be re-established by itself
    /// (see [`RedisWriter::renew`]); never locked across an await.
    conn: Arc<RwLock<ConnectionManager>>,
    client: ::redis::Client,
    manager: ConnectionManagerConfig,
    config: RedisConfig,
    cas: Script,
}

impl RedisWriter {
    /// Connects (the connection manager reconnects by itself afterwards).
    pub async fn connect(config: RedisConfig) -> Result<Self, RedisSinkError> {
        let client =
            super::connect::client(&config.url, config.ca_file.as_deref()).map_err(|source| {
                RedisSinkError::Url {
                    url: redact::url(&config.url),
                    source,
                }
            })?;
        let error = |source| RedisSinkError::Connect {
            url: redact::url(&config.url),
            source,
        };
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(config.response_timeout)
            .set_connection_timeout(config.connection_timeout)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let conn = ConnectionManager::new_with_config(client.clone(), manager.clone())
            .await
            .map_err(error)?;
        Ok(Self {
            conn: Arc::new(RwLock::new(conn)),
            client,
            manager,
            config,
            cas: Script::new(CAS_SCRIPT),
        })
    }

    /// The connection, for readers and for [`super::RedisLock`].
    pub fn connection(&self) -> ConnectionManager {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the connection manager by a freshly connected one. The manager reconnects by
    /// itself only after an I/O error: when its reconnection failed otherwise (the password was
    /// rotated: `WRONGPASS` during the handshake), it would answer that error forever, even
    /// once the password is right again.
    async fn renew(&self) {
        match ConnectionManager::new_with_config(self.client.clone(), self.manager.clone()).await {
            Ok(fresh) => *self.conn.write().unwrap_or_else(|p| p.into_inner()) = fresh,
            Err(e) => tracing::debug!(error = %e, "redis: reconnecting failed"),
        }
    }

    /// The full key of entity `key` of `view`.
    pub fn key(&self, view: &str, key: &str) -> String {
        format!("{}:{view}:{key}", self.config.prefix)
    }

    fn pipeline(&self, batch: &[Change]) -> Result<::redis::Pipeline, WriteError> {
        let mut pipe = ::redis::pipe();
        let tombstone_ttl = i64::try_from(self.config.tombstone_ttl.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        for c in batch {
            let key = self.key(c.view, &c.key);
            let (op, fields) = match &c.op {
                Op::Upsert(f) => ("upsert", Some(f)),
                Op::Patch(f) => ("patch", Some(f)),
                Op::Delete => ("delete", None),
                Op::Append(f) => {
                    // A set member added once: replaying adds nothing, and the count of an entity
                    // (e.g. orders of a user in a window) is the hash's length.
                    let Some(member) = f.get(MEMBER_FIELD).and_then(text) else {
                        return Err(WriteError::Rejected {
                            store: STORE,
                            view: c.view,
                            key: c.key.clone(),
                            message: format!("an append needs `{MEMBER_FIELD}`"),
                        });
                    };
                    pipe.cmd("HSETNX")
                        .arg(&key)
                        .arg(member)
                        .arg(c.version.to_string());
                    if let Some(at) = f.get(EXPIRE_AT_FIELD).and_then(Value::as_i64) {
                        pipe.cmd("PEXPIREAT").arg(&key).arg(at).ignore();
                    }
                    continue;
                }
            };
            let mut set: Vec<(String, String)> = Vec::new();
            let mut remove: Vec<String> = Vec::new();
            let mut expire_at = 0i64;
            for (name, value) in fields.into_iter().flatten() {
                if name == EXPIRE_AT_FIELD {
                    expire_at = value.as_i64().unwrap_or(0);
                    continue;
                }
                match text(value) {
                    Some(v) => set.push((name.clone(), v)),
                    None => remove.push(name.clone()),
                }
            }
            let mut cmd = ::redis::cmd("EVALSHA");
            cmd.arg(self.cas.get_hash())
                .arg(2)
                .arg(&key)
                .arg(format!("{key}:tombstone"))
                .arg(c.version)
                .arg(op)
                .arg(expire_at)
                .arg(tombstone_ttl)
                .arg(set.len());
            for (k, v) in &set {
                cmd.arg(k).arg(v);
            }
            for k in &remove {
                cmd.arg(k);
            }
            pipe.add_command(cmd);
        }
        Ok(pipe)
    }
}

/// A JSON value as a hash field value; `None` for null (the field is removed).
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

#[async_trait::async_trait]
impl ViewWriter for RedisWriter {
    fn store(&self) -> &'static str {
        STORE
    }

    async fn write(&self, batch: &[Change]) -> Result<WriteOutcome, WriteError> {
        if batch.is_empty() {
            return Ok(WriteOutcome::default());
        }
        check_id_lengths(
            STORE,
            batch,
            MAX_ID_BYTES,
            "the Redis sink's key limit",
            |c| c.key.len(),
        )?;
        let pipe = self.pipeline(batch)?;
        let mut conn = self.connection();
        // Every command is idempotent, so a pipeline that failed part way is simply sent again.
        let results: Vec<i64> = match pipe.query_async(&mut conn).await {
            Ok(r) => r,
            Err(e) if needs_new_connection(&e) => {
                self.renew().await;
                return Err(classify(e));
            }
            Err(e) if e.kind() == ErrorKind::NoScriptError => {
                // A restarted (or flushed) server forgot the script: load it and send again.
                self.cas
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(classify)?;
                pipe.query_async(&mut conn).await.map_err(classify)?
            }
            Err(e) => return Err(classify(e)),
        };
        let applied = results.iter().filter(|r| **r > 0).count() as u64;
        Ok(WriteOutcome {
            applied,
            stale: (results.len() as u64).saturating_sub(applied),
        })
    }
}

/// Only an allow-list of replies is about the data and dead-lettered: `WRONGTYPE` (the key
/// holds another type) and the `ERR` replies about a value (not an integer or float, out of
/// range, over a size limit). Everything else is the server's state and is retried, never
/// dead-lettered: connection trouble and timeouts, `OOM` (maxmemory reached with noeviction),
/// `MISCONF` (snapshots failing), `NOAUTH`/`WRONGPASS` (credentials), `NOPERM` (ACL),
/// `READONLY` (a replica), `LOADING`, `BUSY`, `MASTERDOWN`, and any code not listed.
fn classify(e: RedisError) -> WriteError {
    if is_data_error(&e) {
        WriteError::Rejected {
            store: STORE,
            view: "(batch)",
            // Redis does not say which command of the pipeline failed; the runner narrows it
            // down record by record.
            key: String::new(),
            message: e.to_string(),
        }
    } else {
        WriteError::Unavailable {
            store: STORE,
            message: e.to_string(),
        }
    }
}

/// An authentication failure: the connection manager will not recover from it by itself.
fn needs_new_connection(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH") | Some("WRONGPASS"))
}

/// `ERR` replies that are about the value of a command, not the server.
const DATA_ERR_DETAILS: &[&str] = &[
    "not an integer",
    "not a valid float",
    "out of range",
    "string exceeds maximum allowed size",
    "invalid expire time",
    "invalid bulk length",
];

fn is_data_error(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout() {
        return false;
    }
    match e.code() {
        Some("WRONGTYPE") => true,
        Some("ERR") => {
            let text = e.to_string();
            DATA_ERR_DETAILS.iter().any(|d| text.contains(d))
        }
        _ => false,
    }
}
