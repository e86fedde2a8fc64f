//! The HTTP command gateway.
//!
//! - `POST /commands/{topic}`: a command as JSON (see [`crate::command`]) → `202 Accepted` with
//!   the command id once the broker has acknowledged the record; `400` with the reason for input
//!   that does not fit; `413` for bodies over the limit; `429` when the user is over their rate.
//! - `GET /orders/{id}`: the order's current status, from the Redis order-status view.
//! - `GET /health`.
//!
//! Errors are JSON: `{"error": "...", "input": "..."}` naming what was refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde_json::json;

use crate::command::Command;
use crate::sender::CommandSender;

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

/// How to run a gateway.
#[derive(Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub rate_limit: Option<RateLimit>,
    /// Redis connection and key prefix of the order-status view (`<prefix>order:<id>` hashes).
    pub order_view: Option<(ConnectionManager, String)>,
}

#[derive(Clone)]
struct AppState {
    sender: Arc<CommandSender>,
    config: Arc<GatewayConfig>,
}

/// The gateway's routes, for serving or for tests.
pub fn router(sender: Arc<CommandSender>, config: GatewayConfig) -> Router {
    let limit = config.max_body_bytes;
    Router::new()
        .route("/commands/{topic}", post(post_command))
        .route("/orders/{id}", get(get_order))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(AppState {
            sender,
            config: Arc::new(config),
        })
}

/// Serves until `shutdown` completes; returns the bound address through `bound`.
pub async fn serve(
    sender: Arc<CommandSender>,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "command gateway listening");
    axum::serve(listener, router(sender, config))
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
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return error(StatusCode::BAD_REQUEST, "body is not UTF-8", &topic),
    };
    let command = match Command::parse(&topic, text) {
        Ok(c) => c,
        Err(e @ crate::command::CommandError::UnknownTopic { .. }) => {
            return error(StatusCode::NOT_FOUND, e.to_string(), &topic)
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string(), &topic),
    };
    if let (Some(limit), Some(user)) = (&state.config.rate_limit, command.user_id()) {
        match limit.admit(&user).await {
            Ok(()) => {}
            Err(RateError::Limited { retry_after }) => {
                let mut resp = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "user `{user}` is over {} commands per {:?}",
                        limit.max, limit.window
                    ),
                    &topic,
                );
                if let Ok(v) = retry_after.to_string().parse() {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return resp;
            }
            Err(RateError::Unavailable(e)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("rate limiter unavailable: {e}"),
                    &topic,
                )
            }
        }
    }
    match state.sender.send(&command).await {
        Ok(d) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "command_id": command.id(),
                "command": command.name(),
                "topic": state.sender.topic_for(&command),
                "partition": d.partition,
                "offset": d.offset,
            })),
        )
            .into_response(),
        Err(e) if e.retriable() => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), &topic),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string(), &topic),
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
