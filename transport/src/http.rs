//! Routes, authentication, and the authenticated upgrade to MCP over
//! WebSocket (Streamable HTTP requests go on to [`streamable`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocket;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use exai_auth::{Access, AuthError, Credential, Principal};
use exai_sessions::{OpenSession, SessionId, SessionMetadata, StoreError};
use tracing::Instrument;

use crate::error::{EdgeError, close};
use crate::ws::{self, SessionGuard};
use crate::{ConnectionContext, Edge, ServiceFactory};
use crate::{legacy, streamable};

/// Initial size of the per-connection read buffer (it grows for a larger
/// message); tungstenite's default (128 KiB) would dominate the memory of an
/// idle connection. MCP requests are mostly well under 1 KiB; a larger one
/// takes a few more reads.
const READ_BUFFER_BYTES: usize = 1024;

/// Where this resource describes itself (RFC 9728 §3).
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The public router; with `operations`, also `/metrics` and `/readyz`.
pub(crate) fn router<F: ServiceFactory>(edge: Arc<Edge<F>>, operations: bool) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/mcp", get(mcp::<F>).post(mcp::<F>).delete(mcp::<F>))
        .route(METADATA_PATH, get(resource_metadata::<F>))
        .route(&format!("{METADATA_PATH}/mcp"), get(resource_metadata::<F>));
    let router = if operations {
        router
            .route("/metrics", get(metrics::<F>))
            .route("/readyz", get(readyz::<F>))
    } else {
        router
    };
    router.with_state(edge)
}

/// The operators' router, for a listener of its own.
pub(crate) fn admin_router<F: ServiceFactory>(edge: Arc<Edge<F>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::<F>))
        .route("/readyz", get(readyz::<F>))
        .with_state(edge)
}

async fn metrics<F: ServiceFactory>(State(edge): State<Arc<Edge<F>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        edge.metrics.render(),
    )
        .into_response()
}

