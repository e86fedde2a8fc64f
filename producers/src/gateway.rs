//! The HTTP command gateway.
//!
//! - `POST /commands/{topic}`: a command as JSON (see [`crate::command`]) → `202 Accepted` with
//!   the command id once the broker has acknowledged the record; `400` with the reason for input
//!   that does not fit; `413` for bodies over the limit; `429` when the user is over their rate.
//! - `GET /orders/{id}`: the order's current status, from the Redis order-status view.
//! - `GET /health`, `GET /metrics` (Prometheus): `tributary_gateway_commands_total{command,outcome}`
//!   and `tributary_gateway_request_duration_seconds{outcome}`.
//!
//! Errors are JSON: `{"error": "...", "input": "..."}` naming what was refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use redis::aio::ConnectionManager;
use serde_json::json;

use crate::command::Command;
use crate::sender::CommandSender;
use tributary_schemas::domain::RejectionReason;

/// A fixed-window per-user limit, counted in Redis so every gateway instance shares it.
#[derive(Clone)]
pub struct RateLimit {
    pub redis: ConnectionManager,
    /// Commands allowed per user per window.
    pub max: u64,
    pub window: Duration,
    /// Key prefix, e.g. `tributary:v1:ratelimit:`.
    pub prefix: String,
}

impl RateLimit {
    /// Counts one command for `user`; `Err(retry_after)` when over the limit.
    async fn admit(&self, user: &str) -> Result<(), RateError> {
        let window_ms = self.window.as_millis().max(1) as u64;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let start = now_ms / window_ms * window_ms;
        let key = format!("{}{user}:{start}", self.prefix);
        let mut conn = self.redis.clone();
        // INCR and PEXPIRE in one round trip; the key dies with its window.
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, 1u64)
            .pexpire(&key, window_ms as i64)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| RateError::Unavailable(e.to_string()))?;
        if count > self.max {
            let retry_after = (start + window_ms)
                .saturating_sub(now_ms)
                .div_ceil(1000)
                .max(1);
            return Err(RateError::Limited { retry_after });
        }
        Ok(())
    }
}

enum RateError {
    Limited { retry_after: u64 },
    Unavailable(String),
}

