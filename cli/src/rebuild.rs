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
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_schemas::Codec;
use tributary_sinks::job::{self, Jobs};
use tributary_sinks::rebuild;
use tributary_sinks::stores;

use crate::store_args::{store_choice, Bar, StoreArgs};

#[derive(ClapArgs)]
pub struct Args {
    /// The store to rebuild, or `all` (one after the other).
    #[arg(long, value_parser = store_choice(true))]
    store: String,
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

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let selection = stores::select(stores::all(), &args.store)
        .with_context(|| format!("no store is called {}", args.store))?;
    let lock = job::lock_connection(args.stores.settings()).await?;
    // No grace for unknown schema ids: a replay skips what the sink dead-lettered, as before
    // (the replay still waits out an unreachable registry).
    let codec = Codec::new(&args.stores.registry.url()).with_unknown_schema_grace(Duration::ZERO);
    let jobs = Jobs {
        settings: args.stores.settings(),
        topic_prefix: &args.stores.topic_prefix,
        codec: &codec,
        lock,
        progress: &Bar::boxed,
    };
    let json = args.json;
    let reports = rebuild::rebuild_stores(
        &selection,
        &jobs,
        &|c| {
            c.brokers = args.stores.brokers.clone();
            c.batch_records = args.batch_max_records.max(1);
            c.lock.wait = Duration::from_secs(args.lock_wait_secs);
            c.allow_truncated_log = args.allow_truncated_log;
        },
        &mut |report| {
            if !json {
                print!("{report}");
            }
        },
    )
    .await?;
    if args.json {
        let out = serde_json::json!({ "stores": reports });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
