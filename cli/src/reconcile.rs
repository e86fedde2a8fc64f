//! `tributary reconcile --store X|all [--json] [--repair] [--samples N]`: replays the event
//! topics into the expected view of a store, compares it with the live store and reports the
//! drift per view; `--repair` fixes exactly that drift through the sink's own writer.
//!
//! Exit code: 0 when no drift was found, 1 when some was (even if `--repair` fixed it; the
//! report says what is left), 2 on error. Each store's run holds its Redis lock
//! (`tributary:lock:reconcile:<store>`), so two runs on one store cannot collide.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_schemas::Codec;
use tributary_sinks::job::{self, JobError, Jobs};
use tributary_sinks::reconcile::{self, ReconcileConfig, ReconcileMetrics, Report};
use tributary_sinks::store::Store;
use tributary_sinks::stores;

use crate::store_args::{store_choice, Bar, StoreArgs};

#[derive(ClapArgs)]
pub struct Args {
    /// The store to reconcile, or `all`.
    #[arg(long, value_parser = store_choice(true))]
    store: String,
    /// Print the report as JSON (stdout) instead of text and metrics.
    #[arg(long)]
    json: bool,
    /// Fix the drift found: write missing and differing entities, delete extra ones.
    #[arg(long)]
    repair: bool,
    /// Ids shown per view and kind of drift.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    #[command(flatten)]
    stores: StoreArgs,
    /// Replay event topics whose log start is above 0 (records deleted by retention or
    /// DeleteRecords) instead of refusing: the result is then a view of the retained part of
    /// the log only, and entities only the deleted records made are reported (and repaired) as extra.
    #[arg(long)]
    allow_truncated_log: bool,
    /// Seconds to wait for the lock when another reconcile of the store holds it.
    #[arg(long, default_value_t = 0)]
    lock_wait_secs: u64,
}

/// How one store's run goes beyond the addresses.
struct Options {
    brokers: String,
    samples: usize,
    repair: bool,
    lock_wait: Duration,
    allow_truncated_log: bool,
}

impl Options {
    fn apply(&self, config: &mut ReconcileConfig) {
        config.brokers = self.brokers.clone();
        config.samples = self.samples;
        config.repair = self.repair;
        config.lock.wait = self.lock_wait;
        config.allow_truncated_log = self.allow_truncated_log;
    }
}

/// What every run needs besides its options: the codec and the lock's connection.
fn jobs<'a>(
    stores: &'a StoreArgs,
    codec: &'a Codec,
    lock: tributary_sinks::job::LockConnection,
) -> Jobs<'a> {
    Jobs {
        settings: stores.settings(),
        topic_prefix: &stores.topic_prefix,
        codec,
        lock,
        progress: &Bar::boxed,
    }
}

/// Repairs `store` from the log (`tributary dlq replay` re-drives a sink's dead letters so).
/// A repair is refused when the log moved while it replayed; it is tried again a few times,
/// since a live pipeline keeps appending.
pub(crate) async fn repair_store(
    stores: &StoreArgs,
    store: &'static dyn Store,
    codec: &Codec,
    lock: tributary_sinks::job::LockConnection,
) -> anyhow::Result<Report> {
    let options = Options {
        brokers: stores.brokers.clone(),
        samples: 10,
        repair: true,
        lock_wait: Duration::from_secs(60),
        allow_truncated_log: false,
    };
    let jobs = jobs(stores, codec, lock);
    let mut attempt = 1;
    loop {
        match reconcile::reconcile_store(store, &jobs, &|c| options.apply(c)).await {
            Err(JobError::Reconcile {
                source: reconcile::ReconcileError::LogMoved { .. },
                ..
            }) if attempt < 5 => {
                tracing::info!(
                    store = store.name(),
                    attempt,
                    "the log moved during the repair's replay; trying again"
                );
                attempt += 1;
            }
            r => return Ok(r?),
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let selection = stores::select(stores::all(), &args.store)
        .with_context(|| format!("no store is called {}", args.store))?;
    let lock = job::lock_connection(args.stores.settings()).await?;
    // No grace for unknown schema ids: a replay skips what the sink dead-lettered, as before
    // (the replay still waits out an unreachable registry).
    let codec = Codec::new(&args.stores.registry.url()).with_unknown_schema_grace(Duration::ZERO);
    let registry = prometheus::Registry::new();
    let metrics = ReconcileMetrics::new(&registry).context("registering the metrics")?;
    let options = Options {
        brokers: args.stores.brokers.clone(),
        samples: args.samples,
        repair: args.repair,
        lock_wait: Duration::from_secs(args.lock_wait_secs),
        allow_truncated_log: args.allow_truncated_log,
    };
    let json = args.json;
    let reports = reconcile::reconcile_stores(
        &selection,
        &jobs(&args.stores, &codec, lock),
        &|c| options.apply(c),
        &mut |report| {
            metrics.observe(report);
            if !json {
                print!("{report}");
            }
        },
    )
    .await?;
    let drift: usize = reports.iter().map(Report::drift).sum();
    if args.json {
        let out = serde_json::json!({ "drift": drift > 0, "stores": reports });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .context("encoding the metrics")?;
        println!();
        print!("{text}");
    }
    Ok(if drift > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