/// Ready when the session store answers and a signing key is loaded; else
/// 503 naming what is not.
async fn readyz<F: ServiceFactory>(State(edge): State<Arc<Edge<F>>>) -> Response {
    let mut problems = Vec::new();
    if let Err(error) = edge.store.check().await {
        problems.push(format!("session store: {error}"));
    }
    if !edge.auth.ready() {
        problems.push("signing keys: none loaded".to_owned());
    }
    if problems.is_empty() {
        "ready\n".into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", problems.join("\n")),
        )
            .into_response()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `/mcp`: a WebSocket upgrade, or else MCP over Streamable HTTP
/// ([`streamable`]).
async fn mcp<F: ServiceFactory>(
    State(edge): State<Arc<Edge<F>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    request: Request,
) -> Result<Response, EdgeError> {
    match upgrade {
        Ok(upgrade) => mcp_upgrade(edge, peer, request.headers(), upgrade).await,
        Err(_) if is_upgrade_attempt(request.headers()) => Err(EdgeError::UpgradeRequired),
        Err(_) => streamable::handle(&edge, peer, request).await,
    }
}

/// A request that asks for a WebSocket but is not a valid upgrade (a
/// missing key or version): told what a valid one needs, not served as
/// HTTP.
fn is_upgrade_attempt(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A WebSocket upgrade of `/mcp`: authenticate, open the session (within
/// the user's limit), then upgrade. Nothing is upgraded before all three have succeeded, with
/// one exception kept for the original EXAI shims: an upgrade with no
/// credential at all that does not offer the `mcp` subprotocol is upgraded
/// to wait for the legacy protocol's `hello`, which must then authenticate
/// it ([`legacy_hello`]); until it does, no session exists and no MCP
/// handler runs.
async fn mcp_upgrade<F: ServiceFactory>(
    edge: Arc<Edge<F>>,
    peer: SocketAddr,
    headers: &HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, EdgeError> {
    let principal = match edge
        .auth
        .authenticate(credential(headers)?, Access::User)
        .await
    {
        Ok(principal) => principal,
        Err(AuthError::Missing) if !offers_mcp(headers) => {
            return legacy_upgrade(edge, peer, upgrade);
        }
        Err(error) => {
            edge.metrics.auth_failure(error.kind());
            return Err(EdgeError::Auth {
                error,
                resource_metadata: Some(resource_metadata_url(&edge, headers)),
            });
        }
    };
    let resume = match headers.get("mcp-session-id") {
        Some(id) => Some(SessionId::from_client(
            id.to_str().map_err(|_| StoreError::NotFound)?,
        )),
        None => None,
    };
    let admitted = admit(&edge, principal, resume, peer, "websocket").await?;
    let session_id = admitted.connection.session_id.clone();
    let config = &edge.config;
    let mut response = upgrade
        .protocols(["mcp"])
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_message_bytes)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| admitted.serve(socket, false));
    // (`admitted` is boxed: axum keeps the callback for as long as the
    // connection lives.)
    if let Ok(id) = HeaderValue::from_str(session_id.as_str()) {
        response.headers_mut().insert("mcp-session-id", id);
    }
    Ok(response)
}

/// A connection admitted: its session is open and counted; `serve` runs it.
struct Admitted<S> {
    service: S,
    connection: ws::Connection,
    span: tracing::Span,
    tracker_token: tokio_util::task::task_tracker::TaskTrackerToken,
    peer: SocketAddr,
}

impl<S: rmcp::ServerHandler + Clone> Admitted<S> {
    /// The connection's task, boxed: the spawned future stays a pointer,
    /// and the connection's own future carries nothing twice.
    #[allow(
        clippy::boxed_local,
        reason = "admitted boxed, so axum's upgrade callback holds a pointer for the connection's life"
    )]
    fn serve(
        self: Box<Self>,
        socket: WebSocket,
        hello_received: bool,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let Admitted {
            service,
            connection,
            span,
            tracker_token,
            peer,
        } = *self;
        tracing::info!(parent: &span, peer = %peer, "connection opened");
        let counted = ws::Counted::new(connection.metrics.clone(), tracker_token);
        Box::pin(ws::run(socket, service, connection, hello_received, counted).instrument(span))
    }
}

/// A session opened (or resumed) for one user, registered with the
/// lifecycle; closed in the store when `guard` is closed or dropped.
pub(crate) struct Opened {
    pub(crate) principal: Principal,
    pub(crate) session_id: SessionId,
    pub(crate) live: crate::lifecycle::LiveSession,
    pub(crate) guard: SessionGuard,
    pub(crate) span: tracing::Span,
}

impl Opened {
    /// What the session's MCP handler knows of it.
    pub(crate) fn context(&self) -> ConnectionContext {
        ConnectionContext {
            principal: self.principal.clone(),
            session_id: Some(self.session_id.clone()),
        }
    }
}

/// Opens (or resumes) `principal`'s session within the user's connection
/// limit.
pub(crate) async fn open_session<F: ServiceFactory>(
    edge: &Edge<F>,
    principal: Principal,
    resume: Option<SessionId>,
    peer: SocketAddr,
    transport: &'static str,
) -> Result<Opened, EdgeError> {
    let limit = edge.config.max_connections_per_user;
    let resuming = resume.is_some();
    let opened = match resume {
        // Resuming one of the caller's own sessions: another user's id, an
        // expired one and a made-up one all answer 404 alike.
        Some(id) => edge.store.resume(&principal, &id, limit).await,
        None => {
            let metadata = SessionMetadata::new(transport, Some(peer.to_string()));
            edge.store
                .open(&principal, OpenSession::new(limit, metadata))
                .await
        }
    };
    let session = match opened {
        Ok(session) => session,
        Err(error) => {
            if matches!(error, StoreError::LimitReached { .. }) {
                edge.metrics.refused("connections_per_user");
            }
            return Err(error.into());
        }
    };
    edge.metrics
        .session_event(if resuming { "resumed" } else { "opened" });

    let span = tracing::info_span!(
        "connection",
        user_id = %principal.user_id,
        session_id = %session.session_id,
        transport,
    );
    let live = edge.lifecycle.attach(&principal, &session.session_id);
    let guard = SessionGuard::new(
        edge.lifecycle.clone(),
        principal.clone(),
        session.session_id.clone(),
        edge.connections.clone(),
    );
    Ok(Opened {
        principal,
        session_id: session.session_id,
        live,
        guard,
        span,
    })
}

