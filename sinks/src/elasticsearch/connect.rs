//! The one place an Elasticsearch client is built (the sink, `reconcile`, `rebuild`, `summary`).
//!
//! Credentials, in this order:
//! - [`EsSecurity::api_key`]: an API key in its encoded form (base64 of `id:key`, what
//!   `POST /_security/api_key` returns as `encoded`), sent as `Authorization: ApiKey ...`;
//! - otherwise the URL's userinfo (`https://user:password@host:9200`, percent-encoded as URLs
//!   are), sent as HTTP basic auth. The userinfo is taken out of the URL the client keeps, so it
//!   never shows up in the client's own errors.
//!
//! TLS is the URL's scheme: `https://` verifies the server against the system's roots, or
//! against the PEM bundle [`EsSecurity::ca_file`] (a private CA, as Elastic's own
//! `http_ca.crt`).
//!
//! The binary fills [`EsSecurity`] from `--elasticsearch-api-key` and `--elasticsearch-ca`
//! (`TRIBUTARY_ELASTICSEARCH_API_KEY`, `TRIBUTARY_ELASTICSEARCH_CA`); this crate never reads
//! the environment.

use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::Url;
use elasticsearch::Elasticsearch;
use percent_encoding::percent_decode_str;
use tributary_runtime::redact;

use super::STORE;
use crate::change::WriteError;

/// The variable the binary reads for `--elasticsearch-api-key`.
pub const API_KEY_VAR: &str = "TRIBUTARY_ELASTICSEARCH_API_KEY";
/// The variable the binary reads for `--elasticsearch-ca`.
pub const CA_VAR: &str = "TRIBUTARY_ELASTICSEARCH_CA";

/// How a client authenticates and whom it trusts, apart from the URL.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EsSecurity {
    /// An encoded API key; wins over the URL's userinfo.
    pub api_key: Option<String>,
    /// A PEM file of CA certificates to trust for `https://` instead of the system's roots.
    pub ca_file: Option<String>,
}

/// Without the API key's value: a config may be printed.
impl std::fmt::Debug for EsSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsSecurity")
            .field("api_key", &self.api_key.as_ref().map(|_| redact::MASK))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A client to the server at `url`, with the URL's userinfo as its only credentials and the
/// system's roots as its only CAs.
///
/// The request timeout is bounded (30 s) so a hung server surfaces as
/// [`WriteError::Unavailable`] instead of stalling the runner.
pub fn client(url: &str) -> Result<Elasticsearch, WriteError> {
    client_with(url, &EsSecurity::default())
}

/// [`client`] with the security settings given.
pub fn client_with(url: &str, security: &EsSecurity) -> Result<Elasticsearch, WriteError> {
    let config_error = |message: String| WriteError::Unavailable {
        store: STORE,
        message,
    };
    let mut parsed = Url::parse(url)
        .map_err(|e| config_error(format!("bad elasticsearch url `{}`: {e}", redact::url(url))))?;
    let basic = userinfo(&parsed);
    // Both setters fail only for URLs that cannot have a userinfo (`cannot-be-a-base`), which
    // `userinfo` answered `None` for.
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(parsed))
        .timeout(Duration::from_secs(30));
    match (&security.api_key, basic) {
        (Some(key), _) => builder = builder.auth(Credentials::EncodedApiKey(key.clone())),
        (None, Some((user, password))) => {
            builder = builder.auth(Credentials::Basic(user, password))
        }
        (None, None) => {}
    }
    if let Some(path) = &security.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| config_error(format!("cannot read {CA_VAR}={path}: {e}")))?;
        let ca = Certificate::from_pem(&pem)
            .map_err(|e| config_error(format!("{CA_VAR}={path} is not a PEM certificate: {e}")))?;
        builder = builder.cert_validation(CertificateValidation::Full(ca));
    }
    let transport = builder
        .build()
        .map_err(|e| config_error(format!("cannot build the elasticsearch client: {e}")))?;
    Ok(Elasticsearch::new(transport))
}

/// The URL's user and password, percent-decoded; `None` without a user name.
fn userinfo(url: &Url) -> Option<(String, String)> {
    if url.username().is_empty() {
        return None;
    }
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    Some((
        decode(url.username()),
        decode(url.password().unwrap_or_default()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_decoded_and_absent_without_a_user() {
        let u = Url::parse("https://elastic:p%40ss%3Aw0rd@es:9200").unwrap();
        assert_eq!(
            userinfo(&u),
            Some(("elastic".to_string(), "p@ss:w0rd".to_string()))
        );
        assert_eq!(userinfo(&Url::parse("http://es:9200").unwrap()), None);
    }

    #[test]
    fn a_bad_url_or_ca_is_an_error_without_the_password() {
        let e = client_with("http://u:hunter2@[::1", &EsSecurity::default()).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = client_with(
            "https://u:hunter2@es:9200",
            &EsSecurity {
                api_key: None,
                ca_file: Some("/nonexistent/ca.pem".into()),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains(CA_VAR), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn the_api_key_is_not_debug_printed() {
        let security = EsSecurity {
            api_key: Some("aWQ6c2VjcmV0LWtleQ==".into()),
            ca_file: Some("/etc/ca.pem".into()),
        };
        let printed = format!("{security:?}");
        assert!(!printed.contains("aWQ6c2VjcmV0LWtleQ=="), "{printed}");
        assert!(printed.contains("/etc/ca.pem"), "{printed}");
    }
}
