//! The exai daemon: configuration and composition.
//!
//! This crate wires the libraries together: an `Authenticator` from
//! `exai-auth`, a session store from `exai-sessions`, the model providers
//! of `exai-providers`, and exai's MCP tools (a private module), served at
//! the edge by `exai-transport`. The `exai-daemon` binary parses
//! [`config::DaemonArgs`], calls [`start`], and waits for a signal; the
//! `exai` CLI shares [`config`] (the token rules, the env file) and
//! [`init_logging`]; tests call [`start`] directly on `127.0.0.1:0`.
//!
//! Its public surface is what those three need: [`config`], [`start`] and
//! the running [`Daemon`], and the limit types a [`Config`] holds.

pub mod config;
mod logging;
mod metered;
mod metrics;
mod quota;
mod tools;

use std::net::SocketAddr;
use std::sync::Arc;

use exai_auth::{ApiKeyStore, Authenticator, JwksError, JwtVerifier};
use exai_providers::{EchoProvider, OpenAiProvider, Provider, ProviderError, Providers};
use exai_sessions::{
    MemoryStore, Node, PostgresStore, SessionStore, StoreError, SupabaseConfig, SupabaseStore,
};
use exai_transport::{ConnectionContext, Edge, Registry};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{AuthMode, Config, SecretSource, StoreConfig};
pub use logging::init as init_logging;
pub use quota::UserLimits;
pub use tools::{ToolLimits, ToolSelection};

