//! The HTTP command gateway: the pipeline's public door.
//!
//! - `POST /commands/{topic}`: a command as JSON (see [`crate::command`]) → `202 Accepted` with
//!   the command id (the gateway's own) once the broker has acknowledged the record; `200` with
//!   `"duplicate": true` for a repeat of an `Idempotency-Key`; `400` with the reason for input
//!   that does not fit; `401` without valid credentials; `403` for a command the caller may not
//!   send; `413` for bodies over the limit; `429` when the caller is over their rate; `503` when
//!   the gateway is saturated or the broker does not answer within the request timeout.
//! - `GET /orders/{id}`: the order's current status, from the Redis order-status view, for the
//!   order's owner or an admin; `404` for everyone else, as for an order that does not exist.
//! - `GET /health`, `GET /metrics` (Prometheus, no credentials needed):
//!   `tributary_gateway_commands_total{command,outcome}` and
//!   `tributary_gateway_request_duration_seconds{outcome}`.
//!
//! Errors are JSON: `{"error": "...", "input": "..."}` naming what was refused.
//!
//! # Who may do what
//!
//! Every `/commands` and `/orders` request is authenticated first ([`auth`]: a bearer JWT or
//! an API key); a request without valid credentials gets `401` and touches nothing else. The
//! [`policy`] then decides by the command's branch: the public commands for anyone, the
//! catalogue for `admin`, the saga's internal steps only for `internal`. A refused request
//! (401, 403, 400) writes nothing to Kafka.
//!
//! The principal, not the body, is the user: for a caller without `admin`/`internal` the
//! gateway *overwrites* the body's `user_id` with the principal's id. Overwriting rather than
//! refusing keeps clients that send the field working, and leaves no way to act for someone
//! else; the 202 names the `user_id` the command was sent with. Admins and internal services
//! may name any user (support staff acting for a customer); without a `user_id` the command is
//! theirs.
//!
//! # Limits
//!
//! - Per principal: a fixed window counted in Redis ([`RateLimit`]), shared by every gateway.
//!   Only the first refusal of a window is recorded on `events.rejections`, so a caller over
//!   their rate cannot keep writing to Kafka through the refusals.
//! - Per client IP, for failed authentications: an in-process limiter (governor); past it the
//!   answer is `429` instead of `401`, which slows down guessing keys. The IP is the TCP peer's
//!   (`X-Forwarded-For` is not trusted: behind a proxy, all callers share the proxy's budget).
//! - A request timeout and a cap on requests in progress (tower layers): over the cap the
//!   answer is an immediate `503` rather than a queue; past the timeout `503` too. A command
//!   whose request timed out may still have been written: retry it with the same
//!   `Idempotency-Key`.
//!
//! # Command ids
//!
//! The gateway assigns every command's id (a UUID, in the `202`'s `command_id`); a body that
//! names an `id` is refused with `400`, since a client-chosen id could collide with another
//! command's and be dropped downstream as its duplicate. To retry safely a client sends an
//! `Idempotency-Key` header ([`idempotency`]): a repeat of a request with the same key and
//! body within the key's TTL writes nothing and is answered `200` with `"duplicate": true` and
//! the first request's `command_id`; the same key with another body is `422`.

pub mod auth;
pub mod idempotency;
pub mod policy;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Extension, Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Registry};
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tributary_runtime::metrics::Kind;

use crate::command::Command;
use crate::sender::CommandSender;
use auth::{Authenticator, Principal};
use idempotency::Claim;
pub use idempotency::Idempotency;
use policy::Access;
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
    /// Counts one command for `user`; `Err(Limited)` when over the limit.
    async fn admit(&self, user: &str) -> Result<(), RateError> {
        let window_ms = self.window.as_millis().max(1) as u64;
        // Never negative: `now_ms` is 0 on a host clock before 1970.
        let now_ms = tributary_runtime::clock::now_ms().max(0) as u64;
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
            return Err(RateError::Limited {
                retry_after,
                first: count == self.max + 1,
            });
        }
        Ok(())
    }
}

enum RateError {
    /// `first`: this is the window's first refusal, the one recorded on the log.
    Limited {
        retry_after: u64,
        first: bool,
    },
    Unavailable(String),
}

