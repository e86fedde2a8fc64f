//! The stores over TLS with credentials, against real servers: the shared PostgreSQL (which
//! serves TLS: `ssl = on`), a redis-server and a SecantusDB of the test's own, each with a
//! throwaway CA and server certificate made by the `openssl` CLI. Elasticsearch: the local
//! server (noida-db) has neither TLS nor authentication, so the test checks what the client
//! sends (basic auth from the URL's userinfo, or an API key) on a plain socket, and that no
//! error carries the password.

mod runner_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::bson::{doc, Document};
use redis::AsyncCommands;
use runner_common::{eventually, free_port, OwnRedis, T0};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary_runtime::config::DATABASE_URL;
use tributary_runtime::kafka::unique_name;
use tributary_sinks::change::{Change, Op, ViewWriter, WriteError};
use tributary_sinks::elasticsearch::{self as es, EsSecurity, EsWriter};
use tributary_sinks::mongodb::MongoWriter;
use tributary_sinks::postgres::{PostgresConfig, PostgresWriter};
use tributary_sinks::redis::{RedisConfig, RedisWriter};

const WAIT: Duration = Duration::from_secs(30);

fn upsert(view: &'static str, key: &str, fields: serde_json::Value) -> Change {
    Change {
        view,
        key: key.into(),
        version: 1,
        event_time_ms: T0,
        op: Op::Upsert(fields.as_object().cloned().unwrap_or_default()),
    }
}

/// A CA and a server certificate for `127.0.0.1`/`localhost` signed by it, in `dir`.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) -> Certs {
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
            "/CN=tributary test CA",
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
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
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
            "ext.cnf",
        ],
    );
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

// ---- PostgreSQL ----

fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

#[tokio::test]
async fn postgres_writer_connects_with_sslmode_require_and_writes() {
    let config = PostgresConfig {
        url: with_param(&DATABASE_URL.get(), "sslmode=require"),
        schema: Some(unique_name("tls").replace('-', "_")),
        ..PostgresConfig::default()
    };
    let writer = PostgresWriter::connect(&config)
        .await
        .expect("PostgreSQL over TLS (sslmode=require) and migrated");
    let outcome = writer
        .write(&[upsert(
            "users",
            "u-tls",
            serde_json::json!({"display_name": "Tess", "email": "t@example.com"}),
        )])
        .await
        .expect("batch written over TLS");
    assert_eq!(outcome.applied, 1);

    let pool = writer.pool();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the sink's connection is encrypted");
    let row = sqlx::query("SELECT display_name FROM users WHERE id = 'u-tls'")
        .fetch_one(pool)
        .await
        .expect("the row is there");
    assert_eq!(row.get::<String, _>("display_name"), "Tess");

    // `verify-full` checks the server's certificate: the local cluster's is self-signed and not
    // in the system's roots, so the same server is refused (the TLS client does verify).
    let strict = PostgresConfig {
        url: with_param(&DATABASE_URL.get(), "sslmode=verify-full"),
        ..config.clone()
    };
    let refused = PostgresWriter::connect(&strict).await;
    assert!(refused.is_err(), "an unverifiable certificate is refused");

    if let Some(s) = &config.schema {
        sqlx::query(&format!("DROP SCHEMA \"{s}\" CASCADE"))
            .execute(pool)
            .await
            .expect("drop schema");
    }
}

// ---- Redis ----

const REDIS_USER: &str = "tributary-sink";
const REDIS_PASSWORD: &str = "s3cret-redis-pw";