/// The gateway's metrics. Labels are bounded: `command` is a record name of the command
/// schemas (or `unknown`), `outcome` one of accepted, invalid, rate_limited, unavailable.
#[derive(Clone)]
pub struct GatewayMetrics {
    commands: IntCounterVec,
    duration: HistogramVec,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let commands = IntCounterVec::new(
            Opts::new(
                "tributary_gateway_commands_total",
                "Commands received by the HTTP gateway, by command and outcome.",
            ),
            &["command", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tributary_gateway_request_duration_seconds",
                "Time from request to answer of POST /commands, including the broker's ack.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["outcome"],
        )?;
        registry.register(Box::new(commands.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(GatewayMetrics { commands, duration })
    }

    fn record(&self, command: &str, outcome: &str, started: Instant) {
        self.commands.with_label_values(&[command, outcome]).inc();
        self.duration
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// How to run a gateway.
#[derive(Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub rate_limit: Option<RateLimit>,
    /// Redis connection and key prefix of the order-status view (`<prefix>order:<id>` hashes).
    pub order_view: Option<(ConnectionManager, String)>,
    /// Registry the gateway's metrics are kept in and `/metrics` serves.
    pub metrics: Registry,
}

#[derive(Clone)]
struct AppState {
    sender: Arc<CommandSender>,
    config: Arc<GatewayConfig>,
    metrics: GatewayMetrics,
}

/// The gateway's routes, for serving or for tests.
pub fn router(sender: Arc<CommandSender>, config: GatewayConfig) -> prometheus::Result<Router> {
    let limit = config.max_body_bytes;
    let metrics = GatewayMetrics::new(&config.metrics)?;
    let observability = tributary_runtime::metrics::routes(config.metrics.clone());
    Ok(Router::new()
        .route("/commands/{topic}", post(post_command))
        .route("/orders/{id}", get(get_order))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(AppState {
            sender,
            config: Arc::new(config),
            metrics,
        })
        .merge(observability))
}

/// Serves until `shutdown` completes; returns the bound address through `bound`.
pub async fn serve(
    sender: Arc<CommandSender>,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "command gateway listening");
    let app = router(sender, config).map_err(std::io::Error::other)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn error(status: StatusCode, message: impl Into<String>, input: &str) -> Response {
    (
        status,
        Json(json!({"error": message.into(), "input": input})),
    )
        .into_response()
}

async fn post_command(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    let (command, outcome, response) = handle_command(&state, &topic, &body).await;
    state.metrics.record(command, outcome, started);
    response
}

/// The command's name (for metrics), the outcome label, and the answer.
async fn handle_command(
    state: &AppState,
    topic: &str,
    body: &[u8],
) -> (&'static str, &'static str, Response) {
    const INVALID: &str = "invalid";
    let topic = topic.to_string();
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) => {
            let r = error(StatusCode::BAD_REQUEST, "body is not UTF-8", &topic);
            return ("unknown", INVALID, r);
        }
    };
    let command = match Command::parse(&topic, text) {
        Ok(c) => c,
        Err(e @ crate::command::CommandError::UnknownTopic { .. }) => {
            return (
                "unknown",
                INVALID,
                error(StatusCode::NOT_FOUND, e.to_string(), &topic),
            )
        }
        Err(e) => {
            return (
                "unknown",
                INVALID,
                error(StatusCode::BAD_REQUEST, e.to_string(), &topic),
            )
        }
    };
    let name = command.name();
    if let (Some(limit), Some(user)) = (&state.config.rate_limit, command.user_id()) {
        match limit.admit(&user).await {
            Ok(()) => {}
            Err(RateError::Limited { retry_after }) => {
                let msg = format!(
                    "user `{user}` is over {} commands per {:?}",
                    limit.max, limit.window
                );
                // The refusal is also an event; the caller's 429 does not wait on it failing.
                if let Err(e) = state
                    .sender
                    .reject(&command, RejectionReason::RateLimited, msg.clone())
                    .await
                {
                    tracing::warn!(error = %e, command = command.id(), "recording a rate-limited command");
                }
                let mut resp = error(StatusCode::TOO_MANY_REQUESTS, msg, &topic);
                if let Ok(v) = retry_after.to_string().parse() {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return (name, "rate_limited", resp);
            }
            Err(RateError::Unavailable(e)) => {
                let msg = format!("rate limiter unavailable: {e}");
                let r = error(StatusCode::SERVICE_UNAVAILABLE, msg, &topic);
                return (name, "unavailable", r);
            }
        }
    }
    match state.sender.send(&command).await {
        Ok(d) => {
            let body = Json(json!({
                "command_id": command.id(),
                "command": name,
                "topic": state.sender.topic_for(&command),
                "partition": d.partition,
                "offset": d.offset,
            }));
            (
                name,
                "accepted",
                (StatusCode::ACCEPTED, body).into_response(),
            )
        }
        Err(e) if e.retriable() => {
            let r = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), &topic);
            (name, "unavailable", r)
        }
        Err(e) => (
            name,
            INVALID,
            error(StatusCode::BAD_REQUEST, e.to_string(), &topic),
        ),
    }
}

async fn get_order(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Some((redis, prefix)) = &state.config.order_view else {
        return error(StatusCode::NOT_FOUND, "no order view configured", &id);
    };
    let mut conn = redis.clone();
    let fields: Result<std::collections::HashMap<String, String>, _> = redis::cmd("HGETALL")
        .arg(format!("{prefix}order:{id}"))
        .query_async(&mut conn)
        .await;
    match fields {
        Ok(f) if f.is_empty() => error(
            StatusCode::NOT_FOUND,
            format!("order `{id}` not found"),
            &id,
        ),
        Ok(f) => Json(json!({"order_id": id, "view": f})).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("order view unavailable: {e}"),
            &id,
        ),
    }
}
