//! A schema registry speaking Confluent Schema Registry's REST API, for Avro schemas, with its
//! state kept in a compacted Kafka topic laid out like Confluent's `_schemas` ([`start`]), or
//! in memory only, with no Kafka at all ([`start_in_memory`], for tests and embedding).
//!
//! Clients written for Confluent's registry (confluent-kafka's `SchemaRegistryClient`,
//! `schema_registry_converter`) work against it unchanged: same paths, JSON bodies, media type
//! (`application/vnd.schemaregistry.v1+json`), status codes and `error_code`s.
//!
//! ```no_run
//! # async fn run() -> Result<(), tributary_registry::RegistryError> {
//! use tributary_registry::{start, RegistryConfig};
//! let registry = start(RegistryConfig::default()).await?;
//! println!("serving on http://{}", registry.addr);
//! registry.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `api`: routes, request parsing and handlers.
//! - [`auth`]: HTTP basic authentication against a users file, roles (read-only, write,
//!   admin) and a read-only mode ([`Access`]; [`start_with`]). [`start`] serves openly.
//! - `error`: [`RegistryError`], and `ApiError` with the one mapping of every failure to
//!   Confluent's status code, `error_code` and message.
//! - `store`: loading the schemas topic at start-up and persisting each change to it before
//!   it is applied (or, for [`start_in_memory`], applying it at once).
//! - `state`: the in-memory state, a pure function of the topic's records.
//! - `records`: the topic's keys and values, byte-compatible with Confluent's.
//! - `compat`: [`Compatibility`] levels and the compatibility check.
//! - `avro`: parsing schemas and deciding when two are the same.
//!
//! # Behaviour worth knowing
//!
//! - **Single active writer.** One registry process per topic is assumed. Confluent elects a
//!   leader that does all writes; here nothing stops two processes from writing the same topic,
//!   and each would only see the other's writes after a restart. Leader election (or reading
//!   the topic continuously and writing through the leader) is left for later.
//! - **Same schema, same id.** Schemas are compared by their parsed form written back as JSON,
//!   like Confluent's "canonical string": formatting is irrelevant, but `doc`, `default`,
//!   `logicalType` and custom properties count (see `avro::identity` for why Avro's Parsing
//!   Canonical Form is not used). The text served back is the one first registered.
//! - **Avro only, no references.** Other schema types and non-empty `references` are refused
//!   with 42201.
//! - **Ids after hard deletes.** The next id is one past the highest id in the topic. Like
//!   Confluent, an id whose every record was hard-deleted *and* then compacted away could be
//!   handed out again after a restart.

mod api;
pub mod auth;
mod avro;
mod compat;
mod error;
mod records;
mod state;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use auth::{Access, Users};
pub use compat::{Compatibility, UnknownCompatibility};
pub use error::{RegistryError, CONTENT_TYPE};

/// Default request body limit. Kafka's default maximum record size is about 1 MB, and a schema
/// is stored in a single record, so a larger body could not be stored anyway.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// How to run a registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Address to serve HTTP on; port 0 picks a free port (see [`RunningRegistry::addr`]).
    pub listen: SocketAddr,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// The compacted topic holding the registry's state.
    pub topic: String,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// The global level when none has been set through `PUT /config`.
    pub default_compatibility: Compatibility,
}

impl RegistryConfig {
    /// A configuration with the given address and brokers and defaults for the rest.
    pub fn new(listen: SocketAddr, brokers: impl Into<String>) -> Self {
        RegistryConfig {
            listen,
            brokers: brokers.into(),
            topic: "_schemas".to_string(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            default_compatibility: Compatibility::Backward,
        }
    }
}

impl Default for RegistryConfig {
    /// Confluent's port 8081 on loopback, the local stack's broker (the binary sets `brokers`
    /// from `--brokers`; libraries never read the environment).
    fn default() -> Self {
        RegistryConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 8081)),
            tributary_runtime::config::KAFKA_BROKERS.default,
        )
    }
}

