//! `tributary produce`, `tributary gateway`, `tributary loadgen`: the ways commands enter.

use std::io::Read;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use tributary_producers::gateway::auth::Authenticator;
use tributary_producers::gateway::{GatewayConfig, RateLimit};
use tributary_producers::loadgen::Workload;
use tributary_producers::{Command, CommandSender};
use tributary_runtime::config::{KAFKA_BROKERS, REDIS_URL};
use tributary_runtime::redact;
use tributary_schemas::Codec;

use crate::registry_args::RegistryArgs;

#[derive(ClapArgs, Clone)]
pub struct Conn {
    /// Kafka bootstrap servers.
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = KAFKA_BROKERS.default)]
    brokers: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Put before every topic name (a pipeline started with the same `--topic-prefix`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
}

impl Conn {
    fn sender(&self) -> anyhow::Result<Arc<CommandSender>> {
        let codec = Arc::new(Codec::new(&self.registry.url()));
        let sender = CommandSender::new(&self.brokers, codec, &self.topic_prefix)
            .with_context(|| format!("creating a producer for {}", self.brokers))?;
        Ok(Arc::new(sender))
    }
}

#[derive(ClapArgs)]
pub struct ProduceArgs {
    #[command(flatten)]
    conn: Conn,
    /// Command topic: commands.users, commands.inventory, commands.orders or commands.payments.
    topic: String,
    /// The command as JSON, e.g. '{"payload": {"RestockProduct": {"product_id": "p-1", "quantity": 5}}}';
    /// read from stdin when absent or `-`.
    json: Option<String>,
}

pub async fn produce(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let json = match args.json.as_deref() {
        Some(j) if j != "-" => j.to_string(),
        _ => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the command from stdin")?;
            s
        }
    };
    let command = Command::parse(&args.topic, &json)?;
    let sender = args.conn.sender()?;
    let d = sender.send(&command).await?;
    println!(
        "{} {} → {}[{}]@{}",
        command.name(),
        command.id(),
        sender.topic_for(&command),
        d.partition,
        d.offset
    );
    Ok(ExitCode::SUCCESS)
}

/// Callers authenticate with a bearer JWT (`Authorization: Bearer <jwt>`: `sub` is the user id,
/// a `roles` claim may hold `admin` or `internal`; `exp` is required) or an API key
/// (`X-API-Key: <key>`). At least one of --jwt-secret-file, --jwt-public-key-file and
/// --api-keys-file is required. Anyone authenticated may send PlaceOrder, CancelOrder and the
/// user/profile/preferences/session commands for themselves (the body's `user_id` is
/// overwritten with theirs); `admin` adds the catalogue commands and every order's status;
/// only `internal` may send the saga's steps (stock reservations, payments). See
/// producers/README.md.
#[derive(ClapArgs)]
pub struct GatewayArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// File holding the HS256 secret of bearer JWTs (at least 32 bytes; a trailing newline is
    /// ignored).
    #[arg(long, env = "TRIBUTARY_GATEWAY_JWT_SECRET_FILE")]
    jwt_secret_file: Option<String>,
    /// PEM file with the RSA public key that verifies RS256 bearer JWTs.
    #[arg(long, env = "TRIBUTARY_GATEWAY_JWT_PUBLIC_KEY_FILE")]
    jwt_public_key_file: Option<String>,
    /// Required `iss` of bearer JWTs.
    #[arg(long, env = "TRIBUTARY_GATEWAY_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of bearer JWTs.
    #[arg(long, env = "TRIBUTARY_GATEWAY_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// File of API keys, one `<principal> <key> [role,role]` per line (keys of 24 characters
    /// or more; `#` comments).
    #[arg(long, env = "TRIBUTARY_GATEWAY_API_KEYS_FILE")]
    api_keys_file: Option<String>,
    /// Longest a request may take, the broker's acknowledgement included; then 503.
    #[arg(long, default_value_t = 10)]
    request_timeout_secs: u64,
    /// Requests in progress at once; more are answered 503 at once.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Failed authentications per client IP per minute; more are answered 429.
    #[arg(long, default_value_t = 30)]
    auth_failures_per_ip: u32,
    /// Redis holding rate-limit counters and the order-status view (`rediss://` for TLS).
    #[arg(long, env = "TRIBUTARY_REDIS_URL", default_value = REDIS_URL.default, hide_env_values = true)]
    redis: String,
    /// PEM file of the CAs a `rediss://` Redis is verified against, instead of the system's
    /// roots.
    #[arg(long, env = tributary_sinks::redis::REDIS_CA_VAR, value_name = "FILE")]
    redis_ca: Option<String>,
    /// Commands per principal per window; 0 disables the limit.
    #[arg(long, default_value_t = 20)]
    rate_limit: u64,
    /// Rate-limit window in seconds.
    #[arg(long, default_value_t = 1)]
    rate_window_secs: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Prefix of the Redis keys the gateway reads and writes: the Redis views' prefix and its
    /// `:` (the order-status view is `<key prefix>order:<id>`).
    #[arg(long, default_value_t = format!("{}:", tributary_sinks::redis::DEFAULT_PREFIX))]
    key_prefix: String,
    /// How long an `Idempotency-Key` is remembered, in seconds (a retry after that is sent
    /// as a new command).
    #[arg(long, default_value_t = 24 * 3600)]
    idempotency_ttl_secs: u64,
}

