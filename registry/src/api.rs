//! The REST API: routes, request parsing and the handlers, following Confluent Schema
//! Registry's documented endpoints, status codes and bodies.
//!
//! Handlers parse and validate input into typed values and return [`ApiError`] for anything
//! else; none of them can panic on input, and a [`CatchPanicLayer`] turns a bug into a
//! Confluent-style 500 instead of a dropped connection.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{Access, Denied};
use crate::avro::{self, ParsedSchema};
use crate::compat::Compatibility;
use crate::error::{json_response, ApiError, CONTENT_TYPE};
use crate::state::VersionSpec;
use crate::store::Store;

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<Store>,
    pub max_body_bytes: usize,
    pub access: Arc<Access>,
}

type ApiResult = Result<Response, ApiError>;

pub(crate) fn router(state: AppState) -> Router {
    let max_body_bytes = state.max_body_bytes;
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(schema_usages))
        .route("/subjects", get(list_subjects))
        .route(
            "/subjects/{subject}",
            post(lookup_schema).delete(delete_subject),
        )
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_against_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_against_subject),
        )
        .route("/mode", get(get_mode))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Every request, the fallbacks included, is authenticated and authorised first.
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
        // Bodies are buffered by `SchemaRequest`/`JsonBody`, which turn this limit into
        // Confluent's 413 body.
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                ApiError::Internal("the request handler panicked".to_string()).into_response()
            },
        ))
}

/// Answers 401, 403 or 422 (read-only) before the handler when [`Access`] says so.
async fn guard(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    match app
        .access
        .check(&method, uri.path(), uri.query(), req.headers())
    {
        Ok(()) => next.run(req).await,
        Err(denied) => {
            let message = denied.message(&method, uri.path());
            tracing::info!(%method, path = uri.path(), "refused: {message}");
            match denied {
                Denied::Unauthenticated => ApiError::Unauthorized,
                Denied::Forbidden { .. } => ApiError::Forbidden(message),
                Denied::ReadOnly => ApiError::ReadOnlyMode(message),
            }
            .into_response()
        }
    }
}

// ---- extractors ------------------------------------------------------------------------------

/// Path parameters; a path that does not decode is a route that does not exist.
struct PathParams<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|_| ApiError::RouteNotFound)
    }
}

/// Query parameters. Unknown ones (`normalize`, `format`, `subject`, …) are ignored, and an
/// undecodable query string counts as empty, as Confluent ignores what it does not use.
struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let query = Query::<HashMap<String, String>>::from_request_parts(parts, state).await;
        Ok(Params(query.map(|Query(q)| q).unwrap_or_default()))
    }
}

impl Params {
    fn flag(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// A JSON request body, read within the size limit, with the content types Confluent accepts.
struct JsonBody(Value);

const ACCEPTED_CONTENT_TYPES: [&str; 4] = [
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
];

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            if !ACCEPTED_CONTENT_TYPES
                .iter()
                .any(|t| t.eq_ignore_ascii_case(essence))
            {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                    ApiError::PayloadTooLarge(state.max_body_bytes)
                }
                other => ApiError::Unprocessable(other.body_text()),
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::Unprocessable(format!("Unprocessable request body: {e}")))
    }
}

/// The body of the schema endpoints: `{"schema": "...", "schemaType"?, "references"?}`.
struct SchemaRequest {
    parsed: ParsedSchema,
    text: String,
}

impl FromRequest<AppState> for SchemaRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let JsonBody(body) = JsonBody::from_request(req, state).await?;
        let Value::Object(fields) = body else {
            return Err(ApiError::Unprocessable(
                "Unprocessable request body: expected a JSON object".to_string(),
            ));
        };
        match fields.get("schemaType") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t.eq_ignore_ascii_case("AVRO") => {}
            Some(other) => {
                let shown = other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string);
                return Err(ApiError::InvalidSchema(format!(
                    "schemaType {shown} is not supported; this registry supports only AVRO"
                )));
            }
        }
        match fields.get("references") {
            None | Some(Value::Null) => {}
            Some(Value::Array(refs)) if refs.is_empty() => {}
            Some(_) => {
                return Err(ApiError::InvalidSchema(
                    "schema references are not supported by this registry".to_string(),
                ))
            }
        }
        let text = match fields.get("schema") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Null) | None => {
                return Err(ApiError::InvalidSchema(
                    "the request has no \"schema\" field".to_string(),
                ))
            }
            Some(_) => {
                return Err(ApiError::InvalidSchema(
                    "the \"schema\" field must be a string holding the schema's JSON".to_string(),
                ))
            }
        };
        let parsed = avro::parse(&text).map_err(ApiError::InvalidSchema)?;
        Ok(SchemaRequest { parsed, text })
    }
}