/// Opens (or resumes) `principal`'s session within the user's connection
/// limit, and prepares the connection's handler.
async fn admit<F: ServiceFactory>(
    edge: &Arc<Edge<F>>,
    principal: Principal,
    resume: Option<SessionId>,
    peer: SocketAddr,
    transport: &'static str,
) -> Result<Box<Admitted<F::Service>>, EdgeError> {
    let opened = open_session(edge, principal, resume, peer, transport).await?;
    let service = edge.factory.service(&opened.context());
    let Opened {
        principal,
        session_id,
        live,
        guard,
        span,
    } = opened;
    let config = &edge.config;
    let connection = ws::Connection {
        guard,
        live,
        shutdown: edge.shutdown.clone(),
        outbound_queue: config.outbound_queue,
        auth: edge.auth.clone(),
        principal,
        metrics: edge.metrics.clone(),
        ping_interval: config.ping_interval,
        ping_timeout: config.ping_timeout,
        session_id,
        shutdown_grace: config.shutdown_grace,
        service_idle: config.service_idle,
    };
    Ok(Box::new(Admitted {
        service,
        connection,
        span,
        tracker_token: edge.connections.token(),
        peer,
    }))
}

/// Whether the client offered the `mcp` subprotocol (every MCP WebSocket
/// client does; the original EXAI shims do not).
fn offers_mcp(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "mcp")
}

/// Upgrades a connection that will authenticate in the legacy protocol's
/// `hello`. At most [`crate::EdgeConfig::max_pending_hellos`] such sockets
/// wait at once (503 beyond), each for at most `hello_timeout`.
fn legacy_upgrade<F: ServiceFactory>(
    edge: Arc<Edge<F>>,
    peer: SocketAddr,
    upgrade: WebSocketUpgrade,
) -> Result<Response, EdgeError> {
    let permit = edge
        .pending_hellos
        .clone()
        .try_acquire_owned()
        .map_err(|_| EdgeError::Busy)?;
    let config = &edge.config;
    let tracker_token = edge.connections.token();
    Ok(upgrade
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_message_bytes)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let _counted = tracker_token;
            // Boxed, and done with before the connection is served.
            let hello = Box::pin(legacy_hello(edge, peer, socket, permit)).await;
            if let Some((admitted, socket)) = hello {
                admitted.serve(socket, true).await;
            }
        }))
}

