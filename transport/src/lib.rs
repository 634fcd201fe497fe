//! The network edge of exai: MCP over WebSocket and Streamable HTTP, with
//! authentication, per-user sessions and limits, in front of any `rmcp`
//! server.
//!
//! This crate is the only one that knows wire formats: HTTP, WebSocket
//! frames and JSON-RPC framing. It authenticates every connection before
//! anything else happens (no credential, no upgrade), opens the caller's
//! session in the store (a [`ConnectionStore`]), and then bridges the socket to an MCP
//! server built by your [`ServiceFactory`], through `rmcp`.
//!
//! # Serving your own MCP server
//!
//! Anything that implements [`rmcp::ServerHandler`] and `Clone` can be
//! served. The factory sees who the connection is for
//! ([`ConnectionContext`]) before the handler is made:
//!
//! ```no_run
//! use std::sync::Arc;
//! use exai_auth::{Authenticator, JwtConfig, JwtVerifier, Secret};
//! use exai_sessions::MemoryStore;
//! use exai_transport::{ConnectionContext, Edge, EdgeConfig, Registry};
//! use rmcp::ServerHandler;
//! use rmcp::model::{ServerCapabilities, ServerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Clone)]
//! struct Hello;
//! impl ServerHandler for Hello {
//!     fn get_info(&self) -> ServerConfig {
//!         ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = JwtConfig::new().with_hs256(Secret::new(b"the project's JWT secret".to_vec()));
//! let auth = Arc::new(Authenticator::multi_user(JwtVerifier::start(jwt).await?, None));
//! let factory = |_: &ConnectionContext| Hello;
//! let mut metrics = Registry::default();
//! let edge = Edge::new(
//!     auth,
//!     Arc::new(MemoryStore::new()),
//!     factory,
//!     EdgeConfig::default(),
//!     &mut metrics,
//! )
//! .expose_metrics(Arc::new(metrics));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! exai_transport::serve(listener, None, edge, CancellationToken::new()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/custom_tools.rs` is the whole of it, with a tool, runnable:
//! `SUPABASE_JWT_SECRET=… cargo run -p exai-transport --example custom_tools`.
//!
//! # Layout
//!
//! - [`Edge`] holds what every request needs and [`serve`] runs it;
//! - `http` routes requests: a WebSocket upgrade to `upgrade`, anything
//!   else on `/mcp` to `streamable`;
//! - `admission` is the one way in for all of them: the credential,
//!   authentication (and the challenge when it fails), the user's session
//!   opened within the limit;
//! - `websocket` is the handshake and the socket under every WebSocket:
//!   read within a budget before authentication, drained when it closes;
//! - `ws` runs one WebSocket connection as one task tree;
//! - `framing` turns text frames into JSON-RPC messages (or precise errors);
//! - `lifecycle` batches activity, expires idle sessions, closes killed
//!   ones;
//! - `error` is the one place where the edge's failures become HTTP
//!   statuses; [`close`] and [`jsonrpc`] are the codes it sends.

mod admission;
mod error;
mod framing;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod legacy;
mod lifecycle;
mod listener;
mod metrics;
mod pace;
mod streamable;
mod upgrade;
mod websocket;
mod ws;

use std::sync::Arc;
use std::time::Duration;

pub use error::{close, jsonrpc};
pub use metrics::EdgeMetrics;
pub use pace::{MAX_PAUSE, Pace};
pub use prometheus_client::registry::Registry;

use exai_auth::{Authenticator, Principal};
use exai_sessions::{ConnectionStore, SessionId};

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the daemon's MCP server for one connection gets to know about it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectionContext {
    /// Who the connection acts for (verified); shared by everything that
    /// serves the connection.
    pub principal: Arc<Principal>,
    /// The session the connection opened; `None` for a stateless request
    /// (MCP 2026-07-28 over HTTP), which belongs to no session.
    pub session_id: Option<SessionId>,
    /// Tell it when a request is refused for a limit, and when one is
    /// served: a WebSocket whose requests keep being refused is read more
    /// slowly ([`Pace`]).
    pub pace: Pace,
}

