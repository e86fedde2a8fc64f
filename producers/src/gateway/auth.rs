//! Who is calling: a principal from a bearer JWT or a static API key.
//!
//! Two credentials, because gateways of this kind are used by two kinds of caller:
//!
//! - **Bearer JWT** (`Authorization: Bearer <token>`), for end users whose identity provider
//!   issues tokens: `HS256` with a shared secret and/or `RS256` with the issuer's public key
//!   (PEM). Each key is bound to its algorithm, so a token cannot pick a weaker one (an
//!   `HS256` token signed with the RSA public key as the "secret" is refused). `exp` and `sub`
//!   are required; `iss` and `aud` are checked when configured. `sub` is the user id; the
//!   `roles` claim (a list, or a space-separated string) may grant `admin` or `internal`.
//! - **API keys** (`X-API-Key: <key>`), for services and operators: a file of
//!   `<principal> <key> [role,role]` lines (`#` starts a comment). Keys are held only as their
//!   SHA-256, looked up by hash, so comparing a guess takes the same time wherever it differs.
//!
//! A request with a bearer token is judged by the token alone, even if it also has a key.

use std::collections::HashMap;

use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The header API keys travel in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Shortest API key accepted in the keys file: 128 bits of base64 or hex is 22–32 characters.
pub const MIN_API_KEY_LEN: usize = 24;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user id (a JWT's `sub`, an API key's principal name).
    pub id: String,
    /// May send the catalogue commands, act for other users and read every order.
    pub admin: bool,
    /// May send the saga's internal commands (stock reservations, payments); for services.
    pub internal: bool,
}

impl Principal {
    fn with_roles<'a>(id: String, roles: impl IntoIterator<Item = &'a str>) -> Principal {
        let mut p = Principal {
            id,
            admin: false,
            internal: false,
        };
        for role in roles {
            match role {
                "admin" => p.admin = true,
                "internal" => p.internal = true,
                _ => {}
            }
        }
        p
    }

    /// Admins and internal services act for any user; others only for themselves.
    pub fn acts_for_others(&self) -> bool {
        self.admin || self.internal
    }
}

/// Why a request was not authenticated. Always answered with 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credentials: send `Authorization: Bearer <jwt>` or `X-API-Key: <key>`")]
    Missing,
    #[error("invalid bearer token: {0}")]
    InvalidToken(String),
    #[error("unknown API key")]
    UnknownKey,
}

/// Why the authentication configuration could not be loaded. Not retriable: fix the file.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("reading {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the RS256 public key is not a PEM RSA public key: {0}")]
    PublicKey(String),
    #[error("the HS256 secret is {0} bytes; at least 32 are needed")]
    ShortSecret(usize),
    #[error("API keys file line {line}: {reason}")]
    KeyLine { line: usize, reason: String },
    #[error("no credentials configured: give a JWT secret or public key, or an API keys file")]
    Nothing,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Roles,
}

/// `roles` as a JSON list or a space-separated string (the OAuth `scope` style).
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Roles {
    List(Vec<String>),
    Text(String),
    #[default]
    None,
}

impl Roles {
    fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Roles::List(v) => Box::new(v.iter().map(String::as_str)),
            Roles::Text(s) => Box::new(s.split_whitespace()),
            Roles::None => Box::new(std::iter::empty()),
        }
    }
}

/// Verifies credentials. Build with the `with_*` methods; at least one must be given.
#[derive(Clone, Default)]
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    api_keys: HashMap<[u8; 32], Principal>,
}

impl std::fmt::Debug for Authenticator {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("api_keys", &self.api_keys.len())
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn read(what: &'static str, path: &str) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read {
        what,
        path: path.to_string(),
        source,
    })
}

impl Authenticator {
    /// Accept HS256 tokens signed with `secret` (at least 32 bytes, as RFC 7518 §3.2 asks).
    pub fn with_hs256_secret(mut self, secret: &[u8]) -> Result<Self, AuthConfigError> {
        if secret.len() < 32 {
            return Err(AuthConfigError::ShortSecret(secret.len()));
        }
        self.hs256 = Some(DecodingKey::from_secret(secret));
        Ok(self)
    }

    /// Accept RS256 tokens verified with the PEM public key `pem`.
    pub fn with_rs256_public_key(mut self, pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_rsa_pem(pem)
            .map_err(|e| AuthConfigError::PublicKey(e.to_string()))?;
        self.rs256 = Some(key);
        Ok(self)
    }

