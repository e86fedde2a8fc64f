//! # Layout
//!
//! Rebuild: builds a fresh copy of a store's views from the log beside the live one, then swaps
//! it in atomically, so readers never see an empty or half-built view.
//!
//! ```text
//!  Target::prepare ──► empty copy (schema / database / index / key prefix) + its ViewWriter
//!  replay [low, W1)  ──► Projection ──► batches ──► coalesce ──► copy's ViewWriter
//!  catch-up passes [W1, W2) ... ──► copy's ViewWriter            (log head, while the sink runs)
//!  Target::swap      ──► one atomic step: the copy becomes the live view, by the live name
//!  final pass [W2, W3) ──► the live ViewWriter                   (W3 taken after the swap)
//!  Target::drop_old  ──► the old copy is gone
//! ```
//!
//! - each store's folder implements [`Target`] in its `rebuild.rs` (e.g.
//!   `crate::postgres::rebuild`): where the copy lives, how it is swapped in, how the old one is
//!   dropped. Nothing here names a store: [`rebuild`] works on whatever [`Parts`] it is given,
//!   and the stores come from [`crate::stores`].
//! - the replay is reconcile's ([`crate::reconcile::replay`]); here its records go, in batches
//!   of [`RebuildConfig::batch_records`] records, through [`coalesce_counted`] and the store's own
//!   [`ViewWriter`] pointed at the copy, so versions, coalescing and tombstones behave exactly as
//!   in the sink.
//!
//! ## Why the swapped-in view is complete
//!
//! The live sink keeps running during a rebuild and keeps writing the live view *by name*. Let
//! `W2` be the watermarks the last catch-up pass read up to, and `W3` the watermarks taken just
//! *after* the swap committed.
//!
//! - Every record below `W2` is in the copy (the first replay and the catch-up passes).
//! - Every record at or above `W3` was appended after the swap, so the sink consumes it after
//!   the swap and writes it to the new live view.
//! - The records in `[W2, W3)` may have been applied by the sink to the *old* view only (and
//!   their offsets committed). So right after the swap, a final pass replays exactly `[W2, W3)`
//!   through the live writer into the new live view.
//!
//! Writes are idempotent by version, so what both the sink and a pass apply changes nothing the
//! second time, and an older change never overwrites a newer one whichever comes first. The
//! catch-up passes before the swap keep `[W2, W3)` small: between the swap and the end of the
//! final pass (typically milliseconds) a reader can see the view a few records behind what the
//! old view had shown, never empty or half-built.
//!
//! ## The lock
//!
//! A rebuild holds the *same* Redis lock as a reconcile of the store
//! ([`LockConfig::of_store`], see [`crate::job`]): two rebuilds of one store
//! would swap each other's copies away, and a reconcile running across a swap would compare a
//! view that changes identity under it (or, with `--repair`, fix an old copy about to be
//! dropped). One job per store at a time, whichever kind, is the simple rule.

use std::sync::Arc;
use std::time::Duration;

use crate::change::{coalesce_counted, Change, ViewWriter, WriteError, WriteOutcome};
use crate::job::{JobError, Jobs, Lease, LockConfig};
use crate::reconcile::replay::{self, Fold, Range, Watermarks};
use crate::reconcile::ReconcileError;
use crate::runner::SourceTopic;
use crate::store::Store;

