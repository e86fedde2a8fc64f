//! `tributary schemas register|check`: the topic schemas in `schemas/avro/` (one `<topic>.avsc`
//! per topic) against the schema registry, under TopicNameStrategy subjects (`<topic>-value`).
//!
//! `check` is what a team runs before deploying a producer: it asks the registry whether each
//! local schema is compatible with the subject under the subject's compatibility level, and
//! fails (exit code 1) when one is not.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use schema_registry_converter::async_impl::schema_registry::post_schema;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde_json::{json, Value};
use tributary_schemas::codec::value_subject;

use crate::registry_args::RegistryArgs;

#[derive(ClapArgs)]
pub struct Common {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Folder of `<topic>.avsc` files.
    #[arg(long, default_value = "schemas/avro")]
    dir: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Register every schema under `<topic>-value`; an unchanged schema keeps its id.
    Register(Common),
    /// Check every schema against its subject's compatibility level, without registering.
    Check(Common),
}

/// One local schema file: its topic (the file stem) and text, parsed to make sure it is Avro.
struct Local {
    topic: String,
    path: PathBuf,
    text: String,
}

fn load(dir: &Path) -> anyhow::Result<Vec<Local>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading schema folder {}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("avsc") {
            continue;
        }
        let topic = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("schema file name is not UTF-8")?
            .to_string();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        apache_avro::Schema::parse_str(&text)
            .with_context(|| format!("{} is not a valid Avro schema", path.display()))?;
        out.push(Local { topic, path, text });
    }
    if out.is_empty() {
        bail!("no .avsc files in {}", dir.display());
    }
    out.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(out)
}

pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Register(c) => register(&c).await,
        Command::Check(c) => check(&c).await,
    }
}

async fn register(c: &Common) -> anyhow::Result<ExitCode> {
    let endpoint = c.registry.endpoint();
    let settings = endpoint.settings();
    for local in load(&c.dir)? {
        let subject = value_subject(&local.topic);
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, local.text.clone());
        let registered = post_schema(&settings, subject.clone(), supplied)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "registering {} as `{subject}` at {}",
                    local.path.display(),
                    endpoint.url
                )
            })?;
        println!("{subject:<36} id {}", registered.id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(c: &Common) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::new();
    let endpoint = c.registry.endpoint();
    let base = endpoint.url.as_str();
    let mut failures = 0;
    for local in load(&c.dir)? {
        let subject = value_subject(&local.topic);
        let url = format!("{base}/compatibility/subjects/{subject}/versions?verbose=true");
        let mut request = http.post(&url);
        if let Some((user, password)) = &endpoint.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let resp = request
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&json!({ "schema": local.text }))
            .send()
            .await
            .with_context(|| format!("asking {url}"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if status.is_success() {
            if body["is_compatible"].as_bool() == Some(true) {
                println!("{subject:<36} compatible");
            } else {
                failures += 1;
                println!("{subject:<36} INCOMPATIBLE ({})", local.path.display());
                for m in body["messages"].as_array().into_iter().flatten() {
                    println!("    {}", m.as_str().unwrap_or_default());
                }
            }
        } else if body["error_code"] == 40401 {
            println!("{subject:<36} new subject (nothing to be compatible with)");
        } else {
            bail!(
                "the registry answered {status} for {}: {}",
                local.path.display(),
                body["message"].as_str().unwrap_or("no message")
            );
        }
    }
    if failures > 0 {
        eprintln!("{failures} schema(s) would break their subject's compatibility level");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
