//! A distributed lock on one Redis key: `SET key token NX PX ttl` to take it, and a script that
//! deletes the key only while it still holds the holder's token to give it back, so a holder
//! whose lease ran out cannot release someone else's lock.
//!
//! It is a lease, not a fence: work under the lock must finish (or [`RedisLock::extend`] it)
//! within the TTL. Used for jobs that must run once at a time across processes (a reconcile or a
//! migration runner).

use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{RedisResult, Script};

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// A held lock. Dropping it without [`RedisLock::release`] leaves it to expire.
#[derive(Debug)]
pub struct RedisLock {
    key: String,
    token: String,
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisLock {
    /// Takes the lock `key` for `ttl` if nobody holds it; `None` when it is held.
    pub async fn try_acquire(
        conn: &mut ConnectionManager,
        key: &str,
        ttl: Duration,
    ) -> RedisResult<Option<RedisLock>> {
        let token = uuid::Uuid::new_v4().to_string();
        let set: Option<String> = ::redis::cmd("SET")
            .arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async(conn)
            .await?;
        Ok(set.map(|_| RedisLock {
            key: key.to_string(),
            token,
        }))
    }

    /// Waits for the lock, trying every `retry`, until `wait` has passed.
    pub async fn acquire(
        conn: &mut ConnectionManager,
        key: &str,
        ttl: Duration,
        wait: Duration,
        retry: Duration,
    ) -> RedisResult<Option<RedisLock>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(lock) = Self::try_acquire(conn, key, ttl).await? {
                return Ok(Some(lock));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(retry).await;
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Extends the lease to `ttl` from now; `false` if the lock was lost meanwhile.
    pub async fn extend(&self, conn: &mut ConnectionManager, ttl: Duration) -> RedisResult<bool> {
        let n: i64 = Script::new(EXTEND)
            .key(&self.key)
            .arg(&self.token)
            .arg(ttl_ms(ttl))
            .invoke_async(conn)
            .await?;
        Ok(n == 1)
    }

    /// Gives the lock back; `false` if it had expired (and maybe been taken by another holder,
    /// whose lock stays untouched).
    pub async fn release(self, conn: &mut ConnectionManager) -> RedisResult<bool> {
        let n: i64 = Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(conn)
            .await?;
        Ok(n == 1)
    }
}