pub async fn gateway(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let auth = Authenticator::from_files(
        args.jwt_secret_file.as_deref(),
        args.jwt_public_key_file.as_deref(),
        args.api_keys_file.as_deref(),
    )
    .context("loading the gateway's credentials")?
    .with_issuer(args.jwt_issuer.clone())
    .with_audience(args.jwt_audience.clone());
    let redis_ca = args
        .redis_ca
        .as_deref()
        .filter(|path| !path.trim().is_empty());
    let redis = tributary_sinks::redis::manager(&args.redis, redis_ca)
        .await
        .with_context(|| format!("connecting to redis at {}", redact::url(&args.redis)))?;
    let mut config = GatewayConfig::new(args.listen, auth);
    config.request_timeout = Duration::from_secs(args.request_timeout_secs.max(1));
    config.max_in_flight = args.max_in_flight.max(1);
    config.auth_failures_per_ip_per_minute =
        NonZeroU32::new(args.auth_failures_per_ip).unwrap_or(NonZeroU32::MIN);
    let config = GatewayConfig {
        max_body_bytes: args.max_body_bytes,
        rate_limit: (args.rate_limit > 0).then(|| RateLimit {
            redis: redis.clone(),
            max: args.rate_limit,
            window: Duration::from_secs(args.rate_window_secs.max(1)),
            prefix: format!("{}ratelimit:", args.key_prefix),
        }),
        idempotency: Some(tributary_producers::gateway::Idempotency {
            redis: redis.clone(),
            prefix: format!("{}idempotency:", args.key_prefix),
            ttl: Duration::from_secs(args.idempotency_ttl_secs.max(1)),
        }),
        order_view: Some((redis, args.key_prefix.clone())),
        ..config
    };
    tributary_producers::gateway::serve(
        args.conn.sender()?,
        config,
        tributary_runtime::shutdown::on_signal(),
    )
    .await
    .with_context(|| format!("serving the gateway on {}", args.listen))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(ClapArgs)]
pub struct LoadgenArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 500)]
    users: usize,
    #[arg(long, default_value_t = 100)]
    products: usize,
    #[arg(long, default_value_t = 20_000)]
    orders: usize,
    /// Share of users whose payments are declined (0–1).
    #[arg(long, default_value_t = 0.05)]
    decline_share: f64,
    #[arg(long, default_value_t = 400)]
    initial_stock: i32,
    /// Share of the units ordered that restocks put back every 500 orders (0–1; 0: none).
    #[arg(long, default_value_t = 0.95)]
    restock_share: f64,
    /// Share of orders their user cancels right after placing them (0–1).
    #[arg(long, default_value_t = 0.02)]
    cancel_share: f64,
    /// Commands per second; as fast as possible when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Unacknowledged sends allowed at once.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Put before every id, email and SKU, so that a second run with the same seed makes new
    /// entities instead of duplicates of the first run's.
    #[arg(long, default_value = "")]
    id_prefix: String,
}

pub async fn loadgen(args: LoadgenArgs) -> anyhow::Result<ExitCode> {
    for (flag, v) in [
        ("--decline-share", args.decline_share),
        ("--restock-share", args.restock_share),
        ("--cancel-share", args.cancel_share),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&v),
            "{flag} must be between 0 and 1, got {v}"
        );
    }
    let workload = Workload {
        seed: args.seed,
        users: args.users,
        products: args.products,
        orders: args.orders,
        decline_share: args.decline_share,
        initial_stock: args.initial_stock,
        restock_share: args.restock_share,
        cancel_share: args.cancel_share,
        id_prefix: args.id_prefix.clone(),
    };
    let report = tributary_producers::loadgen::run(
        args.conn.sender()?,
        &workload,
        args.rate,
        args.in_flight,
    )
    .await?;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "sent {} commands in {:.1} s ({:.0}/s)",
        report.sent,
        secs,
        report.sent as f64 / secs.max(1e-9)
    );
    for (name, n) in &report.by_command {
        println!("  {name:<16} {n}");
    }
    Ok(ExitCode::SUCCESS)
}
