//! The one place a Redis client is built, for the sink, the lock, `reconcile`/`rebuild`,
//! `summary` and the gateway.
//!
//! TLS is the URL's: `rediss://[user:password@]host:port` connects over TLS (rustls) and
//! verifies the server against the system's roots, or against the PEM bundle `ca_file` when
//! one is given (a private CA, as managed Redis services and the tests use): the binary's
//! `--redis-ca`, read from `TRIBUTARY_REDIS_CA`. ACL credentials are the URL's userinfo
//! (`redis://user:password@...`; a password alone is `redis://:password@...`), sent with
//! `AUTH user password` on every (re)connection. A `redis://` URL is plaintext whatever the CA.

use ::redis::{Client, ErrorKind, RedisError, TlsCertificates};

/// The variable the binary reads for `--redis-ca`: a PEM file of CA certificates to trust for
/// `rediss://` instead of the system's roots.
pub const REDIS_CA_VAR: &str = "TRIBUTARY_REDIS_CA";

/// A client for `url`, trusting the PEM file `ca_file` for TLS when given (else the system's
/// roots). Nothing is connected yet. Errors (a bad URL, an unreadable CA file) never carry the
/// URL's password.
pub fn client(url: &str, ca_file: Option<&str>) -> Result<Client, RedisError> {
    install_crypto_provider();
    match ca_file {
        Some(path) if url.starts_with("rediss://") => {
            let pem = std::fs::read(path).map_err(|e| {
                RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "cannot read the Redis CA file",
                    format!("{path}: {e}"),
                ))
            })?;
            Client::build_with_tls(
                url,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        _ => Client::open(url),
    }
}

/// The redis crate builds its rustls config with the process-wide default provider, and this
/// workspace links both of rustls' providers (ring through the stores' drivers, aws-lc-rs
/// through reqwest), so rustls would refuse to choose one. Installing ring first settles it;
/// a provider installed earlier (by anyone) is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A connection manager for `url`, `ca_file` as in [`client`] (it reconnects by itself): the
/// gateway's, and the one that holds the stores' locks.
pub async fn manager(
    url: &str,
    ca_file: Option<&str>,
) -> Result<::redis::aio::ConnectionManager, RedisError> {
    ::redis::aio::ConnectionManager::new(client(url, ca_file)?).await
}