/// The legacy protocol's opening: the first frame must be a `hello` whose
/// `jwt` or `token` authenticates the user; otherwise `hello_ack {ok:
/// false}` and close 4003. Then the session opens as for any connection.
async fn legacy_hello<F: ServiceFactory>(
    edge: Arc<Edge<F>>,
    peer: SocketAddr,
    mut socket: WebSocket,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<(Box<Admitted<F::Service>>, WebSocket)> {
    use axum::extract::ws::{CloseFrame, Message};
    let first = tokio::select! {
        frame = tokio::time::timeout(edge.config.hello_timeout, socket.recv()) => frame,
        () = edge.shutdown.cancelled() => return None,
    };
    let hello = match first {
        Ok(Some(Ok(Message::Text(text)))) => legacy::Hello::parse(text.as_str()),
        _ => None,
    };
    async fn refuse(socket: &mut WebSocket, error: &str, code: u16, reason: &'static str) {
        let ack = legacy::hello_refused(error).to_string();
        let _ = socket.send(Message::Text(ack.into())).await;
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    let Some(hello) = hello else {
        // No hello (an MCP message, garbage, or nothing in time): this
        // socket has no credential, and gets nothing else.
        refuse(
            &mut socket,
            "missing_hello",
            close::LEGACY_UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        return None;
    };
    let credential = hello.credential.as_deref().map(Credential::Bearer);
    let principal = match edge.auth.authenticate(credential, Access::User).await {
        Ok(principal) => principal,
        Err(error) => {
            edge.metrics.auth_failure(error.kind());
            refuse(
                &mut socket,
                "unauthorized",
                close::LEGACY_UNAUTHORIZED,
                "unauthorized",
            )
            .await;
            return None;
        }
    };
    let admitted = match admit(&edge, principal, None, peer, "legacy").await {
        Ok(admitted) => admitted,
        Err(EdgeError::Store(StoreError::LimitReached { .. })) => {
            refuse(
                &mut socket,
                "connection limit reached",
                close::TRY_AGAIN_LATER,
                "connection limit reached",
            )
            .await;
            return None;
        }
        Err(_) => {
            refuse(
                &mut socket,
                "session store unavailable",
                close::TRY_AGAIN_LATER,
                "session store unavailable",
            )
            .await;
            return None;
        }
    };
    drop(permit);
    Some((admitted, socket))
}

/// The credential of a request: `Authorization: Bearer …` (an access token
/// or an API key), or `X-API-Key: …`, or, for browsers (which cannot set
/// headers on a WebSocket), an `mcp.auth.<token>` entry in
/// `Sec-WebSocket-Protocol`, as the MCP WebSocket proposal (SEP-1288) has
/// it; only `mcp` is ever echoed back. Never from the query string, and
/// never logged.
pub(crate) fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, EdgeError> {
    let malformed = || EdgeError::Auth {
        error: AuthError::Malformed,
        resource_metadata: None,
    };
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| malformed())?;
        return match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Ok(Some(Credential::Bearer(token.trim())))
            }
            _ => Ok(None),
        };
    }
    if let Some(value) = headers.get("x-api-key") {
        return Ok(Some(Credential::ApiKey(
            value.to_str().map_err(|_| malformed())?.trim(),
        )));
    }
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value.to_str().map_err(|_| malformed())?;
        if let Some(token) = value
            .split(',')
            .find_map(|entry| entry.trim().strip_prefix(SUBPROTOCOL_TOKEN_PREFIX))
        {
            return Ok(Some(Credential::Bearer(token)));
        }
    }
    Ok(None)
}

/// The `Sec-WebSocket-Protocol` entry that carries a token.
const SUBPROTOCOL_TOKEN_PREFIX: &str = "mcp.auth.";

/// This server's base URL: `EXAI_PUBLIC_URL` when set, else from `Host`.
fn base_url<F: ServiceFactory>(edge: &Edge<F>, headers: &HeaderMap) -> String {
    if let Some(url) = &edge.config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// Where this resource's RFC 9728 metadata is, for a challenge.
pub(crate) fn resource_metadata_url<F: ServiceFactory>(
    edge: &Edge<F>,
    headers: &HeaderMap,
) -> String {
    format!("{}{METADATA_PATH}", base_url(edge, headers))
}

/// RFC 9728 protected-resource metadata: what this resource is and which
/// authorization server (Supabase Auth) issues tokens for it.
async fn resource_metadata<F: ServiceFactory>(
    State(edge): State<Arc<Edge<F>>>,
    headers: HeaderMap,
) -> Response {
    let base = base_url(&edge, &headers);
    let mut metadata = serde_json::json!({
        "resource": format!("{base}/mcp"),
        "bearer_methods_supported": ["header"],
        "resource_name": "exai",
    });
    if !edge.config.authorization_servers.is_empty() {
        metadata["authorization_servers"] = edge.config.authorization_servers.clone().into();
    }
    Json(metadata).into_response()
}
