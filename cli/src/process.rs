//! `tributary process --app X`: run domain processors, each a consumer-group member of its own
//! streams application. Run the same app on several machines to share its partitions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_processors::{DeclineRule, DomainApp, DomainConfig};
use tributary_runtime::config::KAFKA_BROKERS;

use crate::registry_args::RegistryArgs;

#[derive(ClapArgs)]
pub struct Args {
    /// Which processors to run: users, inventory, payments, orders, notifications, analytics,
    /// or `all`. Repeat or separate with commas for several.
    #[arg(long, value_delimiter = ',', required = true)]
    app: Vec<String>,
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    brokers: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Seconds a schema id the registry does not know is retried (with back-off) before the
    /// records that use it are dead-lettered: a registry failing over is not bad data.
    #[arg(long, env = "TRIBUTARY_UNKNOWN_SCHEMA_GRACE", default_value_t = 60)]
    unknown_schema_grace: u64,
    /// Root of the local state stores (one folder per application and task).
    #[arg(long, env = "TRIBUTARY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds the order saga waits for inventory and payments before it compensates.
    #[arg(long, default_value_t = 30)]
    saga_timeout_secs: u64,
    /// Open orders a saga task holds before it stops taking new ones from `commands.orders`
    /// (backpressure: answers to the open orders finish first; 0: no bound).
    #[arg(long, default_value_t = tributary_processors::DEFAULT_SAGA_MAX_OPEN)]
    saga_max_open: u64,
    /// Payments of users whose id ends with this are declined ("" declines none).
    #[arg(long, default_value = "-declines")]
    decline_user_suffix: String,
    /// Payments above this many cents are declined.
    #[arg(long)]
    decline_above_cents: Option<i64>,
    /// Time between commits while records flow. Outputs are sent as each record succeeds, so
    /// this costs the next hop nothing; longer means fewer commits and changelog records (less
    /// work for the broker, which every hop waits on), and more records read again after a
    /// crash. It is also the length of one turn of the runtime's loop (timers, retries,
    /// backpressure run once a turn), so it stays short by default; 1 s measured faster on the
    /// local broker (BENCHMARKS.md).
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
    /// How long the broker may hold an empty fetch (librdkafka's fetch.wait.max.ms): the
    /// latency floor of each hop against the broker's load from idle fetches.
    #[arg(long, default_value_t = 50)]
    fetch_wait_ms: u64,
    /// How long the producer gathers outputs into one request (librdkafka's linger.ms).
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
    /// The idempotent producer (several requests in flight, ordered per partition), so an
    /// output never waits behind the previous batch's changelog or commit marker. Needs a broker
    /// with InitProducerId; off by default, since on the local broker it measured slower.
    #[arg(long)]
    idempotent_producer: bool,
    /// Days a processed command or event id is remembered for de-duplication.
    #[arg(long, default_value_t = 7)]
    dedupe_retention_days: u64,
    /// Where to serve /metrics and /health.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// Put before every topic name and application id, to run a pipeline of its own beside
    /// another on one cluster (a test, a tenant).
    #[arg(long, default_value = "")]
    topic_prefix: String,
}