/// Why a rebuild failed. The live view is untouched unless the error says the swap happened.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Replaying the log, or the lock (see [`ReconcileError`]).
    #[error(transparent)]
    Replay(#[from] ReconcileError),
    /// A store operation of the rebuild itself (creating, swapping or dropping a copy).
    #[error("{store}: {action}: {message}")]
    Store {
        store: &'static str,
        action: String,
        message: String,
    },
    /// Writing the copy (or the final catch-up) failed for good.
    #[error("{phase}: {source}")]
    Write {
        phase: &'static str,
        #[source]
        source: WriteError,
    },
    /// The final catch-up after the swap failed: the new view is live but may lack the records
    /// appended during the swap until the sink or a reconcile `--repair` writes them.
    #[error("swapped in, but the catch-up after the swap failed: {0}")]
    AfterSwap(#[source] Box<RebuildError>),
}

impl RebuildError {
    /// Whether running again can help.
    pub fn retriable(&self) -> bool {
        match self {
            RebuildError::Replay(e) => e.retriable(),
            RebuildError::Store { .. } => true,
            RebuildError::Write { source, .. } => source.retriable(),
            RebuildError::AfterSwap(e) => e.retriable(),
        }
    }

    pub(crate) fn store(
        store: &'static str,
        action: impl Into<String>,
    ) -> impl FnOnce(String) -> RebuildError {
        let action = action.into();
        move |message| RebuildError::Store {
            store,
            action,
            message,
        }
    }
}

/// Where one store's copy lives and how it replaces the live view.
#[async_trait::async_trait]
pub trait Target: Send + Sync {
    /// Where the copy is built (for messages).
    fn copy(&self) -> String;

    /// Drops what an interrupted rebuild left, creates the empty copy (with the live view's
    /// structure) and returns the writer that fills it.
    async fn prepare(&self) -> Result<Arc<dyn ViewWriter>, RebuildError>;

    /// Makes the copy the live view in one atomic step.
    async fn swap(&self) -> Result<(), RebuildError>;

    /// Drops the old view (and whatever of the copy's scaffolding is left) after the swap.
    async fn drop_old(&self) -> Result<(), RebuildError>;

    /// Drops the copy of a rebuild that failed before its swap.
    async fn discard(&self) -> Result<(), RebuildError>;
}

/// How to rebuild one store.
#[derive(Debug, Clone)]
pub struct RebuildConfig {
    pub brokers: String,
    /// Topics to replay; empty means the production topic of every stream the projection reads.
    pub sources: Vec<SourceTopic>,
    /// The store's lock, held for the whole run: the same one a reconcile takes.
    pub lock: LockConfig,
    /// The replay fails when no record arrives for this long while records are due.
    pub idle_timeout: Duration,
    /// Records per write of the copy (the sink's `batch_max_records`).
    pub batch_records: usize,
    /// Catch-up passes before the swap at most; they stop early once a pass finds at most
    /// [`RebuildConfig::settled`] new records.
    pub catch_up_passes: usize,
    pub settled: u64,
    /// Attempts per batch while the store is unavailable, with backoff from 100 ms to 5 s.
    pub write_attempts: u32,
    /// Rebuild from an event topic whose log start is above 0 anyway (see
    /// [`replay::check_whole_log`]): the new view then holds what the retained records make.
    pub allow_truncated_log: bool,
}

impl RebuildConfig {
    /// Defaults for `store`: the local stack's broker (the binary sets `brokers`), the store's
    /// lock ([`LockConfig::of_store`]: see the module documentation), a replay idle timeout of
    /// 30 s, 500 records per batch, up to 5 catch-up passes.
    pub fn new(store: &str) -> Self {
        Self {
            brokers: tributary_runtime::config::KAFKA_BROKERS.default.to_string(),
            sources: Vec::new(),
            lock: LockConfig::of_store(store),
            idle_timeout: Duration::from_secs(30),
            batch_records: 500,
            catch_up_passes: 5,
            settled: 100,
            write_attempts: 10,
            allow_truncated_log: false,
        }
    }
}

/// What a rebuild works with: the store as rebuild sees it is its [`Target`]; the writer is
/// the sink's writer of the live view, which the final catch-up goes through.
pub type Parts<'a> = crate::job::Parts<'a, dyn Target + 'a>;

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    pub store: &'static str,
    /// Where the copy was built.
    pub copy: String,
    /// Records replayed into the copy (first replay and catch-up passes).
    pub records: u64,
    /// Records the sink would dead-letter (undecodable, or refused by the projection).
    pub skipped: u64,
    /// Catch-up passes run before the swap.
    pub passes: usize,
    /// Records of the final pass after the swap.
    pub after_swap: u64,
    /// Changes the writes applied, and those skipped as stale.
    pub applied: u64,
    pub stale: u64,
    /// Entities the store rejected (the sink dead-letters their records).
    pub rejected: u64,
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: rebuilt from {} records ({} skipped) in {}, {} catch-up pass(es), {} record(s) after the swap; {} changes applied, {} stale, {} rejected",
            self.store,
            self.records,
            self.skipped,
            self.copy,
            self.passes,
            self.after_swap,
            self.applied,
            self.stale,
            self.rejected
        )
    }
}