/// A registry serving in the background. Dropping it stops the server as well, without
/// waiting; [`RunningRegistry::shutdown`] waits for requests in progress to finish.
pub struct RunningRegistry {
    /// The address actually bound.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    store: Arc<store::Store>,
}

impl RunningRegistry {
    /// Stops accepting connections, lets requests in progress finish, then closes the Kafka
    /// producer.
    pub async fn shutdown(self) {
        let RunningRegistry {
            stop,
            server,
            store,
            addr,
        } = self;
        // The server may have stopped already, in which case there is nobody to tell.
        let _ = stop.send(());
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%addr, "the registry's server failed: {e}"),
            Err(e) => tracing::warn!(%addr, "the registry's server task failed: {e}"),
        }
        store.close().await;
        tracing::info!(%addr, "schema registry stopped");
    }
}

/// Binds `config.listen`, loads the registry's state from `config.topic` (creating the topic if
/// needed) and serves the REST API until [`RunningRegistry::shutdown`].
pub async fn start(config: RegistryConfig) -> Result<RunningRegistry, RegistryError> {
    start_with(config, Access::open()).await
}

/// [`start`], with who may read and change the registry decided by `access`.
pub async fn start_with(
    config: RegistryConfig,
    access: Access,
) -> Result<RunningRegistry, RegistryError> {
    // Binding first makes a port clash fail fast; connections arriving while the topic loads
    // wait in the listen backlog and are served once the state is complete.
    let (listener, addr) = bind(config.listen).await?;
    let store = Arc::new(
        store::Store::open(&config.brokers, &config.topic, config.default_compatibility).await?,
    );
    tracing::info!(%addr, topic = %config.topic, "schema registry serving");
    Ok(serve(listener, addr, store, config.max_body_bytes, access))
}

/// Binds `listen` and serves the REST API with the registry's state in memory only, starting
/// empty: no Kafka is needed, and nothing registered survives the process. The API and its
/// rules are [`start`]'s. For tests and embedding, e.g. running processors' codecs without a
/// broker; use port 0 for a free port.
///
/// ```no_run
/// # async fn run() -> Result<(), tributary_registry::RegistryError> {
/// use tributary_registry::{start_in_memory, Compatibility};
/// let registry = start_in_memory("127.0.0.1:0".parse().unwrap(), Compatibility::Backward).await?;
/// let url = format!("http://{}", registry.addr);
/// # Ok(()) }
/// ```
pub async fn start_in_memory(
    listen: SocketAddr,
    default_compatibility: Compatibility,
) -> Result<RunningRegistry, RegistryError> {
    start_in_memory_with(listen, default_compatibility, Access::open()).await
}

/// [`start_in_memory`], with who may read and change the registry decided by `access`.
pub async fn start_in_memory_with(
    listen: SocketAddr,
    default_compatibility: Compatibility,
    access: Access,
) -> Result<RunningRegistry, RegistryError> {
    let (listener, addr) = bind(listen).await?;
    let store = Arc::new(store::Store::in_memory(default_compatibility));
    tracing::info!(%addr, "schema registry serving from memory");
    Ok(serve(listener, addr, store, DEFAULT_MAX_BODY_BYTES, access))
}

async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), RegistryError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| RegistryError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| RegistryError::Bind {
            addr: listen,
            source,
        })?;
    Ok((listener, addr))
}

fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    store: Arc<store::Store>,
    max_body_bytes: usize,
    access: Access,
) -> RunningRegistry {
    let app = api::router(api::AppState {
        store: Arc::clone(&store),
        max_body_bytes,
        access: Arc::new(access),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // A dropped sender (the handle was dropped) stops the server too.
                let _ = stopped.await;
            })
            .await
    });
    RunningRegistry {
        addr,
        stop,
        server,
        store,
    }
}
