//! Errors, and the one place where they become Confluent-shaped HTTP responses.
//!
//! [`RegistryError`] is the crate's public error: starting the registry, loading the schemas
//! topic and writing to it. [`ApiError`] is what a handler answers with; every status code and
//! `error_code` the REST API can produce is decided in [`ApiError::status_and_code`], so the
//! mapping to Confluent's documented codes can be checked in one screen.

use std::net::SocketAddr;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rdkafka::error::KafkaError as RdKafkaError;
use serde::Serialize;

/// The media type Confluent's registry answers with; clients check for it.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Failures starting the registry or reading and writing its topic.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("binding the registry's HTTP listener on {addr} failed: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("creating the schemas topic `{topic}` failed: {source}")]
    CreateTopic {
        topic: String,
        source: tributary_runtime::KafkaError,
    },
    #[error("Kafka client error on the schemas topic `{topic}`: {source}")]
    Kafka { topic: String, source: RdKafkaError },
    #[error("the schemas topic `{topic}` is unusable: {reason}")]
    Topic { topic: String, reason: String },
    #[error("reading the schemas topic `{topic}` failed: {reason}")]
    Load { topic: String, reason: String },
    #[error("writing to the schemas topic `{topic}` failed: {source}")]
    Write { topic: String, source: RdKafkaError },
    #[error("the registry's background task failed: {0}")]
    Task(String),
}

impl RegistryError {
    /// Whether a failed write timed out (Confluent answers those with 50002, other store
    /// failures with 50001).
    fn is_timeout(&self) -> bool {
        match self {
            RegistryError::Write { source, .. } | RegistryError::Kafka { source, .. } => {
                tributary_runtime::kafka::is_timeout(source)
            }
            _ => false,
        }
    }
}

/// An answer other than success, with Confluent's status code, `error_code` and message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema not found")]
    SchemaNotFound,
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error(
        "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted { subject: String, version: u32 },
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted { subject: String, version: u32 },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectCompatibilityNotConfigured(String),
    /// `details` are the checker's messages, rendered like Confluent's Java list.
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
        details.join(", ")
    )]
    Incompatible {
        subject: String,
        details: Vec<String>,
    },
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibility,
    /// A body that is not the JSON the endpoint expects.
    #[error("{0}")]
    Unprocessable(String),
    #[error("Request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("HTTP 415 Unsupported Media Type")]
    UnsupportedMediaType,
    #[error("HTTP 404 Not Found")]
    RouteNotFound,
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,
    #[error("Unauthorized")]
    Unauthorized,
    /// A user without the role the operation needs.
    #[error("{0}")]
    Forbidden(String),
    /// A change asked of a registry in read-only mode.
    #[error("{0}")]
    ReadOnlyMode(String),
    #[error("Error in the backend data store - {0}")]
    Store(#[from] RegistryError),
    #[error("Internal server error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and Confluent `error_code` of each error. Codes follow Confluent's
    /// `Errors` class: the HTTP status, optionally followed by two digits naming the case.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        use ApiError as E;
        match self {
            E::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            E::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            E::SchemaNotFound => (StatusCode::NOT_FOUND, 40403),
            E::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            E::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            E::VersionSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40406),
            E::VersionNotSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40407),
            E::SubjectCompatibilityNotConfigured(_) => (StatusCode::NOT_FOUND, 40408),
            E::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            E::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            E::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            E::InvalidCompatibility => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            E::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            E::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 413),
            E::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 415),
            E::RouteNotFound => (StatusCode::NOT_FOUND, 404),
            E::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            E::Unauthorized => (StatusCode::UNAUTHORIZED, 401),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, 40301),
            E::ReadOnlyMode(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42205),
            E::Store(e) if e.is_timeout() => (StatusCode::INTERNAL_SERVER_ERROR, 50002),
            E::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error_code: u32,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error_code, "{self}");
        } else {
            tracing::debug!(error_code, "{self}");
        }
        let message = self.to_string();
        let mut response = json_response(
            status,
            &ErrorBody {
                error_code,
                message: &message,
            },
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tributary-registry\""),
            );
        }
        response
    }
}

/// A JSON response with Confluent's media type. Serialising the crate's own response types
/// cannot fail; should it ever, the client still gets a well-formed Confluent error.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({
                "error_code": 50001,
                "message": format!("Internal server error: encoding the response failed: {e}"),
            })
            .to_string()
            .into_bytes(),
        ),
    };
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use rdkafka::error::RDKafkaErrorCode;

    fn write_error(code: RDKafkaErrorCode) -> ApiError {
        ApiError::Store(RegistryError::Write {
            topic: "_schemas".into(),
            source: RdKafkaError::MessageProduction(code),
        })
    }

    #[test]
    fn store_failures_are_500s_naming_the_failure() {
        let timeout = write_error(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(
            timeout.status_and_code(),
            (StatusCode::INTERNAL_SERVER_ERROR, 50002)
        );
        let other = write_error(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(
            other.status_and_code(),
            (StatusCode::INTERNAL_SERVER_ERROR, 50001)
        );
        let message = other.to_string();
        assert!(message.contains("_schemas"), "{message}");
        assert!(message.to_lowercase().contains("too large"), "{message}");
    }

    #[test]
    fn incompatibility_reads_like_confluent() {
        let e = ApiError::Incompatible {
            subject: "s".into(),
            details: vec!["{a}".into(), "{b}".into()],
        };
        assert_eq!(
            e.to_string(),
            "Schema being registered is incompatible with an earlier schema for subject \"s\", details: [{a}, {b}]"
        );
    }
}