/// The JSON-RPC error codes exai's tools answer with (beside the edge's,
/// `exai_transport::jsonrpc`, and `exai connect`'s).
pub mod jsonrpc {
    /// The session already has as many tool calls running as it may
    /// (`EXAI_SESSION_MAX_INFLIGHT`); retry when one finishes.
    pub const TOO_MANY_IN_FLIGHT: i32 = -32004;
    /// The user is over a per-user limit (`EXAI_USER_RPM`,
    /// `EXAI_USER_MAX_INFLIGHT`); the error's data says when to retry
    /// (`retry_after_ms`).
    pub const USER_LIMIT: i32 = -32005;
}

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The project's signing keys could not be fetched, and no HS256 secret
    /// is configured to fall back on.
    #[error("could not load the signing keys")]
    Jwks(#[source] JwksError),
    /// The session database cannot be used.
    #[error("could not use the session database")]
    Store(#[source] StoreError),
    /// The session database lacks migrations.
    #[error("the session database is not migrated (missing: {}); run: exai migrate", .0.join(", "))]
    NotMigrated(Vec<&'static str>),
    /// A model provider could not be set up.
    #[error("could not set up the model providers")]
    Provider(#[source] ProviderError),
    /// The development signing secret could not be read or created.
    #[error("could not use the development signing secret")]
    DevSecret(#[source] config::ConfigError),
    /// The listen address could not be bound.
    #[error("could not listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running daemon. Dropping it shuts the daemon down.
#[derive(Debug)]
pub struct Daemon {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    api_keys: Arc<dyn ApiKeyStore>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// Ends the task giving unused slots of users' budgets back to the
    /// store, which then gives back all (once the connections are gone).
    budgets_done: CancellationToken,
    budgets: Option<JoinHandle<()>>,
}

/// Loads the signing keys, binds the listen address and starts serving.
pub async fn start(config: Config) -> Result<Daemon, StartError> {
    let listen = config.listen_addr();
    let providers = Arc::new(providers(&config)?);
    let (store, api_keys) = open_store(config.store).await?;
    // One registry for the edge's metrics and the daemon's (tools,
    // providers, store calls), served by the edge as /metrics.
    let mut registry = Registry::with_prefix("exai");
    let metrics = Arc::new(metrics::DaemonMetrics::register(&mut registry));
    // Every store call is timed, authentication's key lookups included.
    let metered = Arc::new(metered::MeteredStore::new(store, api_keys, metrics.clone()));
    let store: Arc<dyn SessionStore> = metered.clone();
    let api_keys: Arc<dyn ApiKeyStore> = metered;
    let auth = match config.auth {
        AuthMode::MultiUser(mut jwt) => {
            if let Some(SecretSource::DevelopmentFile(dev)) = &config.secret {
                let (secret, created) = dev.load_or_create().map_err(StartError::DevSecret)?;
                tracing::warn!(
                    path = %dev.path.display(),
                    created,
                    "verifying tokens with a DEVELOPMENT secret; for development only: \
                     set SUPABASE_JWT_SECRET or SUPABASE_URL in production"
                );
                jwt.hs256_secret = Some(secret);
            }
            let verifier = JwtVerifier::start(jwt).await.map_err(StartError::Jwks)?;
            Authenticator::multi_user(verifier, Some(api_keys.clone()))
        }
        AuthMode::SingleUser { token } => Authenticator::single_user(token),
    };
    check_descriptor_limit(config.edge.max_connections);
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|source| StartError::Bind {
            addr: listen.clone(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;

    let auth = Arc::new(auth);
    let admin = match config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    let tools = Arc::new(tools::Tools::new(
        providers,
        store.clone(),
        metrics.clone(),
        config.tools,
    ));
    let budgets_done = CancellationToken::new();
    let budgets = tokio::spawn(tools.give_back_slots(budgets_done.clone()));
    let factory = move |connection: &ConnectionContext| {
        tools::ExaiServer::new(connection.clone(), tools.clone())
    };
    // The edge sees the sessions and their lifecycle only.
    let edge = Edge::new(auth, store, factory, config.edge, &mut registry);
    let edge = edge.expose_metrics(Arc::new(registry));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(exai_transport::serve(
        listener,
        admin,
        edge,
        shutdown.clone(),
    ));
    Ok(Daemon {
        local_addr,
        admin_addr,
        api_keys,
        shutdown,
        task: Some(task),
        budgets_done,
        budgets: Some(budgets),
    })
}

/// Descriptors the daemon needs besides its connections: the store's
/// pool, provider calls, the admin listener, logs.
const DESCRIPTOR_RESERVE: u64 = 256;

/// Logs the process's descriptor limit, and warns when it is below what
/// `max_connections` connections need: past it the listener could not
/// accept, whatever the connection cap.
fn check_descriptor_limit(max_connections: usize) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let Some(current) = limit.current else {
        tracing::info!("open descriptors: no limit");
        return;
    };
    let needed = max_connections as u64 + DESCRIPTOR_RESERVE;
    if current < needed {
        tracing::warn!(
            limit = current,
            max_connections,
            needed,
            "the open-descriptor limit is below what EXAI_MAX_CONNECTIONS needs; \
             raise it (systemd: LimitNOFILE=) or lower EXAI_MAX_CONNECTIONS"
        );
    } else {
        tracing::info!(limit = current, max_connections, "open descriptors");
    }
}

/// The offline echo and the configured model providers.
fn providers(config: &Config) -> Result<Providers, StartError> {
    let mut all: Vec<Arc<dyn Provider>> =
        vec![Arc::new(EchoProvider::with_delay(config.echo_delay))];
    for provider in &config.providers {
        let provider = OpenAiProvider::new(provider.clone()).map_err(StartError::Provider)?;
        all.push(Arc::new(provider));
    }
    Providers::with_echo(all, config.default_model.clone())
        .map_err(|e| StartError::Provider(ProviderError::InvalidRequest(e.to_string())))
}

/// This daemon as a node of the cluster: a fresh id, the machine's name
/// (the kernel's, as `hostname` prints it) and this version.
fn node() -> Node {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let node = Node::new(host, env!("CARGO_PKG_VERSION"));
    tracing::info!(node_id = %node.id, host = %node.host, "this daemon's node");
    node
}

/// The configured store, checked: a database must answer and be migrated.
async fn open_store(
    config: StoreConfig,
) -> Result<(Arc<dyn SessionStore>, Arc<dyn ApiKeyStore>), StartError> {
    match config {
        StoreConfig::Memory => {
            let store = Arc::new(MemoryStore::new());
            Ok((store.clone(), store))
        }
        StoreConfig::Postgres { url, config } => {
            let url = String::from_utf8_lossy(url.expose()).into_owned();
            let store = PostgresStore::new(&url, config).map_err(StartError::Store)?;
            let store = Arc::new(store.with_node(node()));
            let pending = store
                .pending_migrations()
                .await
                .map_err(StartError::Store)?;
            if !pending.is_empty() {
                return Err(StartError::NotMigrated(pending));
            }
            Ok((store.clone(), store))
        }
        StoreConfig::Supabase {
            url,
            service_role_key,
        } => {
            let store = SupabaseStore::new(&url, service_role_key, SupabaseConfig::default());
            let store = Arc::new(store.with_node(node()));
            store.check().await.map_err(StartError::Store)?;
            Ok((store.clone(), store))
        }
    }
}

impl Daemon {
    /// The address the daemon listens on (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served apart, if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where API keys are kept (for issuing keys in-process).
    pub fn api_keys(&self) -> Arc<dyn ApiKeyStore> {
        self.api_keys.clone()
    }

    /// The MCP WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/mcp", self.local_addr)
    }

    /// Stops accepting, closes every connection with 1001, and waits until
    /// the connections are gone (bounded by the shutdown grace).
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        let served = match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        };
        self.budgets_done.cancel();
        if let Some(budgets) = self.budgets.take() {
            budgets.await.map_err(std::io::Error::other)?;
        }
        served
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.budgets_done.cancel();
    }
}
