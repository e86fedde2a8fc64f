//! No password of a store or registry URL reaches a log line or an error: each command runs
//! as a user would, at debug level, with a password in its URL and nothing listening at the
//! address, so it logs its attempts and fails with an error naming where it tried.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `tributary args` with `env` for at most `limit`; everything it wrote to stdout/stderr.
fn run(args: &[&str], env: &[(&str, &str)], limit: Duration) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("the tributary binary runs");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(&out).unwrap() + &std::fs::read_to_string(&err).unwrap()
}

#[test]
fn passwords_in_urls_appear_in_no_log_line_or_error() {
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/avro");
    // Nothing listens on port 1 of loopback.
    let cases: [(&str, Vec<&str>); 5] = [
        (
            "pg-pw-0x51",
            vec![
                "sink",
                "--store",
                "postgres",
                "--url",
                "postgres://app:pg-pw-0x51@127.0.0.1:1/db",
            ],
        ),
        (
            "redis-pw-0x52",
            vec![
                "sink",
                "--store",
                "redis",
                "--url",
                "redis://default:redis-pw-0x52@127.0.0.1:1",
            ],
        ),
        (
            "mongo-pw-0x53",
            vec![
                "sink",
                "--store",
                "mongodb",
                "--url",
                "mongodb://u:mongo-pw-0x53@127.0.0.1:1/?serverSelectionTimeoutMS=1000",
            ],
        ),
        (
            "es-pw-0x54",
            vec![
                "sink",
                "--store",
                "elasticsearch",
                "--url",
                "http://elastic:es-pw-0x54@127.0.0.1:1",
            ],
        ),
        (
            "reg-pw-0x55",
            vec![
                "schemas",
                "check",
                "--registry",
                "http://ci:reg-pw-0x55@127.0.0.1:1",
                "--dir",
                schemas,
            ],
        ),
    ];
    for (password, args) in &cases {
        let output = run(args, &[], Duration::from_secs(60));
        assert!(
            output.contains("error:") && output.contains("127.0.0.1:1"),
            "`{}` failed naming the address it tried:\n{output}",
            args.join(" ")
        );
        assert!(
            !output.contains(password),
            "`{}` printed its password:\n{output}",
            args.join(" ")
        );
    }
}

/// `TRIBUTARY_KAFKA_<PROPERTY>` reaches the process's Kafka clients: a bad value is refused by
/// librdkafka, naming the property; the log names the properties taken, never their values.
#[test]
fn kafka_properties_from_the_environment_reach_the_clients() {
    let output = run(
        &["topics", "create", "--brokers", "127.0.0.1:1"],
        &[
            ("TRIBUTARY_KAFKA_SECURITY_PROTOCOL", "not-a-protocol"),
            ("TRIBUTARY_KAFKA_SASL_PASSWORD", "kafka-pw-0x56"),
        ],
        Duration::from_secs(60),
    );
    assert!(
        output.contains("security.protocol") && output.contains("not-a-protocol"),
        "{output}"
    );
    assert!(
        output.contains("sasl.password"),
        "the property is named:\n{output}"
    );
    assert!(!output.contains("kafka-pw-0x56"), "{output}");
}

/// `--help` names the variables a flag is read from, never their values: credentials
/// (`--registry-auth`, `--elasticsearch-api-key`) and URLs that carry passwords.
#[test]
fn help_shows_no_value_of_a_secret_variable() {
    // (variable, value, the secret in the value)
    let secrets = [
        (
            "TRIBUTARY_SCHEMA_REGISTRY_AUTH",
            "ci:reg-auth-0x57",
            "reg-auth-0x57",
        ),
        (
            "TRIBUTARY_SCHEMA_REGISTRY_URL",
            "http://ci:reg-url-0x58@127.0.0.1:1",
            "reg-url-0x58",
        ),
        (
            "TRIBUTARY_ELASTICSEARCH_API_KEY",
            "es-api-key-0x59",
            "es-api-key-0x59",
        ),
        (
            "TRIBUTARY_DATABASE_URL",
            "postgres://app:pg-url-0x5a@127.0.0.1:1/db",
            "pg-url-0x5a",
        ),
        (
            "TRIBUTARY_REDIS_URL",
            "redis://:redis-url-0x5b@127.0.0.1:1",
            "redis-url-0x5b",
        ),
    ];
    let env: Vec<(&str, &str)> = secrets
        .iter()
        .map(|(var, value, _)| (*var, *value))
        .collect();
    for command in [
        &["sink"][..],
        &["process"],
        &["gateway"],
        &["schemas", "check"],
    ] {
        let args = [command, &["--help"]].concat();
        let output = run(&args, &env, Duration::from_secs(60));
        assert!(
            output.contains("TRIBUTARY_SCHEMA_REGISTRY_AUTH"),
            "`{}` names the variable:\n{output}",
            args.join(" ")
        );
        for (var, _, secret) in &secrets {
            assert!(
                !output.contains(secret),
                "`{}` printed the value of {var}:\n{output}",
                args.join(" ")
            );
        }
    }
}