/// The gateway's metrics. Labels are bounded: `command` is a record name of the command
/// schemas (or `unknown`), `outcome` one of accepted, invalid, unauthorized, forbidden,
/// rate_limited, unavailable, overloaded.
#[derive(Clone)]
pub struct GatewayMetrics {
    commands: IntCounterVec,
    duration: HistogramVec,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        // One gateway per process: its component labels are fixed (`tributary_runtime::metrics`).
        let opts = |name: &str, help: &str| Kind::Gateway.fixed_opts("gateway", name, help);
        let commands = IntCounterVec::new(
            opts(
                "tributary_gateway_commands_total",
                "Commands received by the HTTP gateway, by command and outcome.",
            ),
            &["command", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::from(opts(
                "tributary_gateway_request_duration_seconds",
                "Time from request to answer of POST /commands, including the broker's ack.",
            ))
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
    /// Idempotency keys (the `Idempotency-Key` header); without it the header is refused.
    pub idempotency: Option<Idempotency>,
    /// Redis connection and key prefix of the order-status view (`<prefix>order:<id>` hashes).
    pub order_view: Option<(ConnectionManager, String)>,
    /// Registry the gateway's metrics are kept in and `/metrics` serves.
    pub metrics: Registry,
    /// Verifies every caller's credentials.
    pub auth: Arc<Authenticator>,
    /// Longest a request may take, the broker's acknowledgement included.
    pub request_timeout: Duration,
    /// Requests in progress at once; more are refused with 503 at once.
    pub max_in_flight: usize,
    /// Failed authentications per client IP per minute before they are answered with 429.
    pub auth_failures_per_ip_per_minute: NonZeroU32,
}

impl GatewayConfig {
    /// A configuration with `auth` and the defaults `tributary gateway` uses for the rest.
    pub fn new(listen: SocketAddr, auth: Authenticator) -> Self {
        GatewayConfig {
            listen,
            max_body_bytes: 64 * 1024,
            rate_limit: None,
            idempotency: None,
            order_view: None,
            metrics: Registry::new(),
            auth: Arc::new(auth),
            request_timeout: Duration::from_secs(10),
            max_in_flight: 1024,
            auth_failures_per_ip_per_minute: NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN),
        }
    }
}

#[derive(Clone)]
struct AppState {
    sender: Arc<CommandSender>,
    config: Arc<GatewayConfig>,
    metrics: GatewayMetrics,
    auth_failures: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

/// The gateway's routes, for serving or for tests. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` (as [`serve`] does) so that failed
/// authentications are limited per client IP; without it every client shares one budget.
pub fn router(sender: Arc<CommandSender>, config: GatewayConfig) -> prometheus::Result<Router> {
    let limit = config.max_body_bytes;
    let metrics = GatewayMetrics::new(&config.metrics)?;
    let observability = tributary_runtime::metrics::routes(config.metrics.clone());
    let quota = Quota::per_minute(config.auth_failures_per_ip_per_minute);
    let (timeout, in_flight) = (config.request_timeout, config.max_in_flight.max(1));
    let state = AppState {
        sender,
        config: Arc::new(config),
        metrics: metrics.clone(),
        auth_failures: Arc::new(RateLimiter::keyed(quota)),
    };
    // Outermost first: errors of the layers below become answers; over the cap is an
    // immediate 503 (load_shed) rather than a queue that grows while Kafka is down; the timeout
    // covers authentication, the rate limiter's Redis and the broker's ack.
    let limits = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(move |e: BoxError| {
            let metrics = metrics.clone();
            async move { overloaded(e, &metrics, timeout) }
        }))
        .load_shed()
        .concurrency_limit(in_flight)
        .timeout(timeout);
    Ok(Router::new()
        .route("/commands/{topic}", post(post_command))
        .route("/orders/{id}", get(get_order))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(limit))
        .layer(limits)
        .with_state(state)
        .merge(observability))
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    sender: Arc<CommandSender>,
    config: GatewayConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "command gateway listening");
    let app = router(sender, config).map_err(std::io::Error::other)?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

