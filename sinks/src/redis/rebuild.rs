//! Redis: a scratch key prefix, renamed onto the live prefix by one script.
//!
//! The copy is written under `<prefix>~rebuild` (so its keys, `<prefix>~rebuild:<view>:<id>`,
//! never match the live views' patterns `<prefix>:<view>:*`) by a [`RedisWriter`] configured
//! like the live one but for the prefix: the same compare-and-set script, expiries and
//! tombstone keys.
//!
//! The swap is **one** Lua script: it deletes every live key of the views (entities and their
//! tombstone keys) and `RENAME`s every key of the copy onto the live prefix (a rename keeps the
//! key's expiry). Redis runs a script atomically, so a reader sees the old keys or the new ones,
//! never a mix or an empty view. The old keys are gone with the swap; nothing is left to drop.
//!
//! Cost: the script lists keys with `KEYS` and touches every key of both copies; Redis serves
//! nobody else while it runs, so it blocks the server for time linear in the key count (a few
//! hundred milliseconds per 100k keys). For millions of keys the better design is to have
//! readers and the sink resolve the prefix through a pointer key, and swap that pointer instead;
//! the sink reads its prefix from configuration today. The script uses keys it does not declare,
//! which a single Redis server allows (a Redis Cluster could not rename across slots anyway).

use std::sync::Arc;

use ::redis::aio::ConnectionManager;
use ::redis::Script;

use crate::change::ViewWriter;
use crate::rebuild::{RebuildError, Target};
use crate::redis::live::{glob_escape, VIEWS};
use crate::redis::{RedisConfig, RedisWriter};

use super::STORE;

/// ARGV: live head (`<prefix>:`), scratch head, then per view its live pattern and its scratch
/// pattern. Returns `{renamed, deleted}`.
const SWAP: &str = r"
local live, scratch = ARGV[1], ARGV[2]
local deleted, renamed = 0, 0
local i = 3
while i < #ARGV do
  for _, k in ipairs(redis.call('KEYS', ARGV[i])) do
    redis.call('DEL', k)
    deleted = deleted + 1
  end
  i = i + 2
end
i = 4
while i <= #ARGV do
  for _, k in ipairs(redis.call('KEYS', ARGV[i])) do
    redis.call('RENAME', k, live .. string.sub(k, #scratch + 1))
    renamed = renamed + 1
  end
  i = i + 2
end
return {renamed, deleted}
";

/// The Redis views under one prefix.
pub struct RedisTarget {
    config: RedisConfig,
    conn: ConnectionManager,
}

fn failed(action: impl Into<String>) -> impl FnOnce(::redis::RedisError) -> RebuildError {
    let action = action.into();
    move |e| RebuildError::store(STORE, action)(e.to_string())
}

impl RedisTarget {
    /// Rebuilds the views the sink configured with `config` keeps; `conn` runs the swap.
    pub fn new(config: RedisConfig, conn: ConnectionManager) -> Self {
        Self { config, conn }
    }

    /// The prefix the copy is built under.
    pub fn scratch_prefix(&self) -> String {
        format!("{}~rebuild", self.config.prefix)
    }

    /// Deletes every key of the scratch prefix.
    async fn clear_scratch(&self) -> Result<(), RebuildError> {
        let pattern = format!("{}:*", glob_escape(&self.scratch_prefix()));
        let mut conn = self.conn.clone();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(failed(format!("scanning {pattern}")))?;
            if !keys.is_empty() {
                ::redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(failed(format!("deleting {pattern}")))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

#[async_trait::async_trait]
impl Target for RedisTarget {
    fn copy(&self) -> String {
        format!("key prefix {}", self.scratch_prefix())
    }

    async fn prepare(&self) -> Result<Arc<dyn ViewWriter>, RebuildError> {
        // Leftovers of an interrupted rebuild (the lock says none is running).
        self.clear_scratch().await?;
        let config = RedisConfig {
            prefix: self.scratch_prefix(),
            ..self.config.clone()
        };
        let writer = RedisWriter::connect(config).await.map_err(|e| {
            RebuildError::store(STORE, "connecting the copy's writer")(e.to_string())
        })?;
        Ok(Arc::new(writer))
    }

    async fn swap(&self) -> Result<(), RebuildError> {
        let live = format!("{}:", self.config.prefix);
        let scratch = format!("{}:", self.scratch_prefix());
        let script = Script::new(SWAP);
        let mut invocation = script.prepare_invoke();
        invocation.arg(&live).arg(&scratch);
        for view in VIEWS {
            invocation
                .arg(format!("{}{view}:*", glob_escape(&live)))
                .arg(format!("{}{view}:*", glob_escape(&scratch)));
        }
        let mut conn = self.conn.clone();
        let (renamed, deleted): (i64, i64) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(failed("swapping the key prefixes"))?;
        tracing::info!(renamed, deleted, "redis views swapped");
        Ok(())
    }

    async fn drop_old(&self) -> Result<(), RebuildError> {
        // The swap deleted the old keys; anything left under the scratch prefix is not a view.
        self.clear_scratch().await
    }

    async fn discard(&self) -> Result<(), RebuildError> {
        self.clear_scratch().await
    }
}