/// Rebuilds each of `stores` in turn (connected from `jobs.settings`, replaying the topics of
/// `jobs.topic_prefix`), handing each report to `on_report` as soon as it is made. `configure`
/// adjusts each store's [`RebuildConfig::new`]. Stops at the first store that fails.
pub async fn rebuild_stores(
    stores: &[&'static dyn Store],
    jobs: &Jobs<'_>,
    configure: &(dyn Fn(&mut RebuildConfig) + Send + Sync),
    on_report: &mut (dyn FnMut(&RebuildReport) + Send),
) -> Result<Vec<RebuildReport>, JobError> {
    let mut reports = Vec::with_capacity(stores.len());
    for &store in stores {
        let connected = store.config(jobs.settings)?.build().await?;
        let mut config = RebuildConfig::new(store.name());
        config.sources = crate::stores::sources(connected.projection.as_ref(), jobs.topic_prefix);
        configure(&mut config);
        let progress = (jobs.progress)(store.name());
        let parts = Parts {
            codec: jobs.codec,
            projection: connected.projection.as_ref(),
            writer: connected.writer.as_ref(),
            store: connected.target.as_ref(),
            lock: jobs.lock.clone(),
            progress: progress.as_ref(),
        };
        let report = rebuild(&config, parts)
            .await
            .map_err(|source| JobError::Rebuild {
                store: store.name(),
                source,
            })?;
        on_report(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// Builds a copy of the store's views from the log, swaps it in and drops the old one, holding
/// the store's lock throughout.
pub async fn rebuild(
    config: &RebuildConfig,
    parts: Parts<'_>,
) -> Result<RebuildReport, RebuildError> {
    let sources: Vec<SourceTopic> = if config.sources.is_empty() {
        parts
            .projection
            .streams()
            .iter()
            .map(|s| SourceTopic::of(*s))
            .collect()
    } else {
        config.sources.clone()
    };
    let lease = Lease::take(parts.lock.clone(), &config.lock).await?;
    let result = run(config, &sources, &parts, &lease).await;
    lease.give_back().await;
    parts.progress.finish();
    result
}

async fn run(
    config: &RebuildConfig,
    sources: &[SourceTopic],
    parts: &Parts<'_>,
    lease: &Lease,
) -> Result<RebuildReport, RebuildError> {
    let target = parts.store;
    let mut report = RebuildReport {
        store: parts.writer.store(),
        copy: target.copy(),
        ..RebuildReport::default()
    };
    // Before the copy exists: a refused rebuild writes nothing.
    let marks = replay::current_watermarks(&config.brokers, sources)?;
    replay::check_whole_log(&marks, config.allow_truncated_log)?;
    parts.progress.start("preparing the copy", 0);
    let writer = target.prepare().await?;
    tracing::info!(store = report.store, copy = %report.copy, "rebuild: copy created");
    let built = fill(config, sources, parts, writer.as_ref(), lease, &mut report).await;
    let reached = match built {
        Ok(marks) => marks,
        Err(e) => {
            if let Err(d) = target.discard().await {
                tracing::warn!(store = report.store, copy = %report.copy, error = %d, "cannot drop the unfinished copy");
            }
            return Err(e);
        }
    };

    lease.check()?;
    parts.progress.start("swapping", 0);
    if let Err(e) = target.swap().await {
        if let Err(d) = target.discard().await {
            tracing::warn!(store = report.store, copy = %report.copy, error = %d, "cannot drop the copy after a failed swap");
        }
        return Err(e);
    }
    tracing::info!(store = report.store, "rebuild: copy swapped in");

    // [W2, W3): what the sink may have applied to the old view only (module documentation).
    let after = async {
        let now = replay::current_watermarks(&config.brokers, sources)?;
        let ranges = since(&reached, &now);
        let mut batcher = Batcher::new(config, parts.writer, "catching up after the swap");
        let stats = replay_into(config, sources, &ranges, parts, &mut batcher).await?;
        report.after_swap = stats.records;
        report.skipped += stats.skipped;
        batcher.add_to(&mut report);
        Ok::<(), RebuildError>(())
    }
    .await;
    if let Err(e) = after {
        return Err(RebuildError::AfterSwap(Box::new(e)));
    }
    parts.progress.start("dropping the old copy", 0);
    target.drop_old().await?;
    Ok(report)
}

/// Fills the copy up to the log head as of the last catch-up pass; returns where it stopped.
async fn fill(
    config: &RebuildConfig,
    sources: &[SourceTopic],
    parts: &Parts<'_>,
    writer: &dyn ViewWriter,
    lease: &Lease,
    report: &mut RebuildReport,
) -> Result<Watermarks, RebuildError> {
    let mut batcher = Batcher::new(config, writer, "writing the copy");
    let mut reached = replay::current_watermarks(&config.brokers, sources)?;
    let stats = replay_into(config, sources, &reached, parts, &mut batcher).await?;
    report.records += stats.records;
    report.skipped += stats.skipped;
    for pass in 1..=config.catch_up_passes {
        lease.check()?;
        let now = replay::current_watermarks(&config.brokers, sources)?;
        let ranges = since(&reached, &now);
        if ranges.is_empty() {
            break;
        }
        report.passes = pass;
        let stats = replay_into(config, sources, &ranges, parts, &mut batcher).await?;
        report.records += stats.records;
        report.skipped += stats.skipped;
        reached = now;
        if stats.records <= config.settled {
            break;
        }
    }
    batcher.add_to(report);
    Ok(reached)
}

async fn replay_into(
    config: &RebuildConfig,
    sources: &[SourceTopic],
    ranges: &Watermarks,
    parts: &Parts<'_>,
    batcher: &mut Batcher<'_>,
) -> Result<replay::ReplayStats, RebuildError> {
    let result = replay::replay_ranges(
        &config.brokers,
        sources,
        ranges,
        parts.codec,
        parts.projection,
        batcher,
        parts.progress,
        config.idle_timeout,
    )
    .await;
    let flushed = match result {
        Ok(stats) => batcher.flush().await.map(|()| stats),
        Err(e) => Err(e),
    };
    flushed.map_err(|e| batcher.take_failure().unwrap_or(RebuildError::Replay(e)))
}

/// The ranges from where `before` ended to `now`'s high watermarks (a partition new since
/// `before` from its low one; one whose retention passed `before` from its low one).
fn since(before: &Watermarks, now: &Watermarks) -> Watermarks {
    now.iter()
        .filter_map(|(id, r)| {
            let low = before.get(id).map_or(r.low, |b| b.high.max(r.low));
            (r.high > low).then(|| (id.clone(), Range { low, high: r.high }))
        })
        .collect()
}

/// A [`Fold`] writing the changes of every `batch_records` records through a writer, coalesced
/// as the sink does.
struct Batcher<'a> {
    writer: &'a dyn ViewWriter,
    phase: &'static str,
    pending: Vec<Change>,
    records: usize,
    max: usize,
    attempts: u32,
    outcome: WriteOutcome,
    rejected: u64,
    failure: Option<RebuildError>,
}

impl<'a> Batcher<'a> {
    fn new(config: &RebuildConfig, writer: &'a dyn ViewWriter, phase: &'static str) -> Self {
        Self {
            writer,
            phase,
            pending: Vec::new(),
            records: 0,
            max: config.batch_records.max(1),
            attempts: config.write_attempts.max(1),
            outcome: WriteOutcome::default(),
            rejected: 0,
            failure: None,
        }
    }

    fn add_to(&mut self, report: &mut RebuildReport) {
        report.applied += self.outcome.applied;
        report.stale += self.outcome.stale;
        report.rejected += self.rejected;
        self.outcome = WriteOutcome::default();
        self.rejected = 0;
    }

    fn take_failure(&mut self) -> Option<RebuildError> {
        self.failure.take()
    }

    async fn flush(&mut self) -> Result<(), ReconcileError> {
        let pending = std::mem::take(&mut self.pending);
        self.records = 0;
        if pending.is_empty() {
            return Ok(());
        }
        let (changes, stale) = coalesce_counted(pending);
        self.outcome.stale += stale;
        match self.write(&changes).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let message = e.to_string();
                self.failure = Some(RebuildError::Write {
                    phase: self.phase,
                    source: e,
                });
                Err(ReconcileError::Store {
                    store: self.writer.store(),
                    action: self.phase.to_string(),
                    message,
                })
            }
        }
    }

    /// Writes a coalesced batch; when the store rejects an entity of it, writes it change by
    /// change and leaves out the rejected ones, as the sink dead-letters their records.
    async fn write(&mut self, changes: &[Change]) -> Result<(), WriteError> {
        match self.retrying(changes).await {
            Ok(o) => {
                self.add(o);
                Ok(())
            }
            Err(WriteError::Rejected { .. }) => {
                for c in changes {
                    match self.retrying(std::slice::from_ref(c)).await {
                        Ok(o) => self.add(o),
                        Err(e @ WriteError::Rejected { .. }) => {
                            tracing::warn!(store = self.writer.store(), view = c.view, key = %c.key, error = %e, "entity rejected; the sink dead-letters its records");
                            self.rejected += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn add(&mut self, o: WriteOutcome) {
        self.outcome.applied += o.applied;
        self.outcome.stale += o.stale;
    }

    async fn retrying(&self, changes: &[Change]) -> Result<WriteOutcome, WriteError> {
        let mut wait = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.writer.write(changes).await {
                Err(e) if e.retriable() && attempt < self.attempts => {
                    tracing::warn!(store = self.writer.store(), error = %e, attempt, "store unavailable; retrying the batch");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[async_trait::async_trait]
impl Fold for Batcher<'_> {
    async fn record(&mut self, changes: Vec<Change>) -> Result<(), ReconcileError> {
        self.pending.extend(changes);
        self.records += 1;
        if self.records >= self.max {
            self.flush().await?;
        }
        Ok(())
    }
}

/// `name` cut to at most `max` bytes (on a character boundary), then `suffix`: a derived name
/// that stays within a store's limit on names.
pub(crate) fn derived(name: &str, max: usize, suffix: &str) -> String {
    let room = max.saturating_sub(suffix.len());
    let mut end = name.len().min(room);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &name[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_continues_where_the_last_pass_ended() {
        let id = |p| ("t".to_string(), p);
        let before: Watermarks = [(id(0), Range { low: 0, high: 5 })].into();
        let now: Watermarks = [
            (id(0), Range { low: 0, high: 8 }),
            (id(1), Range { low: 2, high: 4 }),
            (id(2), Range { low: 3, high: 3 }),
        ]
        .into();
        let r = since(&before, &now);
        assert_eq!(r.len(), 2);
        assert_eq!(r[&id(0)], Range { low: 5, high: 8 });
        assert_eq!(r[&id(1)], Range { low: 2, high: 4 });
        assert!(since(&now, &now).is_empty());
    }

    #[test]
    fn derived_names_fit() {
        assert_eq!(derived("abc", 63, "_old"), "abc_old");
        let long = "x".repeat(70);
        assert_eq!(derived(&long, 63, "_old").len(), 63);
        assert_eq!(derived("ééé", 5, "_o"), "é_o");
    }
}
