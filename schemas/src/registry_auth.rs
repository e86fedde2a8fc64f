//! Credentials for the schema registry, the way Confluent's clients take them.
//!
//! Confluent's serializers read `basic.auth.credentials.source`: `URL` takes the user and
//! password from the registry URL's userinfo (`https://user:pass@registry:8081`), `USER_INFO`
//! from `basic.auth.user.info=user:password`. Both work here, with no source to choose: the
//! URL's userinfo when it has one, else the `user:password` given beside it
//! ([`RegistryEndpoint::parse`]). The userinfo is taken out of the URL before any request, so
//! the URL can be printed.
//!
//! This crate never reads the environment: the binary reads `TRIBUTARY_SCHEMA_REGISTRY_AUTH`
//! (`--registry-auth`) and hands the credentials down as the registry URL's userinfo
//! ([`RegistryEndpoint::userinfo_url`]), so every library that takes a registry URL gets them.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use schema_registry_converter::async_impl::schema_registry::SrSettings;

/// `user:password` for the registry, like Confluent's `basic.auth.user.info`: the variable the
/// binary reads for `--registry-auth`.
pub const REGISTRY_AUTH_VAR: &str = "TRIBUTARY_SCHEMA_REGISTRY_AUTH";

/// What a user name or password keeps unencoded in a userinfo: RFC 3986's unreserved
/// characters. Everything else (`:`, `@`, `/`, `%`, ...) is percent-encoded, so that
/// [`RegistryEndpoint::parse`] reads back exactly the credentials put in.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A registry URL without userinfo, and the basic-auth credentials, if any.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryEndpoint {
    /// The URL without userinfo and trailing `/`: safe to print.
    pub url: String,
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for RegistryEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryEndpoint")
            .field("url", &self.url)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .finish()
    }
}

fn split_user_info(info: &str) -> (String, String) {
    let (user, password) = info.split_once(':').unwrap_or((info, ""));
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    (decode(user), decode(password))
}

impl RegistryEndpoint {
    /// `url`'s userinfo, or else `user_info` (`user:password`), as the credentials.
    pub fn parse(url: &str, user_info: Option<&str>) -> RegistryEndpoint {
        let url = url.trim().trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (from_url, host) = match authority.rsplit_once('@') {
            Some((info, host)) => (Some(split_user_info(info)), host),
            None => (None, authority),
        };
        let url = if scheme.is_empty() {
            format!("{host}{path}")
        } else {
            format!("{scheme}://{host}{path}")
        };
        let credentials = from_url.or_else(|| {
            user_info
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(split_user_info)
        });
        RegistryEndpoint { url, credentials }
    }

    /// The URL with the credentials as its userinfo, percent-encoded: what
    /// [`RegistryEndpoint::parse`] turns back into this endpoint. It holds the password, so it
    /// is for handing down to a codec, never for printing (print [`RegistryEndpoint::url`]).
    pub fn userinfo_url(&self) -> String {
        let Some((user, password)) = &self.credentials else {
            return self.url.clone();
        };
        let user = utf8_percent_encode(user, USERINFO);
        let password = utf8_percent_encode(password, USERINFO);
        match self.url.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://{user}:{password}@{rest}"),
            None => format!("{user}:{password}@{}", self.url),
        }
    }

    /// The converter's settings: the URL, with basic auth when there are credentials.
    pub fn settings(&self) -> SrSettings {
        let Some((user, password)) = &self.credentials else {
            return SrSettings::new(self.url.clone());
        };
        SrSettings::new_builder(self.url.clone())
            .set_basic_authorization(user, Some(password))
            .build()
            .unwrap_or_else(|e| {
                // Only the HTTP client's construction can fail here; without credentials the
                // registry answers 401, which names the problem.
                tracing::warn!("building the registry client with credentials failed: {e}");
                SrSettings::new(self.url.clone())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_the_url_or_the_user_info() {
        let e = RegistryEndpoint::parse("https://ci:s%40cret@reg.example:8081/", None);
        assert_eq!(e.url, "https://reg.example:8081");
        assert_eq!(e.credentials, Some(("ci".into(), "s@cret".into())));
        assert!(!format!("{e:?}").contains("cret"));

        let e = RegistryEndpoint::parse("http://127.0.0.1:8081", Some("reader:pw:with:colons"));
        assert_eq!(e.url, "http://127.0.0.1:8081");
        assert_eq!(
            e.credentials,
            Some(("reader".into(), "pw:with:colons".into()))
        );

        let e = RegistryEndpoint::parse("http://u:p@h/x", Some("other:one"));
        assert_eq!(
            e.credentials,
            Some(("u".into(), "p".into())),
            "the URL wins"
        );
        assert_eq!(e.url, "http://h/x");

        let e = RegistryEndpoint::parse("http://h:8081", Some(""));
        assert_eq!(e.credentials, None);
    }

    #[test]
    fn the_userinfo_url_parses_back_to_the_same_endpoint() {
        for (url, user_info) in [
            ("https://reg.example:8081/sr/", Some("ci:p@ss/w:rd?#%")),
            ("http://127.0.0.1:8081", Some("r\u{e9}ader:pw")),
            ("reg.example:8081", Some("u:p")),
            ("http://u:p@h/x", Some("other:one")),
            ("http://h:8081", None),
        ] {
            let e = RegistryEndpoint::parse(url, user_info);
            let folded = e.userinfo_url();
            assert_eq!(RegistryEndpoint::parse(&folded, None), e, "{folded}");
        }
        let e = RegistryEndpoint::parse("http://h:8081", None);
        assert_eq!(e.userinfo_url(), "http://h:8081");
    }
}
