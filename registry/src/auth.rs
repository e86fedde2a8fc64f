//! Who may read and change the registry: HTTP basic authentication against a users file, a
//! role per user, and a read-only mode.
//!
//! The users file has the format of Jetty's `PropertyFileLoginModule`, which Confluent's
//! registry reads for `authentication.method=BASIC`: one `user: password,role` per line, `#`
//! comments. Passwords are plain text (Jetty's `OBF:`/`MD5:`/`CRYPT:` forms are refused at
//! start rather than taken literally); keep the file readable by the registry only. Roles:
//!
//! | role | may |
//! |---|---|
//! | `read-only` | every `GET`, schema lookups (`POST /subjects/{s}`), compatibility checks |
//! | `write` | that, plus registering schemas and soft-deleting versions and subjects |
//! | `admin` | that, plus `PUT`/`DELETE /config…`, `PUT /mode` and permanent deletes |
//!
//! Without credentials: writes get 401; reads get 401 too unless anonymous reads are allowed
//! (a registry that consumers read freely while producers and operators authenticate). In
//! read-only mode every change is refused with 422/42205, whoever asks, and `GET /mode` says
//! `READONLY` (a replica, or a registry frozen during a migration).

use std::collections::HashMap;

use axum::http::{header, HeaderMap, Method};
use base64::Engine;
use sha2::{Digest, Sha256};

/// What a user may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    ReadOnly,
    Write,
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "read-only" | "readonly" | "read" => Some(Role::ReadOnly),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// The registry's users: name → (SHA-256 of the password, role).
#[derive(Clone, Default)]
pub struct Users(HashMap<String, ([u8; 32], Role)>);

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

fn digest(password: &str) -> [u8; 32] {
    Sha256::digest(password.as_bytes()).into()
}

impl Users {
    /// Parses a users file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut users = HashMap::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |m: &str| format!("users file line {}: {m}", n + 1);
            let (name, rest) = line
                .split_once(':')
                .ok_or_else(|| at("expected `user: password,role`"))?;
            let mut fields = rest.split(',').map(str::trim);
            let password = fields.next().unwrap_or_default();
            let name = name.trim();
            if name.is_empty() || password.is_empty() {
                return Err(at("empty user or password"));
            }
            if ["OBF:", "MD5:", "CRYPT:"]
                .iter()
                .any(|p| password.starts_with(p))
            {
                return Err(at("hashed or obfuscated passwords are not supported"));
            }
            let roles: Vec<&str> = fields.filter(|r| !r.is_empty()).collect();
            let role = match roles.as_slice() {
                [] => Role::ReadOnly,
                many => many
                    .iter()
                    .map(|r| Role::parse(r).ok_or_else(|| at(&format!("unknown role `{r}`"))))
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .max()
                    .unwrap_or(Role::ReadOnly),
            };
            if users
                .insert(name.to_string(), (digest(password), role))
                .is_some()
            {
                return Err(at(&format!("user `{name}` is given twice")));
            }
        }
        if users.is_empty() {
            return Err("the users file names no user".to_string());
        }
        Ok(Users(users))
    }

    /// Reads and parses the users file at `path`.
    pub fn from_file(path: &str) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the users file {path}: {e}"))?;
        Users::parse(&text)
    }
}

/// Who may do what. [`Access::open`] (no users) is the registry as it was: anyone may do
/// anything.
#[derive(Debug, Clone, Default)]
pub struct Access {
    users: Option<Users>,
    anonymous_reads: bool,
    read_only: bool,
}

/// Why a request is refused before its handler runs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    Unauthenticated,
    Forbidden { user: String, needs: Role },
    ReadOnly,
}

impl Access {
    /// No authentication, read-write.
    pub fn open() -> Access {
        Access::default()
    }

    /// Every request authenticates as one of `users`.
    pub fn with_users(mut self, users: Users) -> Access {
        self.users = Some(users);
        self
    }

    /// Reads need no credentials (writes still do).
    pub fn with_anonymous_reads(mut self, yes: bool) -> Access {
        self.anonymous_reads = yes;
        self
    }

