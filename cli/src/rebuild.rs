//! `tributary rebuild --store X|all`: builds a fresh copy of a store's views from the event
//! topics beside the live one (a schema, a database, indices behind the aliases, a key prefix),
//! catches it up to the log head while the sink keeps running, swaps it in atomically and drops
//! the old copy. Readers never see an empty or half-built view.
//!
//! Each store's run holds the store's Redis lock, the same one `tributary reconcile` takes
//! (`tributary:lock:reconcile:<store>`): a reconcile reading across a swap, or a repair of a
//! copy about to be dropped, would be as wrong as two rebuilds swapping each other's copies.
//! Progress goes to stderr; a one-line report per store to stdout. Exit code 0 on success, 2 on
//! error.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_schemas::Codec;
use tributary_sinks::change::ViewWriter;
use tributary_sinks::rebuild::{self, Parts, RebuildConfig, RebuildReport, Target};
use tributary_sinks::runner::Projection;

use crate::stores::{Bar, Store, StoreArgs};

#[derive(ClapArgs)]
pub struct Args {
    /// The store to rebuild, or `all` (one after the other).
    #[arg(long, value_enum)]
    store: Store,
    /// Print the reports as JSON (stdout).
    #[arg(long)]
    json: bool,
    /// Records per write of the copy.
    #[arg(long, default_value_t = 500)]
    batch_max_records: usize,
    #[command(flatten)]
    stores: StoreArgs,
    /// Replay event topics whose log start is above 0 (records deleted by retention or
    /// DeleteRecords) instead of refusing: the result is then a view of the retained part of
    /// the log only, and entities only the deleted records made are missing from the new view.
    #[arg(long)]
    allow_truncated_log: bool,
    /// Seconds to wait for the lock when another rebuild or reconcile of the store holds it.
    #[arg(long, default_value_t = 0)]
    lock_wait_secs: u64,
}

type Connected = (Arc<dyn Projection>, Arc<dyn ViewWriter>, Box<dyn Target>);

/// The projection, the live writer and the rebuild target of `store`, connected as
/// `tributary sink` does.
async fn connect(
    args: &Args,
    store: Store,
    lock: &redis::aio::ConnectionManager,
) -> anyhow::Result<Connected> {
    use tributary_sinks::{elasticsearch as es, mongodb as mongo, postgres as pg, redis as rd};
    let s = &args.stores;
    Ok(match store {
        Store::Postgres => {
            let writer = s.postgres().await?;
            let target = rebuild::postgres::PostgresTarget::new(&s.postgres_config())
                .await
                .context("finding the live PostgreSQL schema")?;
            (
                Arc::new(pg::PostgresProjection),
                Arc::new(writer),
                Box::new(target),
            )
        }
        Store::Mongodb => {
            let writer = s.mongodb().await?;
            let target = rebuild::mongodb::MongoTarget::new(writer.database());
            (
                Arc::new(mongo::projection::MongoProjection),
                Arc::new(writer),
                Box::new(target),
            )
        }
        Store::Redis => {
            let writer = s.redis().await?;
            let target = rebuild::redis::RedisTarget::new(s.redis_config(), lock.clone());
            (
                Arc::new(rd::RedisProjection::default()),
                Arc::new(writer),
                Box::new(target),
            )
        }
        Store::Elasticsearch => {
            let writer = s.elasticsearch().await?;
            let target =
                rebuild::elasticsearch::EsTarget::new(writer.client().clone(), &s.index_prefix);
            (
                Arc::new(es::projection::EsProjection),
                Arc::new(writer),
                Box::new(target),
            )
        }
        Store::All => anyhow::bail!("`all` is not one store"),
    })
}

async fn one(
    args: &Args,
    store: Store,
    codec: &Codec,
    lock: redis::aio::ConnectionManager,
) -> anyhow::Result<RebuildReport> {
    let (projection, writer, target) = connect(args, store, &lock).await?;
    let mut config = RebuildConfig::new(store.name());
    config.brokers = args.stores.brokers.clone();
    config.sources = args.stores.sources(projection.as_ref());
    config.batch_records = args.batch_max_records.max(1);
    config.lock_wait = Duration::from_secs(args.lock_wait_secs);
    config.allow_truncated_log = args.allow_truncated_log;
    let bar = Bar::new(store.name());
    let parts = Parts {
        codec,
        projection: projection.as_ref(),
        target: target.as_ref(),
        live: writer.as_ref(),
        lock,
        progress: &bar,
    };
    rebuild::rebuild(&config, parts)
        .await
        .with_context(|| format!("rebuilding {}", store.name()))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let lock = args.stores.lock_connection().await?;
    // No grace for unknown schema ids: a replay skips what the sink dead-lettered, as before
    // (the replay still waits out an unreachable registry).
    let codec = Codec::new(&args.stores.registry).with_unknown_schema_grace(Duration::ZERO);
    let mut reports = Vec::new();
    for store in args.store.each() {
        let report = one(&args, store, &codec, lock.clone()).await?;
        if !args.json {
            print!("{report}");
        }
        reports.push(report);
    }
    if args.json {
        let out = serde_json::json!({ "stores": reports });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
