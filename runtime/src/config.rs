//! Service addresses. Every variable has a loopback default so that a process started without
//! configuration talks to the local stack that `make up` starts; `stack/env.sh` holds the same
//! defaults for the shell side (a test below keeps the two in step).
//!
//! The environment is read at the binary's edge only: `tributary` (`cli/`) turns these variables
//! into flags' defaults and passes the values down through config structs; a library's
//! constructor defaults to the loopback `default` and never calls [`Setting::get`] (a test below
//! checks the libraries' sources), so a library behaves the same under a test, a bench and the
//! binary. Tests read the variables themselves, to reach the stack they run against.

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
    /// The value from the environment, or the default when unset or empty. For the binary and
    /// tests; libraries take the value from their caller.
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

    /// Libraries never read the environment: the binary (`cli/`) does, and passes values down.
    /// Scans the libraries' sources up to their test module (`#[cfg(test)]`, at the end of a
    /// file by this workspace's convention); tests, benches and examples may read variables.
    #[test]
    fn only_the_binary_reads_the_environment() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let libraries = [
            "runtime/src",
            "schemas/src",
            "registry/src",
            "producers/src",
            "processors/streams/src",
            "processors/domain/src",
            "sinks/src",
        ];
        // Library files allowed to read the environment: none is to be added.
        let pending = [
            "runtime/src/config.rs", // `Setting::get` itself, the binary's reader.
        ];
        let mut reads = ALL
            .iter()
            .map(|s| format!("{}.get()", s.var.trim_start_matches("TRIBUTARY_")))
            .collect::<Vec<_>>();
        reads.push("env::var".to_string());
        let mut found = Vec::new();
        let mut dirs: Vec<std::path::PathBuf> = libraries.iter().map(|d| root.join(d)).collect();
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).expect("library source dir is readable");
            for entry in entries {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let rel = path
                    .strip_prefix(root)
                    .expect("under the root")
                    .to_string_lossy()
                    .replace('\\', "/");
                if pending.contains(&rel.as_str()) {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source is readable");
                for (n, line) in text.lines().enumerate() {
                    let code = line.trim_start();
                    if code.starts_with("#[cfg(test)]") {
                        break;
                    }
                    if code.starts_with("//") {
                        continue;
                    }
                    if reads.iter().any(|r| code.contains(r.as_str())) {
                        found.push(format!("{rel}:{}: {code}", n + 1));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "libraries read the environment (take the value from the caller; the binary reads it):\n{}",
            found.join("\n")
        );
    }

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