/// The apps named by `--app`, each once, in the order given; an unknown name is an error naming it.
fn apps(names: &[String]) -> anyhow::Result<Vec<DomainApp>> {
    let mut out = Vec::new();
    for name in names {
        let name = name.trim();
        let chosen: Vec<DomainApp> = if name == "all" {
            DomainApp::ALL.to_vec()
        } else {
            let known = DomainApp::ALL.map(|a| a.name()).join(", ");
            vec![DomainApp::from_name(name).with_context(|| {
                format!("unknown processor `{name}` in --app (known: {known}, all)")
            })?]
        };
        for a in chosen {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let apps = apps(&args.app)?;
    let mut cfg = DomainConfig::local();
    cfg.topics = tributary_processors::Topics::new(&args.topic_prefix);
    cfg.brokers = args.brokers.clone();
    cfg.registry_url = args.registry.url();
    cfg.unknown_schema_grace = Duration::from_secs(args.unknown_schema_grace);
    if let Some(dir) = &args.state_dir {
        cfg.state_dir = dir.clone();
    }
    cfg.saga_timeout = Duration::from_secs(args.saga_timeout_secs.max(1));
    cfg.saga_max_open = args.saga_max_open;
    cfg.commit_interval = Duration::from_millis(args.commit_interval_ms.max(1));
    cfg.fetch_wait = Duration::from_millis(args.fetch_wait_ms.max(1));
    cfg.linger = Duration::from_millis(args.linger_ms);
    cfg.idempotent_producer = args.idempotent_producer;
    cfg.dedupe_retention = Duration::from_secs(args.dedupe_retention_days.max(1) * 24 * 3600);
    cfg.decline = DeclineRule {
        user_suffix: Some(args.decline_user_suffix.clone()).filter(|s| !s.is_empty()),
        max_amount_cents: args.decline_above_cents,
    };

    // Cancelled on SIGINT/SIGTERM, or by the first app that fails.
    let stop = tributary_runtime::shutdown::on_signal();
    let registry = prometheus::Registry::new();
    let (addr, _server) =
        tributary_runtime::metrics::serve(args.metrics_listen, registry.clone(), stop.clone())
            .await
            .with_context(|| format!("serving metrics on {}", args.metrics_listen))?;
    let names: Vec<&str> = apps.iter().map(|a| a.name()).collect();
    tracing::info!(apps = ?names, metrics = %addr, state = %cfg.state_dir.display(), "processors starting");

    let mut tasks = tokio::task::JoinSet::new();
    for app in apps {
        // The runtime registers its metric families once per registry, so each app gets its own
        // (its series carry the app as `component_id`); the served registry gathers them all.
        let app_registry = prometheus::Registry::new();
        registry
            .register(Box::new(RegistryCollector::new(
                app.name(),
                app_registry.clone(),
            )?))
            .context("registering an app's metrics")?;
        let (cfg, stop) = (cfg.clone(), stop.clone());
        tasks.spawn(async move {
            let r = app.run(&cfg, Some(&app_registry), stop.clone()).await;
            // One app failing stops the others: the process is unhealthy as a whole.
            stop.cancel();
            (app, r)
        });
    }

    let mut failed = false;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((app, Ok(()))) => tracing::info!(app = app.name(), "processor stopped"),
            Ok((app, Err(e))) => {
                failed = true;
                tracing::error!(app = app.name(), error = %e, "processor failed");
                eprintln!("error: processor {}: {e}", app.name());
            }
            Err(e) => {
                failed = true;
                eprintln!("error: a processor task panicked: {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Exposes one app's registry through the served one (one per app, all served together).
struct RegistryCollector {
    registry: prometheus::Registry,
    /// Identifies this collector to the served registry (which refuses two collectors with the
    /// same descriptors); the families themselves are whatever the app's registry holds.
    desc: prometheus::core::Desc,
}

impl RegistryCollector {
    fn new(app: &str, registry: prometheus::Registry) -> anyhow::Result<Self> {
        let desc = prometheus::core::Desc::new(
            "tributary_process_app_metrics".into(),
            "The metrics of one app of this process.".into(),
            Vec::new(),
            [("app".to_string(), app.to_string())].into(),
        )
        .context("describing an app's metrics")?;
        Ok(RegistryCollector { registry, desc })
    }
}

impl prometheus::core::Collector for RegistryCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_and_duplicates_are_dropped() {
        let got = apps(&["orders".into(), "all".into()]).unwrap();
        assert_eq!(got.len(), DomainApp::ALL.len());
        assert_eq!(got[0], DomainApp::Orders);
    }

    /// Every app's families are served together, each app registered once.
    #[test]
    fn several_apps_share_one_served_registry() {
        let served = prometheus::Registry::new();
        for app in ["users", "orders"] {
            let r = prometheus::Registry::new();
            let c = prometheus::IntCounterVec::new(prometheus::Opts::new("x_total", "x"), &["app"])
                .unwrap();
            r.register(Box::new(c.clone())).unwrap();
            c.with_label_values(&[app]).inc();
            served
                .register(Box::new(RegistryCollector::new(app, r).unwrap()))
                .unwrap();
        }
        let families = served.gather();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].get_metric().len(), 2);
    }

    #[test]
    fn unknown_app_is_named_in_the_error() {
        let e = apps(&["users".into(), "shipping".into()]).unwrap_err();
        assert!(e.to_string().contains("`shipping`"), "{e}");
    }
}
