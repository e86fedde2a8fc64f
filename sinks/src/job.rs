//! What the jobs on one store's views ([`crate::reconcile`], [`crate::rebuild`]) share: the
//! store's lock ([`LockConfig`], held as a [`Lease`]), what a job works with ([`Parts`]) and
//! how it shows its progress ([`Progress`]).
//!
//! ## Why one lock per store, whatever the job
//!
//! Two rebuilds of one store would swap each other's copies away, a reconcile running across a
//! swap would compare a view that changes identity under it (or, with `--repair`, fix an old
//! copy about to be dropped), and two repairs would interleave. One job per store at a time,
//! whichever kind, is the simple rule: every job takes [`LockConfig::of_store`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use tributary_schemas::Codec;

use crate::change::ViewWriter;
use crate::rebuild::RebuildError;
use crate::reconcile::ReconcileError;
use crate::redis::RedisLock;
use crate::runner::Projection;
use crate::store::{Settings, StoreError};

/// The Redis lock a job on a store holds for its whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockConfig {
    /// The Redis key; see [`LockConfig::of_store`].
    pub key: String,
    /// Lease of the lock; it is extended every third of it while the run goes on.
    pub ttl: Duration,
    /// How long to wait for a lock another run holds.
    pub wait: Duration,
}

impl LockConfig {
    /// The lock of `store`: `tributary:lock:reconcile:<store>` (the name predates rebuild,
    /// which takes the same key, see the module documentation), a 60 s lease, no waiting.
    pub fn of_store(store: &str) -> Self {
        Self {
            key: format!("tributary:lock:reconcile:{store}"),
            ttl: Duration::from_secs(60),
            wait: Duration::ZERO,
        }
    }
}

/// Progress of a long run (the CLI draws a bar on stderr; tests pass [`NoProgress`]).
pub trait Progress: Send + Sync {
    /// A new phase with `total` steps (0: unknown).
    fn start(&self, phase: &str, total: u64);
    fn advance(&self, n: u64);
    fn finish(&self) {}
}

/// Shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

/// What a job on one store works with: the store's projection and sink writer, the store as
/// the job sees it (`S`: a [`crate::reconcile::LiveStore`] for reconcile, a
/// [`crate::rebuild::Target`] for rebuild), the lock's connection and a progress display.
pub struct Parts<'a, S: ?Sized> {
    pub codec: &'a Codec,
    /// The store's projection: the same one its sink runs.
    pub projection: &'a dyn Projection,
    /// The sink's writer of the live view: repairs and a rebuild's final catch-up go through it.
    pub writer: &'a dyn ViewWriter,
    /// The store as the job sees it.
    pub store: &'a S,
    /// Connection for the lock.
    pub lock: ConnectionManager,
    pub progress: &'a dyn Progress,
}

/// The connection a job holds the store's lock on (callers need not name the Redis client).
pub type LockConnection = ConnectionManager;

/// What a job run over a list of stores needs besides each store's own parts
/// ([`crate::reconcile::reconcile_stores`], [`crate::rebuild::rebuild_stores`]).
pub struct Jobs<'a> {
    /// The values of the stores' options: each store is connected from them.
    pub settings: &'a Settings,
    /// Put before every event topic name (a pipeline started with the same prefix).
    pub topic_prefix: &'a str,
    pub codec: &'a Codec,
    /// Connection for the stores' locks ([`lock_connection`]).
    pub lock: ConnectionManager,
    /// Makes the progress display of one store's run, given the store's name.
    pub progress: &'a (dyn Fn(&'static str) -> Box<dyn Progress> + Send + Sync),
}

/// The connection that holds the stores' locks: the Redis of `settings` (its Redis views'),
/// whatever the store the job is on.
pub async fn lock_connection(settings: &Settings) -> Result<ConnectionManager, StoreError> {
    use crate::redis::store::Redis;
    let url = Redis::url(settings)?;
    crate::redis::manager(url, Redis::ca(settings))
        .await
        .map_err(StoreError::connect(
            crate::redis::STORE,
            format!(
                "connecting to Redis at {} for the lock",
                tributary_runtime::redact::url(url)
            ),
        ))
}

/// Why a job on one store of a list failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The store could not be configured or connected.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reconciling {store}: {source}")]
    Reconcile {
        store: &'static str,
        #[source]
        source: ReconcileError,
    },
    #[error("rebuilding {store}: {source}")]
    Rebuild {
        store: &'static str,
        #[source]
        source: RebuildError,
    },
}

impl JobError {
    /// Whether running again can help.
    pub fn retriable(&self) -> bool {
        match self {
            JobError::Store(e) => e.retriable(),
            JobError::Reconcile { source, .. } => source.retriable(),
            JobError::Rebuild { source, .. } => source.retriable(),
        }
    }
}

/// The held lock and the task extending it.
pub(crate) struct Lease {
    lock: Arc<RedisLock>,
    conn: ConnectionManager,
    lost: Arc<AtomicBool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Lease {
    pub(crate) async fn take(
        mut conn: ConnectionManager,
        config: &LockConfig,
    ) -> Result<Self, ReconcileError> {
        let key = config.key.clone();
        let lock = RedisLock::acquire(
            &mut conn,
            &key,
            config.ttl,
            config.wait,
            Duration::from_millis(200),
        )
        .await
        .map_err(|source| ReconcileError::Lock {
            key: key.clone(),
            source,
        })?
        .ok_or(ReconcileError::Locked { key })?;
        let lock = Arc::new(lock);
        let lost = Arc::new(AtomicBool::new(false));
        let ttl = config.ttl;
        let keeper = {
            let (lock, lost, mut conn) = (lock.clone(), lost.clone(), conn.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match lock.extend(&mut conn, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // Redis unreachable for a moment: the lease has two more tries.
                        Err(e) => {
                            tracing::warn!(key = lock.key(), error = %e, "cannot extend the store's lock")
                        }
                    }
                }
            })
        };
        Ok(Self {
            lock,
            conn,
            lost,
            keeper,
        })
    }

    pub(crate) fn check(&self) -> Result<(), ReconcileError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(ReconcileError::LockLost {
                key: self.lock.key().to_string(),
            });
        }
        Ok(())
    }

    pub(crate) async fn give_back(self) {
        self.keeper.abort();
        let _ = self.keeper.await;
        let mut conn = self.conn;
        match Arc::try_unwrap(self.lock) {
            Ok(lock) => {
                let key = lock.key().to_string();
                if let Err(e) = lock.release(&mut conn).await {
                    tracing::warn!(key, error = %e, "cannot release the store's lock; it expires by itself");
                }
            }
            Err(_) => tracing::warn!("the store's lock is still shared; it expires by itself"),
        }
    }
}