#[tokio::test]
async fn redis_writer_over_tls_with_an_acl_user() {
    let dir = tempdir();
    let certs = make_certs(dir.path());
    let tls_port = free_port();
    let acl = format!(">{REDIS_PASSWORD}");
    // The plaintext port of `OwnRedis` stays bound (it waits on it); everything below goes to
    // the TLS port. `default` is disabled, so only the ACL user gets in.
    let tls_port_arg = tls_port.to_string();
    let _server = OwnRedis::start(&[
        "--tls-port",
        &tls_port_arg,
        "--tls-cert-file",
        path(&certs.cert),
        "--tls-key-file",
        path(&certs.key),
        "--tls-ca-cert-file",
        path(&certs.ca),
        "--tls-auth-clients",
        "no",
        "--user",
        REDIS_USER,
        "on",
        &acl,
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ])
    .await;
    let url = format!("rediss://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{tls_port}");
    let config = RedisConfig {
        url: url.clone(),
        ca_file: Some(path(&certs.ca).to_string()),
        prefix: unique_name("tls"),
        connection_timeout: Duration::from_secs(5),
        ..RedisConfig::default()
    };
    let writer = eventually("the TLS port to accept the ACL user", WAIT, || async {
        RedisWriter::connect(config.clone()).await.ok()
    })
    .await;
    let outcome = writer
        .write(&[upsert(
            "order",
            "o-tls",
            serde_json::json!({"status": "PLACED"}),
        )])
        .await
        .expect("batch written over TLS");
    assert_eq!(outcome.applied, 1);
    let mut conn = writer.connection();
    let status: Option<String> = conn
        .hget(writer.key("order", "o-tls"), "status")
        .await
        .expect("hget over TLS");
    assert_eq!(status.as_deref(), Some("PLACED"));
    let whoami: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut conn)
        .await
        .expect("acl whoami");
    assert_eq!(whoami, REDIS_USER);

    // A wrong password: refused, and the error names the URL without the password.
    let wrong = RedisConfig {
        url: format!("rediss://{REDIS_USER}:not-{REDIS_PASSWORD}@127.0.0.1:{tls_port}"),
        ..config.clone()
    };
    let e = RedisWriter::connect(wrong).await.err().expect("refused");
    assert!(!e.to_string().contains(REDIS_PASSWORD), "{e}");
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{tls_port}")),
        "{e}"
    );

    // Without the test CA the server's certificate is not trusted (the system's roots do not
    // have it): TLS verifies, it is not just encryption.
    let untrusted = RedisConfig {
        ca_file: None,
        ..config.clone()
    };
    assert!(RedisWriter::connect(untrusted).await.is_err());

    // Plaintext to the TLS port gets nowhere.
    let plain = RedisConfig {
        url: format!("redis://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{tls_port}"),
        ..config.clone()
    };
    assert!(RedisWriter::connect(plain).await.is_err());
}

// ---- MongoDB (SecantusDB) ----

const MONGO_USER: &str = "tributary-sink";
const MONGO_PASSWORD: &str = "s3cret-mongo-pw";

/// A SecantusDB of the test's own, TLS only, from the project's venv. Killed on drop.
struct OwnMongo(Child);

impl OwnMongo {
    async fn start(port: u16, storage: &Path, certs: &Certs, auth: bool) -> OwnMongo {
        let python = std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| {
            format!(
                "{}/.cache/tributary/venv/bin/python",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let server = Path::new(&python).with_file_name("secantusd-py");
        let mut cmd = Command::new(&server);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--storage-path", path(storage)])
            .args(["--tls-cert-file", path(&certs.cert)])
            .args(["--tls-key-file", path(&certs.key)])
            // The user made in the first run must survive its kill.
            .arg("--sync-on-commit")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if auth {
            cmd.arg("--auth");
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "{} (stack/stack.sh installs SecantusDB): {e}",
                server.display()
            )
        });
        let me = OwnMongo(child);
        eventually("the test's SecantusDB to listen", WAIT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        me
    }
}

impl Drop for OwnMongo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn mongodb_writer_over_tls_with_a_scram_user() {
    let dir = tempdir();
    let certs = make_certs(dir.path());
    let storage = dir.path().join("data");
    let port = free_port();
    let ca = path(&certs.ca).to_string();
    let tls = format!("tls=true&tlsCAFile={ca}&directConnection=true");

    // SecantusDB takes its users from a first run without `--auth`.
    {
        let _open = OwnMongo::start(port, &storage, &certs, false).await;
        let admin = MongoWriter::connect(&format!("mongodb://127.0.0.1:{port}/?{tls}"), "admin")
            .await
            .expect("client");
        admin
            .database()
            .run_command(doc! {
                "createUser": MONGO_USER, "pwd": MONGO_PASSWORD, "roles": ["root"],
            })
            .await
            .expect("createUser over TLS");
    }
    let _server = OwnMongo::start(port, &storage, &certs, true).await;
    let database = unique_name("tls").replace('-', "_");
    let url =
        format!("mongodb://{MONGO_USER}:{MONGO_PASSWORD}@127.0.0.1:{port}/?{tls}&authSource=admin");
    let writer = MongoWriter::connect(&url, &database).await.expect("client");
    let outcome = writer
        .write(&[upsert(
            "products",
            "p-tls",
            serde_json::json!({"name": "lamp"}),
        )])
        .await
        .expect("batch written over TLS as the SCRAM user");
    assert_eq!(outcome.applied, 1);
    let stored = writer
        .database()
        .collection::<Document>("products")
        .find_one(doc! {"_id": "p-tls"})
        .await
        .expect("read back")
        .expect("the document is there");
    assert_eq!(stored.get_str("name").ok(), Some("lamp"));

