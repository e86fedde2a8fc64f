//! `tributary reconcile --store X|all [--json] [--repair] [--samples N]`: replays the event
//! topics into the expected view of a store, compares it with the live store and reports the
//! drift per view; `--repair` fixes exactly that drift through the sink's own writer.
//!
//! Exit code: 0 when no drift was found, 1 when some was (even if `--repair` fixed it; the
//! report says what is left), 2 on error. Each store's run holds its Redis lock
//! (`tributary:lock:reconcile:<store>`), so two runs on one store cannot collide.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_schemas::Codec;
use tributary_sinks::change::ViewWriter;
use tributary_sinks::reconcile::{
    self, LiveStore, Parts, ReconcileConfig, ReconcileMetrics, Report,
};
use tributary_sinks::runner::Projection;

use crate::stores::{Bar, Store, StoreArgs};

#[derive(ClapArgs)]
pub struct Args {
    /// The store to reconcile, or `all`.
    #[arg(long, value_enum)]
    store: Store,
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

type Connected = (Arc<dyn Projection>, Arc<dyn ViewWriter>, Arc<dyn LiveStore>);

/// The projection, writer and live view of `store`, connected as `tributary sink` does.
async fn connect(s: &StoreArgs, store: Store) -> anyhow::Result<Connected> {
    use tributary_sinks::{elasticsearch as es, mongodb as mongo, postgres as pg, redis as rd};
    Ok(match store {
        Store::Postgres => {
            let writer = s.postgres().await?;
            let live = reconcile::postgres::PostgresLive::new(writer.pool().clone());
            (
                Arc::new(pg::PostgresProjection),
                Arc::new(writer),
                Arc::new(live),
            )
        }
        Store::Mongodb => {
            let writer = s.mongodb().await?;
            let live = reconcile::mongodb::MongoLive::new(writer.database().clone());
            (
                Arc::new(mongo::projection::MongoProjection),
                Arc::new(writer),
                Arc::new(live),
            )
        }
        Store::Redis => {
            let writer = s.redis().await?;
            let live =
                reconcile::redis::RedisLive::new(writer.connection(), s.redis_prefix.clone());
            (
                Arc::new(rd::RedisProjection::default()),
                Arc::new(writer),
                Arc::new(live),
            )
        }
        Store::Elasticsearch => {
            let writer = s.elasticsearch().await?;
            let live = reconcile::elasticsearch::EsLive::new(
                writer.client().clone(),
                s.index_prefix.clone(),
            );
            (
                Arc::new(es::projection::EsProjection),
                Arc::new(writer),
                Arc::new(live),
            )
        }
        Store::All => anyhow::bail!("`all` is not one store"),
    })
}

/// How one store's run goes beyond the addresses.
struct Options {
    samples: usize,
    repair: bool,
    lock_wait: Duration,
    allow_truncated_log: bool,
}

async fn one(
    stores: &StoreArgs,
    options: &Options,
    store: Store,
    codec: &Codec,
    lock: redis::aio::ConnectionManager,
) -> anyhow::Result<Report> {
    let (projection, writer, live) = connect(stores, store).await?;
    let mut config = ReconcileConfig::new(store.name());
    config.brokers = stores.brokers.clone();
    config.sources = stores.sources(projection.as_ref());
    config.samples = options.samples;
    config.repair = options.repair;
    config.lock_wait = options.lock_wait;
    config.allow_truncated_log = options.allow_truncated_log;
    let bar = Bar::new(store.name());
    let parts = Parts {
        codec,
        projection: projection.as_ref(),
        live: live.as_ref(),
        writer: writer.as_ref(),
        lock,
        progress: &bar,
    };
    reconcile::reconcile(&config, parts)
        .await
        .with_context(|| format!("reconciling {}", store.name()))
}

/// Repairs `store` from the log (`tributary dlq replay` re-drives a sink's dead letters so).
/// A repair is refused when the log moved while it replayed; it is tried again a few times,
/// since a live pipeline keeps appending.
pub(crate) async fn repair_store(
    stores: &StoreArgs,
    store: Store,
    codec: &Codec,
    lock: redis::aio::ConnectionManager,
) -> anyhow::Result<Report> {
    let options = Options {
        samples: 10,
        repair: true,
        lock_wait: Duration::from_secs(60),
        allow_truncated_log: false,
    };
    let mut attempt = 1;
    loop {
        match one(stores, &options, store, codec, lock.clone()).await {
            Err(e)
                if attempt < 5
                    && e.chain().any(|c| {
                        matches!(
                            c.downcast_ref::<reconcile::ReconcileError>(),
                            Some(reconcile::ReconcileError::LogMoved { .. })
                        )
                    }) =>
            {
                tracing::info!(
                    store = store.name(),
                    attempt,
                    "the log moved during the repair's replay; trying again"
                );
                attempt += 1;
            }
            r => return r,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let lock = args.stores.lock_connection().await?;
    // No grace for unknown schema ids: a replay skips what the sink dead-lettered, as before
    // (the replay still waits out an unreachable registry).
    let codec = Codec::new(&args.stores.registry).with_unknown_schema_grace(Duration::ZERO);
    let registry = prometheus::Registry::new();
    let metrics = ReconcileMetrics::new(&registry).context("registering the metrics")?;
    let mut reports = Vec::new();
    let options = Options {
        samples: args.samples,
        repair: args.repair,
        lock_wait: Duration::from_secs(args.lock_wait_secs),
        allow_truncated_log: args.allow_truncated_log,
    };
    for store in args.store.each() {
        let report = one(&args.stores, &options, store, &codec, lock.clone()).await?;
        metrics.observe(&report);
        if !args.json {
            print!("{report}");
        }
        reports.push(report);
    }
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
