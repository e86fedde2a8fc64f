//! The schema registry's address and credentials ([`RegistryArgs`], flattened into every command
//! that talks to the registry): `--registry` and `--registry-auth`.
//!
//! The credentials are handed down as the URL's userinfo ([`RegistryArgs::url`]) rather than as
//! a field of their own: every library takes the registry as a URL string (`Codec::new`,
//! `DomainConfig::registry_url`, ...), and `RegistryEndpoint::parse` already takes credentials
//! from a URL's userinfo and strips them before any request or printing. So no config struct
//! changes, and the password travels as it does in every store URL here: a printed URL goes
//! through `tributary_runtime::redact` (and every log line and the final error are redacted in
//! `main`).

use clap::Args as ClapArgs;
use tributary_runtime::config::SCHEMA_REGISTRY_URL;
use tributary_schemas::registry_auth::REGISTRY_AUTH_VAR;
use tributary_schemas::RegistryEndpoint;

/// Where the schema registry is, and who to be there.
#[derive(ClapArgs, Clone)]
pub struct RegistryArgs {
    /// Schema registry URL; credentials as its userinfo (`https://user:pass@host`) or in
    /// `--registry-auth`.
    #[arg(
        long,
        env = "TRIBUTARY_SCHEMA_REGISTRY_URL",
        default_value = SCHEMA_REGISTRY_URL.default,
        hide_env_values = true
    )]
    registry: String,
    /// `user:password` for the schema registry (like Confluent's `basic.auth.user.info`); the
    /// URL's userinfo wins over it.
    #[arg(
        long,
        env = REGISTRY_AUTH_VAR,
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    registry_auth: Option<String>,
}

impl RegistryArgs {
    /// The registry URL without credentials, and the credentials.
    pub fn endpoint(&self) -> RegistryEndpoint {
        RegistryEndpoint::parse(&self.registry, self.registry_auth.as_deref())
    }

    /// The registry URL to hand to a codec or a library's config: the credentials, if any, in
    /// its userinfo. It holds the password: print [`RegistryArgs::endpoint`]'s `url` instead.
    pub fn url(&self) -> String {
        self.endpoint().userinfo_url()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        registry: RegistryArgs,
    }

    #[test]
    fn the_credentials_ride_in_the_url() {
        let cli = Cli::try_parse_from([
            "t",
            "--registry",
            "http://reg:8081",
            "--registry-auth",
            "ci:p@ss",
        ])
        .expect("parses");
        let endpoint = cli.registry.endpoint();
        assert_eq!(endpoint.url, "http://reg:8081");
        assert_eq!(
            endpoint.credentials,
            Some(("ci".to_string(), "p@ss".to_string()))
        );
        assert_eq!(
            RegistryEndpoint::parse(&cli.registry.url(), None),
            endpoint,
            "a codec given the URL gets the credentials"
        );
    }
}
