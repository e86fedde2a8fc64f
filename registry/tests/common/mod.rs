//! Shared helpers: a registry on its own topic of the broker at `TRIBUTARY_KAFKA_BROKERS`, and
//! a small HTTP client speaking to it the way Confluent clients do.

#![allow(dead_code)] // each test binary uses a different subset

use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tributary_registry::{start, RegistryConfig, RunningRegistry};
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::unique_name;

pub const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub fn fresh_topic() -> String {
    unique_name("_schemas-test")
}

pub fn config(topic: &str) -> RegistryConfig {
    let mut config = RegistryConfig::new(
        "127.0.0.1:0".parse().expect("a socket address"),
        KAFKA_BROKERS.get(),
    );
    config.topic = topic.to_string();
    config
}

/// Starts a registry and returns it with how long start-up took.
pub async fn start_timed(config: RegistryConfig) -> (Registry, Duration) {
    let started = Instant::now();
    let running = start(config).await.expect("the registry starts");
    let elapsed = started.elapsed();
    (Registry::new(running), elapsed)
}

/// A registry on a topic of its own.
pub async fn registry() -> Registry {
    start_timed(config(&fresh_topic())).await.0
}

pub struct Registry {
    pub running: RunningRegistry,
    pub base: String,
    pub http: reqwest::Client,
}

/// A response: status, `Content-Type` and the body parsed as JSON (`Value::Null` if it is not).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub text: String,
    pub json: Value,
}

impl Answer {
    /// Confluent's `error_code`, or 0 for a success.
    pub fn code(&self) -> i64 {
        self.json["error_code"].as_i64().unwrap_or(0)
    }

    pub fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or_default()
    }

    #[track_caller]
    pub fn expect_ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "unexpected answer {self:?}");
        &self.json
    }

    #[track_caller]
    pub fn expect_error(&self, status: u16, code: i64) -> &str {
        assert_eq!(self.status.as_u16(), status, "unexpected answer {self:?}");
        assert_eq!(self.code(), code, "unexpected answer {self:?}");
        self.message()
    }
}

impl Registry {
    pub fn new(running: RunningRegistry) -> Self {
        let base = format!("http://{}", running.addr);
        Registry {
            running,
            base,
            http: reqwest::Client::new(),
        }
    }

    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }

    /// Sends `body` (if any) with Confluent's media type, as its clients do.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, MEDIA_TYPE)
                .body(body.to_string());
        }
        let response = request.send().await.expect("the request is answered");
        Answer::read(response).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }

    /// Registers `schema` under `subject`; the raw answer.
    pub async fn try_register(&self, subject: &str, schema: &str) -> Answer {
        self.post(
            &format!("/subjects/{subject}/versions"),
            json!({ "schema": schema }),
        )
        .await
    }

    /// Registers `schema` under `subject` and returns its id, failing the test otherwise.
    pub async fn register(&self, subject: &str, schema: &str) -> i64 {
        let answer = self.try_register(subject, schema).await;
        answer.expect_ok()["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no id in {answer:?}"))
    }

    pub async fn set_level(&self, subject: Option<&str>, level: &str) {
        let path = match subject {
            Some(s) => format!("/config/{s}"),
            None => "/config".to_string(),
        };
        self.put(&path, json!({ "compatibility": level }))
            .await
            .expect_ok();
    }

    pub async fn versions(&self, subject: &str) -> Value {
        self.get(&format!("/subjects/{subject}/versions"))
            .await
            .expect_ok()
            .clone()
    }
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Answer {
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response.text().await.expect("a readable body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            text,
            json,
        }
    }
}

/// A record schema named `R` with the given fields (JSON objects).
pub fn record(fields: &[Value]) -> String {
    json!({ "type": "record", "name": "R", "namespace": "test", "fields": fields }).to_string()
}

pub fn field(name: &str, ty: &str) -> Value {
    json!({ "name": name, "type": ty })
}

pub fn field_with_default(name: &str, ty: &str, default: Value) -> Value {
    json!({ "name": name, "type": ty, "default": default })
}