    /// Require this `iss` in tokens.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Require this `aud` in tokens.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self
    }

    /// Accept the API keys of a keys file's text (see the module doc for its lines).
    pub fn with_api_keys(mut self, text: &str) -> Result<Self, AuthConfigError> {
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| AuthConfigError::KeyLine {
                line: n + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (Some(principal), Some(key)) = (fields.next(), fields.next()) else {
                return Err(bad("expected `<principal> <key> [role,role]`".into()));
            };
            let roles = fields.next().unwrap_or_default();
            if fields.next().is_some() {
                return Err(bad("more than three fields".into()));
            }
            if key.len() < MIN_API_KEY_LEN {
                return Err(bad(format!(
                    "the key of `{principal}` is shorter than {MIN_API_KEY_LEN} characters"
                )));
            }
            let p = Principal::with_roles(principal.to_string(), roles.split(','));
            if self.api_keys.insert(digest(key), p).is_some() {
                return Err(bad("the same key is given twice".into()));
            }
        }
        Ok(self)
    }

    /// Builds an authenticator from files: the HS256 secret (its bytes, a trailing newline
    /// trimmed), the RS256 public key (PEM) and the API keys file, any of them optional but
    /// not all.
    pub fn from_files(
        hs256_secret: Option<&str>,
        rs256_public_key: Option<&str>,
        api_keys: Option<&str>,
    ) -> Result<Self, AuthConfigError> {
        let mut auth = Authenticator::default();
        if let Some(path) = hs256_secret {
            let bytes = read("the HS256 secret", path)?;
            let trimmed = bytes.trim_ascii_end();
            auth = auth.with_hs256_secret(trimmed)?;
        }
        if let Some(path) = rs256_public_key {
            auth = auth.with_rs256_public_key(&read("the RS256 public key", path)?)?;
        }
        if let Some(path) = api_keys {
            let bytes = read("the API keys", path)?;
            auth = auth.with_api_keys(&String::from_utf8_lossy(&bytes))?;
        }
        if !auth.configured() {
            return Err(AuthConfigError::Nothing);
        }
        Ok(auth)
    }

    /// Whether any credential can be verified at all.
    pub fn configured(&self) -> bool {
        self.hs256.is_some() || self.rs256.is_some() || !self.api_keys.is_empty()
    }

    /// The caller of a request with `headers`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let text = value.to_str().unwrap_or_default();
            let token = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
                .ok_or_else(|| AuthError::InvalidToken("not a Bearer credential".into()))?;
            return self.verify_jwt(token.trim());
        }
        if let Some(value) = headers.get(API_KEY_HEADER) {
            let key = value.to_str().unwrap_or_default().trim();
            return self
                .api_keys
                .get(&digest(key))
                .cloned()
                .ok_or(AuthError::UnknownKey);
        }
        Err(AuthError::Missing)
    }

    fn verify_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |e: jsonwebtoken::errors::Error| AuthError::InvalidToken(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            AuthError::InvalidToken(format!("algorithm {:?} is not accepted", header.alg))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(invalid)?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::InvalidToken("empty `sub`".into()));
        }
        Ok(Principal::with_roles(claims.sub, claims.roles.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value, alg: Algorithm, key: &EncodingKey) -> String {
        encode(&Header::new(alg), &claims, key).unwrap()
    }

    fn exp() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    #[test]
    fn hs256_tokens_give_sub_and_roles() {
        let auth = Authenticator::default().with_hs256_secret(SECRET).unwrap();
        let key = EncodingKey::from_secret(SECRET);
        let t = token(
            serde_json::json!({"sub": "u-1", "exp": exp(), "roles": ["admin"]}),
            Algorithm::HS256,
            &key,
        );
        let p = auth.authenticate(&bearer(&t)).unwrap();
        assert_eq!(p.id, "u-1");
        assert!(p.admin && !p.internal);

        let t = token(
            serde_json::json!({"sub": "svc", "exp": exp(), "roles": "internal other"}),
            Algorithm::HS256,
            &key,
        );
        assert!(auth.authenticate(&bearer(&t)).unwrap().internal);
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = Authenticator::default().with_hs256_secret(SECRET).unwrap();
        let key = EncodingKey::from_secret(SECRET);
        let expired = token(
            serde_json::json!({"sub": "u", "exp": 1_000_000}),
            Algorithm::HS256,
            &key,
        );
        assert!(matches!(
            auth.authenticate(&bearer(&expired)),
            Err(AuthError::InvalidToken(_))
        ));
        let no_exp = token(serde_json::json!({"sub": "u"}), Algorithm::HS256, &key);
        assert!(auth.authenticate(&bearer(&no_exp)).is_err());
        let other = EncodingKey::from_secret(b"another secret of thirty-two bytes!!");
        let forged = token(
            serde_json::json!({"sub": "u", "exp": exp()}),
            Algorithm::HS256,
            &other,
        );
        assert!(auth.authenticate(&bearer(&forged)).is_err());
        // An algorithm without a configured key is refused before any verification.
        let hs384 = token(
            serde_json::json!({"sub": "u", "exp": exp()}),
            Algorithm::HS384,
            &key,
        );
        let err = auth.authenticate(&bearer(&hs384)).unwrap_err();
        assert!(err.to_string().contains("HS384"), "{err}");
        assert_eq!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert!(Authenticator::default()
            .with_hs256_secret(b"short")
            .is_err());
    }

    /// An RSA key pair made with the openssl CLI: (private PKCS#8 PEM, public SPKI PEM).
    fn rsa_pair() -> (Vec<u8>, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("tributary-rs256-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .current_dir(&dir)
                .args(args)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "k.pem",
        ]);
        run(&["pkey", "-in", "k.pem", "-pubout", "-out", "pub.pem"]);
        let pair = (
            std::fs::read(dir.join("k.pem")).unwrap(),
            std::fs::read(dir.join("pub.pem")).unwrap(),
        );
        let _ = std::fs::remove_dir_all(&dir);
        pair
    }

    #[test]
    fn rs256_tokens_verify_with_the_public_key_and_alg_cannot_be_switched() {
        let (private, public) = rsa_pair();
        let auth = Authenticator::default()
            .with_rs256_public_key(&public)
            .unwrap();
        let key = EncodingKey::from_rsa_pem(&private).unwrap();
        let t = token(
            serde_json::json!({"sub": "u-rs", "exp": exp(), "roles": ["internal"]}),
            Algorithm::RS256,
            &key,
        );
        let p = auth.authenticate(&bearer(&t)).unwrap();
        assert_eq!((p.id.as_str(), p.internal), ("u-rs", true));
        // The classic confusion: HS256 "signed" with the public key as the shared secret.
        let forged = token(
            serde_json::json!({"sub": "u-rs", "exp": exp(), "roles": ["internal"]}),
            Algorithm::HS256,
            &EncodingKey::from_secret(&public),
        );
        assert!(auth.authenticate(&bearer(&forged)).is_err());
        assert!(Authenticator::default()
            .with_rs256_public_key(b"not a key")
            .is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let auth = Authenticator::default()
            .with_hs256_secret(SECRET)
            .unwrap()
            .with_issuer(Some("https://id.example".into()))
            .with_audience(Some("tributary".into()));
        let key = EncodingKey::from_secret(SECRET);
        let good = token(
            serde_json::json!({"sub": "u", "exp": exp(), "iss": "https://id.example", "aud": "tributary"}),
            Algorithm::HS256,
            &key,
        );
        assert!(auth.authenticate(&bearer(&good)).is_ok());
        let wrong_aud = token(
            serde_json::json!({"sub": "u", "exp": exp(), "iss": "https://id.example", "aud": "other"}),
            Algorithm::HS256,
            &key,
        );
        assert!(auth.authenticate(&bearer(&wrong_aud)).is_err());
    }

    #[test]
    fn api_keys_from_a_file() {
        let text = "# principal key roles\n\
                    loadgen  k-0123456789abcdef01234567  internal\n\
                    ops k-abcdefabcdefabcdefabcdef admin,internal # the on-call\n\
                    \n\
                    shop k-shopshopshopshopshopshop\n";
        let auth = Authenticator::default().with_api_keys(text).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            API_KEY_HEADER,
            HeaderValue::from_static("k-abcdefabcdefabcdefabcdef"),
        );
        let p = auth.authenticate(&h).unwrap();
        assert_eq!((p.id.as_str(), p.admin, p.internal), ("ops", true, true));
        h.insert(
            API_KEY_HEADER,
            HeaderValue::from_static("k-shopshopshopshopshopshop"),
        );
        let p = auth.authenticate(&h).unwrap();
        assert!(!p.admin && !p.internal);
        h.insert(API_KEY_HEADER, HeaderValue::from_static("k-nope"));
        assert_eq!(auth.authenticate(&h), Err(AuthError::UnknownKey));

        let err = Authenticator::default()
            .with_api_keys("weak short")
            .unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(Authenticator::from_files(None, None, None).is_err());
    }
}