    // No credentials, or a wrong password: the write does not happen, and no error names the
    // password.
    for url in [
        format!("mongodb://127.0.0.1:{port}/?{tls}"),
        format!(
            "mongodb://{MONGO_USER}:not-{MONGO_PASSWORD}@127.0.0.1:{port}/?{tls}&authSource=admin"
        ),
    ] {
        let w = MongoWriter::connect(&url, &database).await.expect("client");
        let e = w
            .write(&[upsert(
                "products",
                "p-anon",
                serde_json::json!({"name": "x"}),
            )])
            .await
            .expect_err("refused");
        assert!(!e.to_string().contains(MONGO_PASSWORD), "{e}");
    }
    let anon = writer
        .database()
        .collection::<Document>("products")
        .find_one(doc! {"_id": "p-anon"})
        .await
        .expect("read back");
    assert!(anon.is_none(), "an unauthenticated write left nothing");
}

// ---- Elasticsearch ----

/// Answers `n` HTTP requests on a plain socket like an Elasticsearch root endpoint and hands
/// back each request's head (request line and headers).
async fn recording_server(n: usize) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut heads = Vec::new();
        while heads.len() < n {
            let Ok((mut socket, _)) = listener.accept().await else {
                break;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            heads.push(String::from_utf8_lossy(&buf).into_owned());
            let body = r#"{"docs":[]}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-elastic-product: Elasticsearch\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
        heads
    });
    (port, task)
}

fn authorization(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("authorization: ")
                .or_else(|| l.strip_prefix("Authorization: "))
        })
        .map(str::to_string)
}

/// One patch (the writer reads the stored document first with `_mget`: one request).
fn patch() -> Change {
    Change {
        op: Op::Patch(
            serde_json::json!({"name": "x"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
        ..upsert("products", "p1", serde_json::json!({}))
    }
}

#[tokio::test]
async fn elasticsearch_client_sends_url_credentials_or_an_api_key() {
    // Basic auth from the URL's userinfo, percent-decoded; the URL the client keeps has none.
    let (port, server) = recording_server(1).await;
    let client = es::connect::client_with(
        &format!("http://elastic:p%40ss-es-pw@127.0.0.1:{port}"),
        &EsSecurity::default(),
    )
    .expect("client");
    let _ = EsWriter::new(client, "t-").write(&[patch()]).await;
    let heads = server.await.expect("server");
    // base64("elastic:p@ss-es-pw")
    assert_eq!(
        authorization(&heads[0]).as_deref(),
        Some("Basic ZWxhc3RpYzpwQHNzLWVzLXB3"),
        "{}",
        heads[0]
    );

    // An API key wins over the userinfo.
    let (port, server) = recording_server(1).await;
    let client = es::connect::client_with(
        &format!("http://elastic:p%40ss-es-pw@127.0.0.1:{port}"),
        &EsSecurity {
            api_key: Some("aWQ6a2V5".into()),
            ca_file: None,
        },
    )
    .expect("client");
    let _ = EsWriter::new(client, "t-").write(&[patch()]).await;
    let heads = server.await.expect("server");
    assert_eq!(authorization(&heads[0]).as_deref(), Some("ApiKey aWQ6a2V5"));

    // A server that is down: the error names the server, never the password.
    let port = free_port();
    let writer = EsWriter::connect(
        &format!("http://elastic:p%40ss-es-pw@127.0.0.1:{port}"),
        "t-",
    )
    .expect("client");
    let e = writer.write(&[patch()]).await.expect_err("unreachable");
    assert!(matches!(e, WriteError::Unavailable { .. }), "{e}");
    let text = e.to_string();
    assert!(
        !text.contains("p%40ss-es-pw") && !text.contains("p@ss-es-pw"),
        "{text}"
    );
}

/// The local server ignores credentials, so this shows only that a URL carrying them (and the
/// userinfo taken out of it) still reaches the server and writes: the views are created, the
/// document is there.
#[tokio::test]
async fn elasticsearch_writer_with_url_credentials_writes_to_the_local_server() {
    let base = tributary_runtime::config::ELASTICSEARCH_URL.get();
    let mut url = elasticsearch::http::Url::parse(&base).expect("ELASTICSEARCH_URL");
    url.set_username("elastic").expect("userinfo");
    url.set_password(Some("p@ss-es-pw")).expect("userinfo");
    let prefix = format!("{}-", unique_name("tributary-test-creds"));
    let writer = EsWriter::connect(url.as_str(), prefix.clone()).expect("client");
    es::migrate(writer.client(), &prefix)
        .await
        .expect("migrate");
    let outcome = writer
        .write(&[upsert(
            "products",
            "p-creds",
            serde_json::json!({"name": "lamp", "stock": 5}),
        )])
        .await;
    let found = match &outcome {
        Ok(_) => {
            let reply = writer
                .client()
                .send(
                    elasticsearch::http::Method::Get,
                    &format!("/{}/_doc/p-creds", writer.alias("products")),
                    elasticsearch::http::headers::HeaderMap::new(),
                    Option::<&()>::None,
                    Option::<String>::None,
                    None,
                )
                .await
                .expect("get");
            reply.json::<serde_json::Value>().await.unwrap_or_default()["found"] == true
        }
        Err(_) => false,
    };
    let _ = es::indices::drop_all(writer.client(), &prefix).await;
    assert_eq!(outcome.expect("written").applied, 1);
    assert!(found, "the document is in the server");
}