// ---- responses -------------------------------------------------------------------------------

fn ok<T: serde::Serialize + ?Sized>(body: &T) -> ApiResult {
    Ok(json_response(StatusCode::OK, body))
}

fn raw_text(text: String) -> ApiResult {
    let mut response = (StatusCode::OK, text).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

fn parse_id(raw: &str) -> Result<u32, ApiError> {
    // Confluent's id is a Java Integer path parameter: text that is not an integer does not
    // match the route at all; an integer that names no schema is "schema not found".
    let n: i64 = raw.parse().map_err(|_| ApiError::RouteNotFound)?;
    u32::try_from(n).map_err(|_| ApiError::SchemaNotFound)
}

fn version_body(subject: &str, version: u32, id: u32, schema: &str) -> Value {
    json!({ "subject": subject, "version": version, "id": id, "schema": schema })
}

// ---- handlers --------------------------------------------------------------------------------

async fn root() -> ApiResult {
    ok(&json!({}))
}

async fn schema_types() -> ApiResult {
    ok(&["AVRO"])
}

async fn get_mode(State(app): State<AppState>) -> ApiResult {
    let mode = if app.access.read_only() {
        "READONLY"
    } else {
        "READWRITE"
    };
    ok(&json!({ "mode": mode }))
}

async fn schema_by_id(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let text = app
        .store
        .read(|st| st.served_schema(id).map(|e| e.text.clone()))
        .ok_or(ApiError::SchemaNotFound)?;
    ok(&json!({ "schema": text }))
}

async fn raw_schema_by_id(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let text = app
        .store
        .read(|st| st.served_schema(id).map(|e| e.text.clone()))
        .ok_or(ApiError::SchemaNotFound)?;
    raw_text(text)
}

async fn schema_usages(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    params: Params,
) -> ApiResult {
    let id = parse_id(&id)?;
    let usages = app.store.read(|st| {
        st.served_schema(id)
            .map(|_| st.usages(id, params.flag("deleted")))
    });
    let usages = usages.ok_or(ApiError::SchemaNotFound)?;
    let body: Vec<Value> = usages
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    ok(&body)
}

async fn list_subjects(State(app): State<AppState>, params: Params) -> ApiResult {
    let prefix = params.0.get("subjectPrefix").cloned().unwrap_or_default();
    let mut subjects = app.store.read(|st| st.subjects(params.flag("deleted")));
    subjects.retain(|s| s.starts_with(&prefix));
    ok(&subjects)
}

async fn list_versions(
    State(app): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
) -> ApiResult {
    let versions = app
        .store
        .read(|st| st.versions(&subject, params.flag("deleted")))?;
    let numbers: Vec<u32> = versions.into_iter().map(|(n, _)| n).collect();
    ok(&numbers)
}

async fn register_schema(
    State(app): State<AppState>,
    PathParams(subject): PathParams<String>,
    request: SchemaRequest,
) -> ApiResult {
    let id = app
        .store
        .register(subject, request.parsed, request.text)
        .await?;
    ok(&json!({ "id": id }))
}

async fn lookup_schema(
    State(app): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
    request: SchemaRequest,
) -> ApiResult {
    let include_deleted = params.flag("deleted");
    let body = app.store.read(|st| {
        st.versions(&subject, include_deleted)?;
        let (version, entry) = st
            .find(&subject, &request.parsed, include_deleted)
            .ok_or(ApiError::SchemaNotFound)?;
        let text = st.schema(entry.id).map_or("", |e| e.text.as_str());
        Ok::<_, ApiError>(version_body(&subject, version, entry.id, text))
    })?;
    ok(&body)
}

/// Resolves `subject`/`version` to the served body fields.
fn resolve_version(
    app: &AppState,
    subject: &str,
    version: &str,
    include_deleted: bool,
) -> Result<(u32, u32, String), ApiError> {
    let spec = VersionSpec::parse(version)?;
    app.store.read(|st| {
        let (version, entry) = st.version(subject, spec, include_deleted)?;
        let text = st
            .schema(entry.id)
            .map(|e| e.text.clone())
            .unwrap_or_default();
        Ok((version, entry.id, text))
    })
}

async fn get_version(
    State(app): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> ApiResult {
    let (version, id, text) = resolve_version(&app, &subject, &version, params.flag("deleted"))?;
    ok(&version_body(&subject, version, id, &text))
}

async fn get_version_schema(
    State(app): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> ApiResult {
    let (_, _, text) = resolve_version(&app, &subject, &version, params.flag("deleted"))?;
    raw_text(text)
}

/// Schema references are not supported, so nothing refers to any version.
async fn referenced_by(
    State(app): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
) -> ApiResult {
    resolve_version(&app, &subject, &version, false)?;
    ok::<[u32]>(&[])
}

async fn delete_version(
    State(app): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let deleted = app
        .store
        .delete_version(subject, spec, params.flag("permanent"))
        .await?;
    ok(&deleted)
}

async fn delete_subject(
    State(app): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
) -> ApiResult {
    let deleted = app
        .store
        .delete_subject(subject, params.flag("permanent"))
        .await?;
    ok(&deleted)
}

fn level_body(level: Compatibility) -> Value {
    json!({ "compatibilityLevel": level.as_str() })
}

/// The level in a `PUT /config` body: `{"compatibility": "FULL"}`; other fields are ignored.
fn requested_level(body: &Value) -> Result<Compatibility, ApiError> {
    body.get("compatibility")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or(ApiError::InvalidCompatibility)
}

async fn get_global_config(State(app): State<AppState>) -> ApiResult {
    let level = app
        .store
        .read(|st| st.global_level())
        .unwrap_or(app.store.default_level());
    ok(&level_body(level))
}

async fn put_global_config(State(app): State<AppState>, JsonBody(body): JsonBody) -> ApiResult {
    let level = requested_level(&body)?;
    app.store.set_level(None, level).await?;
    ok(&json!({ "compatibility": level.as_str() }))
}

async fn delete_global_config(State(app): State<AppState>) -> ApiResult {
    let previous = app.store.delete_level(None).await?;
    ok(&level_body(previous))
}

async fn get_subject_config(
    State(app): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
) -> ApiResult {
    let (own, global) = app
        .store
        .read(|st| (st.subject_level(&subject), st.global_level()));
    let level = match own {
        Some(level) => level,
        None if params.flag("defaultToGlobal") => global.unwrap_or(app.store.default_level()),
        None => return Err(ApiError::SubjectCompatibilityNotConfigured(subject)),
    };
    ok(&level_body(level))
}

async fn put_subject_config(
    State(app): State<AppState>,
    PathParams(subject): PathParams<String>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let level = requested_level(&body)?;
    app.store.set_level(Some(subject), level).await?;
    ok(&json!({ "compatibility": level.as_str() }))
}

async fn delete_subject_config(
    State(app): State<AppState>,
    PathParams(subject): PathParams<String>,
) -> ApiResult {
    let previous = app.store.delete_level(Some(subject)).await?;
    ok(&level_body(previous))
}

fn compatibility_body(messages: Vec<String>, verbose: bool) -> Value {
    let is_compatible = messages.is_empty();
    if verbose {
        json!({ "is_compatible": is_compatible, "messages": messages })
    } else {
        json!({ "is_compatible": is_compatible })
    }
}

/// Checks a schema against one version, with the direction of the subject's level (a single
/// version makes transitivity moot).
async fn check_against_version(
    State(app): State<AppState>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
    request: SchemaRequest,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let default = app.store.default_level();
    let messages = app.store.read(|st| {
        let (version, _) = st.version(&subject, spec, false)?;
        let level = st.effective_level(&subject, default);
        Ok::<_, ApiError>(st.check_compatibility(&subject, &request.parsed, level, Some(version)))
    })?;
    ok(&compatibility_body(messages, params.flag("verbose")))
}

/// Checks a schema the way registering it would (latest or all versions, by level).
async fn check_against_subject(
    State(app): State<AppState>,
    PathParams(subject): PathParams<String>,
    params: Params,
    request: SchemaRequest,
) -> ApiResult {
    let default = app.store.default_level();
    let messages = app.store.read(|st| {
        let level = st.effective_level(&subject, default);
        st.check_compatibility(&subject, &request.parsed, level, None)
    });
    ok(&compatibility_body(messages, params.flag("verbose")))
}
