//! What every command that touches stores shares ([`StoreArgs`], flattened into `sink`,
//! `reconcile`, `rebuild`, `summary` and `dlq replay`): the log's and the registry's addresses,
//! the topic prefix, and one flag per option of every store in `tributary_sinks::stores` (so a
//! new store's flags appear here without an edit); the choice of store (`--store`), and a
//! progress bar.

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgAction, ArgMatches, Args as ClapArgs, Command, FromArgMatches};
use indicatif::{ProgressBar, ProgressStyle};
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_sinks::job::Progress;
use tributary_sinks::store::Settings;
use tributary_sinks::stores;

use crate::registry_args::RegistryArgs;

/// Addresses and namespaces of the log and of every store.
#[derive(ClapArgs)]
pub struct StoreArgs {
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    pub brokers: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Put before every topic name and sink group (a pipeline started with the same
    /// `--topic-prefix`).
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
    #[command(flatten)]
    pub options: StoreOptions,
}

impl StoreArgs {
    /// The values of the stores' options.
    pub fn settings(&self) -> &Settings {
        &self.options.0
    }
}

/// One flag per option of the listed stores (`--database-url`, `--redis-prefix`, ...), each
/// with its environment variable and default as the store declares them. The variables' values
/// are never shown in `--help`: addresses carry passwords, and some options are secrets
/// (`--elasticsearch-api-key`).
pub struct StoreOptions(Settings);

impl FromArgMatches for StoreOptions {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut settings = Settings::new();
        for option in stores::options(stores::all()) {
            if let Some(value) = matches.get_one::<String>(option.name) {
                settings.set(option.name, value.clone());
            }
        }
        Ok(Self(settings))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for StoreOptions {
    fn augment_args(cmd: Command) -> Command {
        stores::options(stores::all())
            .into_iter()
            .fold(cmd, |cmd, option| {
                let mut arg = Arg::new(option.name)
                    .long(option.name)
                    .value_name(option.value_name)
                    .help(option.help)
                    .hide_env_values(true)
                    .action(ArgAction::Set);
                if let Some(env) = option.env {
                    arg = arg.env(env);
                }
                if let Some(default) = option.default {
                    arg = arg.default_value(default);
                }
                cmd.arg(arg)
            })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The values of `--store`: every listed store's name, and `all` when `all` is true.
pub fn store_choice(all: bool) -> PossibleValuesParser {
    let mut names = stores::names(stores::all());
    if all {
        names.push(stores::ALL);
    }
    PossibleValuesParser::new(names)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(store: &str) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:14} {msg:28} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(store.to_string());
        Self(bar)
    }

    /// A bar per store, for `tributary_sinks::job::Jobs::progress`.
    pub fn boxed(store: &'static str) -> Box<dyn Progress> {
        Box::new(Self::new(store))
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        self.0.set_message(phase.to_string());
        self.0.set_position(0);
        self.0.set_length(total);
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[arg(long, value_parser = store_choice(true))]
        store: String,
        #[command(flatten)]
        stores: StoreArgs,
    }

    #[test]
    fn every_listed_store_is_a_choice_and_brings_its_flags() {
        for name in stores::names(stores::all()) {
            let cli = Cli::try_parse_from(["t", "--store", name]).expect("a listed store parses");
            assert_eq!(cli.store, name);
        }
        assert!(Cli::try_parse_from(["t", "--store", "all"]).is_ok());
        assert!(Cli::try_parse_from(["t", "--store", "nope"]).is_err());
        let cli = Cli::try_parse_from([
            "t",
            "--store",
            "redis",
            "--redis-prefix",
            "x:v2",
            "--postgres-schema",
            "s1",
            "--topic-prefix",
            "t1.",
        ])
        .expect("store flags parse");
        let s = cli.stores.settings();
        assert_eq!(s.get("redis-prefix"), Some("x:v2"));
        assert_eq!(s.get("postgres-schema"), Some("s1"));
        assert_eq!(cli.stores.topic_prefix, "t1.");
        let cli = Cli::try_parse_from(["t", "--store", "all"]).expect("defaults");
        assert_eq!(
            cli.stores.settings().get("redis-prefix"),
            Some(tributary_sinks::redis::DEFAULT_PREFIX)
        );
        assert_eq!(cli.stores.settings().get("postgres-schema"), None);
    }
}