fn overloaded(e: BoxError, metrics: &GatewayMetrics, timeout: Duration) -> Response {
    let started = Instant::now();
    let (outcome, message) = if e.is::<tower::timeout::error::Elapsed>() {
        let msg = format!(
            "no answer within {timeout:?} (is the broker reachable?); the command may still be \
             written: retry with the same `id`"
        );
        ("unavailable", msg)
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        ("overloaded", "too many requests in progress".to_string())
    } else {
        ("unavailable", format!("the gateway failed: {e}"))
    };
    metrics.record("unknown", outcome, started);
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, message, "");
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Answers 401 (or 429 past the IP's budget of failures) unless the request's credentials
/// verify; otherwise hands the [`Principal`] to the handler.
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    match state.config.auth.authenticate(req.headers()) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => {
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
            let is_command = req.uri().path().starts_with("/commands/");
            let limiter = &state.auth_failures;
            // Forget addresses that have been quiet for a window, so the map stays small.
            if limiter.len() > 10_000 {
                limiter.retain_recent();
            }
            if limiter.check_key(&ip).is_err() {
                if is_command {
                    state.metrics.record("unknown", "rate_limited", started);
                }
                let msg = format!("too many failed authentications from {ip}");
                let mut resp = error(StatusCode::TOO_MANY_REQUESTS, msg, "");
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
                return resp;
            }
            if is_command {
                state.metrics.record("unknown", "unauthorized", started);
            }
            let mut resp = error(StatusCode::UNAUTHORIZED, e.to_string(), "");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tributary\""),
            );
            resp
        }
    }
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
    Extension(principal): Extension<Principal>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    let key = headers.get(idempotency::HEADER);
    let (command, outcome, response) = handle_command(&state, &principal, &topic, key, &body).await;
    state.metrics.record(command, outcome, started);
    response
}

/// The record name of a command's JSON form (`{"payload": {"PlaceOrder": {...}}}`), if it has
/// exactly one.
fn branch_of(value: &Value) -> Option<&str> {
    let payload = value.get("payload")?.as_object()?;
    match (payload.keys().next(), payload.len()) {
        (Some(name), 1) => Some(name),
        _ => None,
    }
}

/// Makes the command the principal's: a public command's `user_id` is the principal's id
/// (overwritten), or for an admin or internal caller the body's when it names one.
fn assign_user(value: &mut Value, name: &str, principal: &Principal) -> Option<String> {
    if policy::access(name) != Access::Public {
        return None;
    }
    let record = value.get_mut("payload")?.get_mut(name)?.as_object_mut()?;
    let given = record
        .get("user_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let user = match given {
        Some(u) if principal.acts_for_others() => u.to_string(),
        _ => principal.id.clone(),
    };
    if given.is_some_and(|g| g != user) {
        tracing::debug!(principal = %principal.id, "the body's user_id was overwritten");
    }
    record.insert("user_id".to_string(), Value::String(user.clone()));
    Some(user)
}

fn forbidden(principal: &Principal, name: &str, topic: &str) -> Response {
    let needs = match policy::access(name) {
        Access::Admin => "the `admin` role",
        _ => "the `internal` role; it is a step of the order saga",
    };
    let msg = format!("`{}` may not send {name}: it needs {needs}", principal.id);
    error(StatusCode::FORBIDDEN, msg, topic)
}