    /// Refuse every change.
    pub fn with_read_only(mut self, yes: bool) -> Access {
        self.read_only = yes;
        self
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Decides a request by its method, path, query and `Authorization` header.
    pub(crate) fn check(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), Denied> {
        let needs = needed(method, path, query);
        if let Some(users) = &self.users {
            match credentials(headers) {
                Some((user, password)) => match users.0.get(&user) {
                    Some((hash, role)) if *hash == digest(&password) => {
                        if *role < needs {
                            return Err(Denied::Forbidden { user, needs });
                        }
                    }
                    _ => return Err(Denied::Unauthenticated),
                },
                None if needs == Role::ReadOnly && self.anonymous_reads => {}
                None => return Err(Denied::Unauthenticated),
            }
        }
        if self.read_only && needs > Role::ReadOnly {
            return Err(Denied::ReadOnly);
        }
        Ok(())
    }
}

impl Denied {
    pub(crate) fn message(&self, method: &Method, path: &str) -> String {
        match self {
            Denied::Unauthenticated => "Unauthorized".to_string(),
            Denied::Forbidden { user, needs } => format!(
                "User {user} is denied operation {method} {path}: it needs the {} role",
                needs.as_str()
            ),
            Denied::ReadOnly => "The registry is in read-only mode".to_string(),
        }
    }
}

/// The user and password of a `Basic` `Authorization` header.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The role a request needs. Anything not recognised as a read or a plain write needs admin,
/// so a route added later is closed until classified here.
fn needed(method: &Method, path: &str, query: Option<&str>) -> Role {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let permanent = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.eq_ignore_ascii_case("permanent=true"))
    });
    match (method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, _) => Role::ReadOnly,
        // Lookups and compatibility checks send a schema but change nothing.
        (&Method::POST, ["subjects", _]) | (&Method::POST, ["compatibility", ..]) => Role::ReadOnly,
        (&Method::POST, ["subjects", _, "versions"]) => Role::Write,
        (&Method::DELETE, ["subjects", _] | ["subjects", _, "versions", _]) if !permanent => {
            Role::Write
        }
        _ => Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(header::AUTHORIZATION, format!("Basic {v}").parse().unwrap());
        h
    }

    #[test]
    fn requests_are_classified() {
        use Role::*;
        let cases = [
            (Method::GET, "/subjects", None, ReadOnly),
            (Method::POST, "/subjects/a-value", None, ReadOnly),
            (
                Method::POST,
                "/compatibility/subjects/a/versions/latest",
                None,
                ReadOnly,
            ),
            (Method::POST, "/subjects/a-value/versions", None, Write),
            (Method::DELETE, "/subjects/a-value/versions/1", None, Write),
            (
                Method::DELETE,
                "/subjects/a-value",
                Some("permanent=true"),
                Admin,
            ),
            (Method::PUT, "/config", None, Admin),
            (Method::DELETE, "/config/a-value", None, Admin),
            (Method::PUT, "/mode", None, Admin),
            (Method::PATCH, "/anything", None, Admin),
        ];
        for (m, p, q, want) in cases {
            assert_eq!(needed(&m, p, q), want, "{m} {p} {q:?}");
        }
    }

    #[test]
    fn users_file_and_roles() {
        let users = Users::parse(
            "# user: password,role\nreader: r-pass\nci: ci-pass,write\nops: ops pass,admin\n",
        )
        .unwrap();
        let access = Access::open().with_users(users);
        let put = (Method::PUT, "/config");
        let register = (Method::POST, "/subjects/s/versions");
        let read = (Method::GET, "/subjects");
        let check = |(m, p): (Method, &str), h: &HeaderMap| access.check(&m, p, None, h);
        assert_eq!(
            check(read.clone(), &HeaderMap::new()),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(check(read.clone(), &basic("reader", "r-pass")), Ok(()));
        assert_eq!(
            check(read.clone(), &basic("reader", "wrong")),
            Err(Denied::Unauthenticated)
        );
        assert!(matches!(
            check(register.clone(), &basic("reader", "r-pass")),
            Err(Denied::Forbidden {
                needs: Role::Write,
                ..
            })
        ));
        assert_eq!(check(register.clone(), &basic("ci", "ci-pass")), Ok(()));
        assert!(check(put.clone(), &basic("ci", "ci-pass")).is_err());
        assert_eq!(check(put.clone(), &basic("ops", "ops pass")), Ok(()));

        let anon = access.clone().with_anonymous_reads(true);
        assert_eq!(
            anon.check(&Method::GET, "/subjects", None, &HeaderMap::new()),
            Ok(())
        );
        assert_eq!(
            anon.check(
                &Method::POST,
                "/subjects/s/versions",
                None,
                &HeaderMap::new()
            ),
            Err(Denied::Unauthenticated)
        );
        let frozen = access.with_read_only(true);
        assert_eq!(
            frozen.check(&Method::PUT, "/config", None, &basic("ops", "ops pass")),
            Err(Denied::ReadOnly)
        );

        assert!(Users::parse("x: MD5:abc,admin").is_err());
        assert!(Users::parse("x: y,superuser")
            .unwrap_err()
            .contains("superuser"));
        assert!(Users::parse("# nobody\n").is_err());
    }
}
