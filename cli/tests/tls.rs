//! Kafka over TLS: a private nisshi broker serving TLS only (`--cert/--key`, a throwaway CA made
//! here with openssl), reached through `TRIBUTARY_KAFKA_*` properties, the way an operator
//! would configure any process. Needs librdkafka built with SSL (rdkafka's `ssl` feature) and
//! the broker binary the stack builds (`~/.cache/tributary/nisshi-<v>/bin/nisshi`, or
//! `TRIBUTARY_NISSHI_BIN`).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tributary_runtime::kafka::client_config_with;

fn nisshi() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIBUTARY_NISSHI_BIN") {
        return p.into();
    }
    let cache = Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/tributary");
    std::fs::read_dir(&cache)
        .expect("~/.cache/tributary exists (`make up` builds the broker there)")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/nisshi"))
        .find(|p| p.exists())
        .expect("a nisshi binary (run `make up` once, or set TRIBUTARY_NISSHI_BIN)")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn throwaway_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=tributary-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
}

/// The broker process; killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_tls_broker(dir: &Path, port: u16) -> Broker {
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("nisshi.log")).unwrap();
    let child = Command::new(nisshi())
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        // sqlite:// paths are relative to the working directory, the test's temporary one.
        .args([
            "--storage-engine",
            "sqlite://log.db",
            "--group-initial-rebalance-delay",
            "0s",
        ])
        .arg("--cert")
        .arg(dir.join("server.pem"))
        .arg("--key")
        .arg(dir.join("server.key"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("nisshi starts");
    let broker = Broker(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nisshi did not listen on {port}: {}",
            std::fs::read_to_string(dir.join("nisshi.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    broker
}

fn props(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_clients_over_tls_with_properties_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    throwaway_ca(dir.path());
    let port = free_port();
    let _broker = start_tls_broker(dir.path(), port);
    let brokers = format!("127.0.0.1:{port}");
    let ca = dir.path().join("ca.pem").display().to_string();
    let tls = props(&[
        ("security.protocol", "ssl".into()),
        ("ssl.ca.location", ca.clone()),
    ]);

    // A process configured only through the environment creates the pipeline's topics.
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "topics",
            "create",
            "--brokers",
            &brokers,
            "--topic-prefix",
            "tls.",
        ])
        .env("TRIBUTARY_KAFKA_SECURITY_PROTOCOL", "SSL")
        .env("TRIBUTARY_KAFKA_SSL_CA_LOCATION", &ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "topics create over TLS: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A record goes through and comes back over TLS.
    let admin: AdminClient<DefaultClientContext> =
        client_config_with(&brokers, &tls).create().unwrap();
    let topic = "tls-test";
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let created = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let producer: FutureProducer = client_config_with(&brokers, &tls).create().unwrap();
    producer
        .send(
            FutureRecord::to(topic).key("k").payload("over tls"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let consumer: BaseConsumer = client_config_with(&brokers, &tls)
        .set("group.id", "tls-test")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let payload = loop {
        assert!(Instant::now() < deadline, "no record back over TLS");
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            break m.unwrap().payload().unwrap().to_vec();
        }
    };
    assert_eq!(payload, b"over tls");

    // The listener takes TLS only, and only from a client that trusts its CA: plaintext and
    // an unknown CA both fail.
    let plain: BaseConsumer =
        client_config_with(&brokers, &props(&[("socket.timeout.ms", "3000".into())]))
            .create()
            .unwrap();
    assert!(
        plain.fetch_metadata(None, Duration::from_secs(5)).is_err(),
        "plaintext was served"
    );
    let other = tempfile::tempdir().unwrap();
    throwaway_ca(other.path());
    let untrusted = props(&[
        ("security.protocol", "ssl".into()),
        (
            "ssl.ca.location",
            other.path().join("ca.pem").display().to_string(),
        ),
    ]);
    let wrong: BaseConsumer = client_config_with(&brokers, &untrusted).create().unwrap();
    assert!(
        wrong.fetch_metadata(None, Duration::from_secs(5)).is_err(),
        "an unknown CA was trusted"
    );
}

/// The librdkafka built here takes SASL PLAIN and SCRAM over TLS: creating a client refuses
/// mechanisms the build lacks, so creation succeeding is the check (no broker is contacted).
#[test]
fn sasl_plain_and_scram_over_tls_are_built_in() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let cfg = props(&[
            ("security.protocol", "SASL_SSL".into()),
            ("sasl.mechanisms", mechanism.into()),
            ("sasl.username", "svc".into()),
            ("sasl.password", "pw".into()),
        ]);
        let created: Result<BaseConsumer, _> = client_config_with("127.0.0.1:1", &cfg).create();
        assert!(created.is_ok(), "{mechanism}: {:?}", created.err());
    }
    let gssapi = props(&[
        ("security.protocol", "SASL_SSL".into()),
        ("sasl.mechanisms", "GSSAPI".into()),
    ]);
    let created: Result<BaseConsumer, _> = client_config_with("127.0.0.1:1", &gssapi).create();
    assert!(
        created.is_err(),
        "GSSAPI needs rdkafka's gssapi feature, not enabled"
    );
}

/// Kills a process of the test when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pipeline end to end with every connection encrypted: the registry, the domain processors,
/// a PostgreSQL sink and the load generator talk to a TLS-only broker, configured through the
/// environment alone, and the sink writes to PostgreSQL with `sslmode=require`; the orders
/// reach their table, and every connection to the test's database is TLS.
#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_end_to_end_over_tls_to_the_broker_and_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    throwaway_ca(dir.path());
    let port = free_port();
    let _broker = start_tls_broker(dir.path(), port);
    let ca = dir.path().join("ca.pem").display().to_string();
    let registry_port = free_port();

    // A database of its own, reached over TLS only.
    let base = tributary_runtime::config::DATABASE_URL.get();
    let server = &base[..base.rfind('/').expect("a URL with a database")];
    let name = format!("tls_{}", uuid_like());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    let db = format!("{server}/{name}?sslmode=require");

    let env: Vec<(&str, String)> = vec![
        ("TRIBUTARY_KAFKA_BROKERS", format!("127.0.0.1:{port}")),
        ("TRIBUTARY_KAFKA_SECURITY_PROTOCOL", "SSL".into()),
        ("TRIBUTARY_KAFKA_SSL_CA_LOCATION", ca.clone()),
        (
            "TRIBUTARY_SCHEMA_REGISTRY_URL",
            format!("http://127.0.0.1:{registry_port}"),
        ),
        ("TRIBUTARY_DATABASE_URL", db.clone()),
    ];
    let command = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tributary"));
        c.args(args);
        for (k, v) in &env {
            c.env(k, v);
        }
        c
    };
    let spawn = |args: &[&str], log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).unwrap();
        Process(
            command(args)
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("process starts"),
        )
    };
    let run = |args: &[&str]| {
        let out = command(args).output().expect("runs");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };

    let listen = format!("127.0.0.1:{registry_port}");
    let _registry = spawn(&["registry", "--listen", &listen], "registry.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", registry_port)).is_err() {
        assert!(Instant::now() < deadline, "the registry did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    run(&["topics", "create"]);
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/avro");
    run(&["schemas", "register", "--dir", schemas]);
    let state = dir.path().join("state").display().to_string();
    let _processors = spawn(
        &["process", "--app", "all", "--state-dir", &state],
        "processors.log",
    );
    let _sink = spawn(&["sink", "--store", "postgres"], "sink.log");
    run(&[
        "loadgen",
        "--seed",
        "5",
        "--users",
        "5",
        "--products",
        "5",
        "--orders",
        "30",
        "--restock-share",
        "0",
        "--cancel-share",
        "0",
    ]);

    let pool = sqlx::PgPool::connect(&db)
        .await
        .expect("the test database over TLS");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let final_orders: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE status IN ('CONFIRMED', 'CANCELLED')",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        if final_orders == 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{final_orders} of 30 orders final in PostgreSQL; processors: {}; sink: {}",
            tail(&dir.path().join("processors.log")),
            tail(&dir.path().join("sink.log"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (connections, all_tls): (i64, bool) = sqlx::query_as(
        "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
    )
    .bind(&name)
    .fetch_one(&admin)
    .await
    .expect("connections");
    assert!(connections >= 2, "the sink's and the test's connections");
    assert!(all_tls, "every connection to {name} is TLS");
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