/// The command's name (for metrics), the outcome label, and the answer.
async fn handle_command(
    state: &AppState,
    principal: &Principal,
    topic: &str,
    idempotency_key: Option<&HeaderValue>,
    body: &[u8],
) -> (&'static str, &'static str, Response) {
    const INVALID: &str = "invalid";
    let topic = topic.to_string();
    let idempotency_key = match idempotency_key.map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if crate::command::id_problem(k).is_none() && !k.is_empty() => Some(k),
        Some(_) => {
            let msg = format!(
                "the Idempotency-Key header must be 1 to {} bytes of visible ASCII",
                crate::command::MAX_ID_BYTES
            );
            return (
                "unknown",
                INVALID,
                error(StatusCode::BAD_REQUEST, msg, &topic),
            );
        }
    };
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) => {
            let r = error(StatusCode::BAD_REQUEST, "body is not UTF-8", &topic);
            return ("unknown", INVALID, r);
        }
    };
    let mut value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let r = error(StatusCode::BAD_REQUEST, format!("not JSON: {e}"), &topic);
            return ("unknown", INVALID, r);
        }
    };
    // The policy first, on the name as sent: an internal command from outside is refused
    // before it is even validated, and nothing about it reaches the sender.
    let mut user = None;
    if let Some(name) = branch_of(&value).map(str::to_string) {
        if !policy::allows(principal, &name) {
            return ("unknown", "forbidden", forbidden(principal, &name, &topic));
        }
        user = assign_user(&mut value, &name, principal);
    }
    // The gateway assigns command ids: a client-chosen one could collide with (and so be
    // dropped as a duplicate of) someone else's command. Retries use an Idempotency-Key.
    if value.get("id").is_some_and(|v| !v.is_null()) {
        let msg = "`id` is assigned by the gateway; to retry a command safely send an \
                   `Idempotency-Key` header";
        return (
            "unknown",
            INVALID,
            error(StatusCode::BAD_REQUEST, msg, &topic),
        );
    }
    let command = match Command::from_json(&topic, value) {
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
    // Again on the parsed command, whatever spelling the body used.
    if !policy::allows(principal, name) {
        return (name, "forbidden", forbidden(principal, name, &topic));
    }
    if let Some(limit) = &state.config.rate_limit {
        match limit.admit(&principal.id).await {
            Ok(()) => {}
            Err(RateError::Limited { retry_after, first }) => {
                let msg = format!(
                    "`{}` is over {} commands per {:?}",
                    principal.id, limit.max, limit.window
                );
                // The window's first refusal is also an event; the caller's 429 does not wait
                // on it failing.
                if first {
                    if let Err(e) = state
                        .sender
                        .reject(&command, RejectionReason::RateLimited, msg.clone())
                        .await
                    {
                        tracing::warn!(error = %e, command = command.id(), "recording a rate-limited command");
                    }
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
    if let Some(key) = idempotency_key {
        let Some(store) = &state.config.idempotency else {
            let msg = "this gateway does not keep idempotency keys";
            return (name, INVALID, error(StatusCode::BAD_REQUEST, msg, &topic));
        };
        match store.claim(&principal.id, key, body, command.id()).await {
            Ok(Claim::Claimed) => {}
            Ok(Claim::Duplicate { command_id }) => {
                // Already sent (or being sent) under this key: nothing is written again.
                let body = Json(json!({
                    "duplicate": true,
                    "command_id": command_id,
                    "command": name,
                    "principal": principal.id,
                    "user_id": user,
                }));
                return (name, "duplicate", (StatusCode::OK, body).into_response());
            }
            Ok(Claim::Conflict { command_id }) => {
                let msg = format!(
                    "Idempotency-Key `{key}` was used for another request (command {command_id})"
                );
                let r = error(StatusCode::UNPROCESSABLE_ENTITY, msg, &topic);
                return (name, "conflict", r);
            }
            Err(e) => {
                let msg = format!("idempotency keys unavailable: {e}");
                let r = error(StatusCode::SERVICE_UNAVAILABLE, msg, &topic);
                return (name, "unavailable", r);
            }
        }
    }
    let sent = state.sender.send(&command).await;
    if let (Err(_), Some(key), Some(store)) = (&sent, idempotency_key, &state.config.idempotency) {
        store.release(&principal.id, key).await;
    }
    match sent {
        Ok(d) => {
            let body = Json(json!({
                "command_id": command.id(),
                "command": name,
                "principal": principal.id,
                "user_id": user,
                "topic": state.sender.topic_for(&command),
                "partition": d.partition,
                "offset": d.offset,
                "duplicate": false,
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

/// The order's view, for its owner or an admin/internal caller. Anyone else gets the same 404
/// as for an order that does not exist, so order ids cannot be probed for existence.
async fn get_order(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let Some((redis, prefix)) = &state.config.order_view else {
        return error(StatusCode::NOT_FOUND, "no order view configured", &id);
    };
    let mut conn = redis.clone();
    let fields: Result<std::collections::HashMap<String, String>, _> = redis::cmd("HGETALL")
        .arg(format!("{prefix}order:{id}"))
        .query_async(&mut conn)
        .await;
    match fields {
        Ok(f)
            if f.is_empty()
                || !(principal.acts_for_others()
                    || f.get("user_id").is_some_and(|u| *u == principal.id)) =>
        {
            error(
                StatusCode::NOT_FOUND,
                format!("order `{id}` not found"),
                &id,
            )
        }
        Ok(f) => Json(json!({"order_id": id, "view": f})).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("order view unavailable: {e}"),
            &id,
        ),
    }
}

#[cfg(test)]
mod metric_tests {
    use super::*;

    /// The gateway's families follow the one naming scheme (`tributary_runtime::metrics`).
    #[test]
    fn names_follow_the_scheme() {
        let registry = Registry::new();
        let m = GatewayMetrics::new(&registry).expect("metrics");
        m.record("PlaceOrder", "accepted", Instant::now());
        let families = registry.gather();
        assert_eq!(families.len(), 2);
        assert_eq!(
            tributary_runtime::metrics::naming_problems(&families),
            Vec::<String>::new()
        );
    }
}