/// Builds the MCP server (an `rmcp` handler) for each new connection.
///
/// Implemented for every `Fn(&ConnectionContext) -> S`.
pub trait ServiceFactory: Send + Sync + 'static {
    /// The handler type. A WebSocket connection that was idle is served by
    /// a clone of its handler, so clones must share whatever state the
    /// handler keeps for its connection (behind an `Arc`).
    type Service: rmcp::ServerHandler + Clone;
    /// A handler for the connection described by `context`.
    fn service(&self, context: &ConnectionContext) -> Self::Service;
}

impl<F, S> ServiceFactory for F
where
    F: Fn(&ConnectionContext) -> S + Send + Sync + 'static,
    S: rmcp::ServerHandler + Clone,
{
    type Service = S;
    fn service(&self, context: &ConnectionContext) -> S {
        self(context)
    }
}

/// Limits and sizes at the edge.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EdgeConfig {
    /// Concurrent connections one user may hold (`MCP_MAX_CONNECTIONS_PER_USER`).
    pub max_connections_per_user: u32,
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_bytes: usize,
    /// The most messages one JSON-RPC batch (protocol version 2025-03-26)
    /// may hold; a larger batch is refused whole with -32600.
    pub max_batch_members: usize,
    /// Messages queued towards one client before the server waits for it.
    pub outbound_queue: usize,
    /// How often the server pings each WebSocket (`EXAI_WS_PING_INTERVAL`).
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed
    /// with 1011 (`EXAI_WS_PING_TIMEOUT`).
    pub ping_timeout: Duration,
    /// TCP connections open at once on the public listener, of any kind
    /// (`EXAI_MAX_CONNECTIONS`); past it, new ones wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
    /// How long a request's headers, or the next request on an idle
    /// keep-alive connection, may take to arrive before the connection is
    /// closed (`EXAI_HEADER_READ_TIMEOUT_SECS`).
    pub header_read_timeout: Duration,
    /// Connections one address may hold that have not authenticated yet
    /// (`EXAI_MAX_UNAUTHENTICATED_PER_ADDRESS`); more are closed at once.
    pub max_unauthenticated_per_address: usize,
    /// How long a connection that authenticates in the legacy protocol's
    /// `hello` may take to send it.
    pub hello_timeout: Duration,
    /// How many such connections may wait for their `hello` at once.
    pub max_pending_hellos: usize,
    /// How many bytes may be read from such a connection before its
    /// `hello` has authenticated it; past them it is refused (`hello_ack
    /// {"ok": false, "error": "hello too large"}`, close 1009) and nothing
    /// more is kept of it. `max_message_bytes` applies once it has.
    pub max_hello_bytes: usize,
    /// Browser origins allowed to use `/mcp`, over HTTP and WebSocket
    /// (`EXAI_ALLOWED_ORIGINS`; `*` for any). A request or upgrade with an
    /// `Origin` not listed, and not the loopback daemon's own, is refused
    /// with 403; requests without one (editors, scripts) are not affected.
    pub allowed_origins: Vec<String>,
    /// Host names `/mcp` answers to, over HTTP and WebSocket; `None` for any. The daemon
    /// sets the loopback names when it listens on a loopback address, so a
    /// page whose DNS name was rebound to 127.0.0.1 is refused (403).
    pub allowed_hosts: Option<Vec<String>>,
    /// How long tool calls running at shutdown may take to finish before
    /// they are cancelled (`EXAI_SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
    /// The public base URL (`EXAI_PUBLIC_URL`), for the metadata this
    /// resource publishes; from the request's `Host` when unset.
    pub public_url: Option<String>,
    /// Who issues tokens for this resource (`${SUPABASE_URL}/auth/v1`).
    pub authorization_servers: Vec<String>,
    /// A session with no MCP request for this long expires, and its socket
    /// is closed with 4408 (`MCP_SESSION_TIMEOUT`).
    pub session_timeout: Duration,
    /// Activity is written to the store at most this often per session.
    pub activity_flush: Duration,
    /// At the per-user cap, a new connection closes that user's least
    /// recently used HTTP session held here that has had no request in
    /// flight and no open stream for this long, rather than be refused:
    /// clients that never send `DELETE` do not lock their user out.
    pub http_idle_grace: Duration,
    /// A daemon whose heartbeat is older than this is presumed dead: any
    /// other daemon on the database frees its live sessions
    /// (`EXAI_NODE_TIMEOUT`). The heartbeat is written every third of it.
    pub node_timeout: Duration,
    /// A WebSocket whose MCP service has had nothing to do for this long
    /// has the service suspended, and restarted by the next message: an
    /// idle connection then costs a few KiB instead of a service's tasks
    /// and queues.
    pub service_idle: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            max_connections_per_user: 5,
            max_message_bytes: 32 * 1024 * 1024,
            max_batch_members: 64,
            outbound_queue: 64,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_unauthenticated_per_address: 64,
            hello_timeout: Duration::from_secs(10),
            max_pending_hellos: 256,
            max_hello_bytes: 16 * 1024,
            allowed_origins: Vec::new(),
            allowed_hosts: None,
            shutdown_grace: Duration::from_secs(10),
            public_url: None,
            authorization_servers: Vec::new(),
            session_timeout: Duration::from_secs(3600),
            activity_flush: Duration::from_secs(30),
            node_timeout: Duration::from_secs(30),
            http_idle_grace: Duration::from_secs(30),
            service_idle: Duration::from_millis(500),
        }
    }
}

