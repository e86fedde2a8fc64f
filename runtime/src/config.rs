//! Service addresses. Every variable has a loopback default so that a process started without
//! configuration talks to the local stack that `make up` starts; `stack/env.sh` holds the same
//! defaults for the shell side (a test below keeps the two in step).

use std::env;

/// One service address: the environment variable that overrides it and its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub var: &'static str,
    pub default: &'static str,
}

pub const KAFKA_BROKERS: Setting = Setting {
    var: "TRIBUTARY_KAFKA_BROKERS",
    default: "127.0.0.1:9092",
};
pub const SCHEMA_REGISTRY_URL: Setting = Setting {
    var: "TRIBUTARY_SCHEMA_REGISTRY_URL",
    default: "http://127.0.0.1:8081",
};
pub const DATABASE_URL: Setting = Setting {
    var: "TRIBUTARY_DATABASE_URL",
    default: "postgres://root@127.0.0.1:5432/tributary",
};
pub const MONGODB_URL: Setting = Setting {
    var: "TRIBUTARY_MONGODB_URL",
    default: "mongodb://127.0.0.1:27017",
};
pub const REDIS_URL: Setting = Setting {
    var: "TRIBUTARY_REDIS_URL",
    default: "redis://127.0.0.1:6379",
};
pub const ELASTICSEARCH_URL: Setting = Setting {
    var: "TRIBUTARY_ELASTICSEARCH_URL",
    default: "http://127.0.0.1:9200",
};

/// All settings, in the order they are documented.
pub const ALL: [Setting; 6] = [
    KAFKA_BROKERS,
    SCHEMA_REGISTRY_URL,
    DATABASE_URL,
    MONGODB_URL,
    REDIS_URL,
    ELASTICSEARCH_URL,
];

impl Setting {
    /// The value from the environment, or the default when unset or empty.
    pub fn get(&self) -> String {
        match env::var(self.var) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => self.default.to_string(),
        }
    }
}

/// The addresses of every service a Tributary process may talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub kafka_brokers: String,
    pub schema_registry_url: String,
    pub database_url: String,
    pub mongodb_url: String,
    pub redis_url: String,
    pub elasticsearch_url: String,
}

impl Endpoints {
    pub fn from_env() -> Self {
        Endpoints {
            kafka_brokers: KAFKA_BROKERS.get(),
            schema_registry_url: SCHEMA_REGISTRY_URL.get(),
            database_url: DATABASE_URL.get(),
            mongodb_url: MONGODB_URL.get(),
            redis_url: REDIS_URL.get(),
            elasticsearch_url: ELASTICSEARCH_URL.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stack/env.sh` must default every variable to the same value as this module, so the
    /// shell scripts start services exactly where the binaries look for them.
    #[test]
    fn shell_defaults_match() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../stack/env.sh");
        let text = std::fs::read_to_string(path).expect("stack/env.sh is readable");
        for s in ALL {
            let needle = format!("{}=\"${{{}:-{}}}\"", s.var, s.var, s.default);
            assert!(
                text.contains(&needle),
                "stack/env.sh lacks `{needle}` (default of {} differs or is missing)",
                s.var
            );
        }
    }
}
