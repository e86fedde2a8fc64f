//! Basic authentication, roles and the read-only mode, over HTTP, with Confluent's Python
//! client and the pipeline's own codec as the callers. The registries run in memory: no broker.

use apache_avro::types::Value as Avro;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tributary_registry::{start_in_memory_with, Access, Compatibility, RunningRegistry, Users};
use tributary_schemas::{Codec, RegistryEndpoint};

const USERS: &str = "# user: password,role\n\
                     reader: reader-pass,read-only\n\
                     ci: ci-pass,write\n\
                     ops: ops-pass,admin\n";
const SCHEMA: &str = r#"{"type":"record","name":"T","namespace":"tributary.test","fields":[{"name":"a","type":"long"}]}"#;

async fn registry(access: Access) -> (RunningRegistry, String) {
    let reg = start_in_memory_with(
        "127.0.0.1:0".parse().unwrap(),
        Compatibility::Backward,
        access,
    )
    .await
    .unwrap();
    let base = format!("http://{}", reg.addr);
    (reg, base)
}

fn secured() -> Access {
    Access::open().with_users(Users::parse(USERS).unwrap())
}

/// Sends `method path` with `body` as `user` (`None`: no credentials); status, `error_code`.
async fn call(
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    user: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json");
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some((u, p)) = user {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED {
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic"),
            "a 401 names the scheme"
        );
    }
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn writes_need_credentials_and_the_right_role() {
    let (reg, base) = registry(secured()).await;
    let schema = || Some(json!({ "schema": SCHEMA }));
    let register = "/subjects/t-value/versions";
    let (reader, ci, ops) = (
        Some(("reader", "reader-pass")),
        Some(("ci", "ci-pass")),
        Some(("ops", "ops-pass")),
    );

    // Without credentials, or with a wrong password: 401 for writes and reads alike.
    let (s, b) = call(&base, Method::POST, register, schema(), None).await;
    assert_eq!(
        (s, b["error_code"].clone()),
        (StatusCode::UNAUTHORIZED, json!(401))
    );
    let (s, _) = call(
        &base,
        Method::POST,
        register,
        schema(),
        Some(("ci", "nope")),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(&base, Method::GET, "/subjects", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(
        &base,
        Method::PUT,
        "/config",
        Some(json!({"compatibility": "NONE"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // read-only reads, and may not register.
    let (s, b) = call(&base, Method::GET, "/subjects", None, reader).await;
    assert_eq!((s, b), (StatusCode::OK, json!([])));
    let (s, b) = call(&base, Method::POST, register, schema(), reader).await;
    assert_eq!(
        (s, b["error_code"].clone()),
        (StatusCode::FORBIDDEN, json!(40301))
    );

    // write registers and soft-deletes, but may not change the level or delete for good.
    let (s, b) = call(&base, Method::POST, register, schema(), ci).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = call(
        &base,
        Method::PUT,
        "/config",
        Some(json!({"compatibility": "NONE"})),
        ci,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(&base, Method::DELETE, "/subjects/t-value", None, ci).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &base,
        Method::DELETE,
        "/subjects/t-value?permanent=true",
        None,
        ci,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The level is unchanged by the refused PUT; admin changes it and deletes for good.
    let (_, b) = call(&base, Method::GET, "/config", None, reader).await;
    assert_eq!(b["compatibilityLevel"], "BACKWARD");
    let (s, _) = call(
        &base,
        Method::PUT,
        "/config",
        Some(json!({"compatibility": "FULL"})),
        ops,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call(
        &base,
        Method::DELETE,
        "/subjects/t-value?permanent=true",
        None,
        ops,
    )
    .await;
    assert_eq!((s, b), (StatusCode::OK, json!([1])));
    reg.shutdown().await;
}

#[tokio::test]
async fn anonymous_reads_and_read_only_mode() {
    let (reg, base) = registry(secured().with_anonymous_reads(true)).await;
    let (s, _) = call(
        &base,
        Method::POST,
        "/subjects/t-value/versions",
        Some(json!({"schema": SCHEMA})),
        Some(("ci", "ci-pass")),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call(&base, Method::GET, "/subjects", None, None).await;
    assert_eq!((s, b), (StatusCode::OK, json!(["t-value"])));
    // A lookup sends a body but is a read.
    let (s, b) = call(
        &base,
        Method::POST,
        "/subjects/t-value",
        Some(json!({"schema": SCHEMA})),
        None,
    )
    .await;
    assert_eq!((s, b["version"].clone()), (StatusCode::OK, json!(1)));
    let (s, _) = call(
        &base,
        Method::POST,
        "/subjects/u-value/versions",
        Some(json!({"schema": SCHEMA})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    reg.shutdown().await;

    let (reg, base) = registry(secured().with_read_only(true)).await;
    let (s, b) = call(
        &base,
        Method::POST,
        "/subjects/t-value/versions",
        Some(json!({"schema": SCHEMA})),
        Some(("ops", "ops-pass")),
    )
    .await;
    assert_eq!(
        (s, b["error_code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!(42205))
    );
    let (_, b) = call(
        &base,
        Method::GET,
        "/mode",
        None,
        Some(("reader", "reader-pass")),
    )
    .await;
    assert_eq!(b["mode"], "READONLY");
    let (_, b) = call(
        &base,
        Method::GET,
        "/subjects",
        None,
        Some(("ops", "ops-pass")),
    )
    .await;
    assert_eq!(b, json!([]), "nothing was registered");
    reg.shutdown().await;
}

/// The pipeline's codec registers and reads through a secured registry with credentials from
/// the URL's userinfo, and fails without them.
#[tokio::test]
async fn the_codec_sends_credentials() {
    let (reg, base) = registry(secured()).await;
    let value = || Avro::Record(vec![("a".to_string(), Avro::Long(7))]);
    let with = Codec::with_endpoint(&RegistryEndpoint::parse(
        &base.replace("http://", "http://ci:ci-pass@"),
        None,
    ));
    let bytes = with.encode_value("t", SCHEMA, value()).await.unwrap();
    let reader = Codec::with_endpoint(&RegistryEndpoint::parse(&base, Some("reader:reader-pass")));
    let back = reader.decode_value(&bytes, None).await.unwrap();
    assert_eq!(back.value, value());

    let without = Codec::with_endpoint(&RegistryEndpoint::parse(&base, None));
    let err = without
        .encode_value("u", SCHEMA, value())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    reg.shutdown().await;
}

/// The virtualenv's Python, if confluent-kafka is importable there.
fn python() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("TRIBUTARY_PYTHON") {
        Some(p) => p.into(),
        None => std::path::Path::new(&std::env::var_os("HOME")?)
            .join(".cache/tributary/venv/bin/python"),
    };
    let importable = std::process::Command::new(&path)
        .args(["-c", "import confluent_kafka.schema_registry.avro"])
        .output()
        .is_ok_and(|o| o.status.success());
    importable.then_some(path)
}

const PYTHON_CLIENT: &str = r#"
import sys
from confluent_kafka.schema_registry import SchemaRegistryClient, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

url, schema = sys.argv[1], sys.argv[2]
anonymous = SchemaRegistryClient({"url": url})
try:
    anonymous.register_schema("py-value", Schema(schema, "AVRO"))
    raise AssertionError("registered without credentials")
except SchemaRegistryError as e:
    assert e.http_status_code == 401, e
writer = SchemaRegistryClient({"url": url, "basic.auth.user.info": "ci:ci-pass"})
sid = writer.register_schema("py-value", Schema(schema, "AVRO"))
reader = SchemaRegistryClient({"url": url, "basic.auth.user.info": "reader:reader-pass"})
assert reader.get_schema(sid).schema_str == schema
assert reader.get_latest_version("py-value").schema_id == sid
try:
    reader.register_schema("py2-value", Schema(schema, "AVRO"))
    raise AssertionError("a read-only user registered")
except SchemaRegistryError as e:
    assert (e.http_status_code, e.error_code) == (403, 40301), e
print("ok")
"#;

#[tokio::test]
async fn python_confluent_client_with_basic_auth_user_info() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED: no Python with confluent-kafka at ~/.cache/tributary/venv (`make up` \
             installs it; or set TRIBUTARY_PYTHON)"
        );
        return;
    };
    let (reg, base) = registry(secured()).await;
    let output = tokio::process::Command::new(python)
        .args(["-c", PYTHON_CLIENT, &base, SCHEMA])
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    // What the client registered is there for an authenticated reader.
    let (s, b) = call(
        &base,
        Method::GET,
        "/subjects",
        None,
        Some(("reader", "reader-pass")),
    )
    .await;
    assert_eq!((s, b), (StatusCode::OK, json!(["py-value"])));
    reg.shutdown().await;
}