/// Everything the edge needs to serve requests.
pub struct Edge<F: ServiceFactory> {
    metrics: Arc<EdgeMetrics>,
    /// What `GET /metrics` renders, when the caller exposes it.
    exposition: Option<Arc<Registry>>,
    auth: Arc<Authenticator>,
    store: Arc<dyn ConnectionStore>,
    lifecycle: Arc<lifecycle::Lifecycle>,
    factory: Arc<F>,
    /// MCP over Streamable HTTP.
    http: streamable::HttpService<F::Service>,
    http_sessions: Arc<streamable::HttpSessions>,
    config: EdgeConfig,
    shutdown: CancellationToken,
    /// Ends the HTTP sessions and their streams: at shutdown, once no HTTP
    /// request is in flight or the grace period is over.
    http_shutdown: CancellationToken,
    /// HTTP requests being answered, for the shutdown grace period.
    http_in_flight: TaskTracker,
    connections: TaskTracker,
    /// Sockets upgraded to wait for a legacy `hello`.
    pending_hellos: Arc<tokio::sync::Semaphore>,
}

impl<F: ServiceFactory> Edge<F> {
    /// An edge that authenticates with `auth`, records sessions in `store`
    /// and serves each connection with a handler from `factory`. Its
    /// metrics ([`EdgeMetrics`]) are registered into `registry`.
    pub fn new(
        auth: Arc<Authenticator>,
        store: Arc<dyn ConnectionStore>,
        factory: F,
        config: EdgeConfig,
        registry: &mut Registry,
    ) -> Self {
        let metrics = Arc::new(EdgeMetrics::register(registry));
        let lifecycle = Arc::new(lifecycle::Lifecycle::new(
            store.clone(),
            auth.clone(),
            lifecycle::Timings {
                activity_flush: config.activity_flush,
                session_timeout: config.session_timeout,
                node_timeout: config.node_timeout,
                max_connections_per_user: config.max_connections_per_user,
            },
            metrics.clone(),
        ));
        let factory = Arc::new(factory);
        let shutdown = CancellationToken::new();
        let http_shutdown = CancellationToken::new();
        let connections = TaskTracker::new();
        let http_sessions = streamable::HttpSessions::new(
            metrics.clone(),
            connections.clone(),
            config.service_idle,
            http_shutdown.clone(),
        );
        let http = streamable::service(
            factory.clone(),
            http_sessions.clone(),
            &config,
            http_shutdown.clone(),
        );
        Edge {
            metrics,
            exposition: None,
            auth,
            store,
            lifecycle,
            factory,
            http,
            http_sessions,
            pending_hellos: Arc::new(tokio::sync::Semaphore::new(config.max_pending_hellos)),
            config,
            shutdown,
            http_shutdown,
            http_in_flight: TaskTracker::new(),
            connections,
        }
    }
}

impl<F: ServiceFactory> Edge<F> {
    /// Serves `registry` (the edge's metrics and whatever else the caller
    /// registered beside them) as `GET /metrics`, in the Prometheus text
    /// format; without it, `/metrics` is not served.
    pub fn expose_metrics(mut self, registry: Arc<Registry>) -> Self {
        self.exposition = Some(registry);
        self
    }
}

/// The instant a credential expiring at `expires_at` (Unix seconds) expires.
pub(crate) fn deadline(expires_at: Option<u64>) -> Option<Instant> {
    let expires_at = expires_at?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // However far away, never an overflow: a deadline past what `Instant`
    // can hold is no deadline.
    Instant::now().checked_add(Duration::from_secs(expires_at.saturating_sub(now)))
}

/// Serves `edge` on `listener` until `shutdown` is cancelled; then stops
/// accepting, closes every WebSocket with 1001 (going away), waits for the
/// connections to finish (at most the configured grace), and returns.
///
/// With an `admin` listener, `/metrics`, `/healthz` and `/readyz` are served
/// there and `/metrics` and `/readyz` not on the public listener.
pub async fn serve<F: ServiceFactory>(
    listener: TcpListener,
    admin: Option<TcpListener>,
    edge: Edge<F>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The edge's own token ends everything it started (sockets, HTTP
    // sessions and their streams) when the caller's is cancelled.
    let edge = Arc::new(edge);
    let linked = edge.shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        linked.cancel();
    });
    let shutdown = edge.shutdown.clone();
    // HTTP requests in flight at shutdown get the grace period to answer;
    // then the HTTP sessions and their streams end.
    let http_edge = edge.clone();
    tokio::spawn(async move {
        http_edge.shutdown.cancelled().await;
        http_edge.http_in_flight.close();
        let grace = http_edge.config.shutdown_grace;
        if tokio::time::timeout(grace, http_edge.http_in_flight.wait())
            .await
            .is_err()
        {
            tracing::info!(
                "HTTP requests still running after the shutdown grace period: cancelled"
            );
        }
        http_edge.http_shutdown.cancel();
    });
    let background = tokio::spawn(edge.lifecycle.clone().run(shutdown.clone()));
    let admin_task = admin.map(|admin| {
        let app = http::admin_router(edge.clone());
        let shutdown = shutdown.clone();
        let bounds = listener::Bounds {
            max_connections: 64,
            header_read_timeout: edge.config.header_read_timeout,
            max_unauthenticated_per_address: 64,
            drain: edge.config.shutdown_grace,
        };
        let metrics = Arc::new(EdgeMetrics::default());
        tokio::spawn(listener::serve(admin, app, bounds, metrics, shutdown))
    });
    let app = http::router(edge.clone(), admin_task.is_none());
    let bounds = listener::Bounds {
        max_connections: edge.config.max_connections,
        header_read_timeout: edge.config.header_read_timeout,
        max_unauthenticated_per_address: edge.config.max_unauthenticated_per_address,
        drain: edge.config.shutdown_grace,
    };
    listener::serve(
        listener,
        app,
        bounds,
        edge.metrics.clone(),
        shutdown.clone(),
    )
    .await;
    if let Some(task) = admin_task {
        task.await.map_err(std::io::Error::other)?;
    }
    edge.connections.close();
    // The grace period for calls in flight, then time to write the closes.
    let closing = edge.config.shutdown_grace + Duration::from_secs(5);
    if tokio::time::timeout(closing, edge.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = edge.connections.len(),
            "connections still open after the shutdown grace period"
        );
    }
    let _ = background.await;
    edge.lifecycle.finish().await;
    Ok(())
}
