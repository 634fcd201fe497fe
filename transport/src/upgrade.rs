//! The authenticated upgrade to MCP over WebSocket, and the one upgrade
//! before authentication: the original EXAI shims', which must
//! authenticate in their first frame, the legacy protocol's `hello`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use exai_auth::{AuthError, Credential, Principal};
use exai_sessions::{SessionId, StoreError};
use tracing::Instrument;

use crate::admission::{self, Opened};
use crate::error::{EdgeError, close};
use crate::listener::Standing;
use crate::websocket::{self, Handshake, Limits, ReadBudget, Socket};
use crate::{Edge, ServiceFactory, legacy, ws};

/// A WebSocket upgrade of `/mcp`: authenticate, open the session (within
/// the user's limit), then upgrade. Nothing is upgraded before all three have succeeded, with
/// one exception kept for the original EXAI shims: an upgrade with no
/// credential at all that does not offer the `mcp` subprotocol is upgraded
/// to wait for the legacy protocol's `hello`, which must then authenticate
/// it ([`legacy_hello`]); until it does, no session exists and no MCP
/// handler runs.
pub(crate) async fn websocket<F: ServiceFactory>(
    edge: Arc<Edge<F>>,
    peer: SocketAddr,
    headers: &HeaderMap,
    handshake: Handshake,
    standing: Option<Standing>,
) -> Result<Response, EdgeError> {
    // Browsers can open a WebSocket to any address: the page's origin and
    // the name it used are checked first, as for every HTTP request.
    admission::check_origin_and_host(&edge.config, headers)?;
    let principal = match admission::authenticate(&edge, admission::credential(headers)?).await {
        Ok(principal) => principal,
        Err(AuthError::Missing) if !offers_mcp(headers) => {
            return legacy_upgrade(edge, peer, handshake, standing);
        }
        Err(error) => return Err(admission::refused(&edge, error, Some(headers))),
    };
    if let Some(standing) = &standing {
        standing.authenticated();
    }
    let resume = match headers.get("mcp-session-id") {
        Some(id) => Some(SessionId::from_client(
            id.to_str().map_err(|_| StoreError::NotFound)?,
        )),
        None => None,
    };
    let admitted = admit(&edge, principal, resume, peer, "websocket").await?;
    let session_id = admitted.connection.session_id.clone();
    let limits = Limits {
        max_message_bytes: edge.config.max_message_bytes,
        budget: ReadBudget::unlimited(),
    };
    let mut response = handshake.accept(offers_mcp(headers), limits, move |socket| {
        admitted.serve(socket, false)
    });
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
        reason = "admitted boxed, so the upgrade's task holds a pointer for the connection's life"
    )]
    fn serve(
        self: Box<Self>,
        socket: Socket,
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

/// Opens (or resumes) `principal`'s session within the user's connection
/// limit, and prepares the connection's handler.
async fn admit<F: ServiceFactory>(
    edge: &Arc<Edge<F>>,
    principal: Principal,
    resume: Option<SessionId>,
    peer: SocketAddr,
    transport: &'static str,
) -> Result<Box<Admitted<F::Service>>, EdgeError> {
    let opened = admission::open(edge, principal, resume, peer, transport, None).await?;
    let service = edge.factory.service(&opened.context());
    let Opened {
        principal,
        session_id,
        live,
        guard,
        span,
        pace,
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
        pace,
        max_batch_members: config.max_batch_members,
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
/// wait at once (503 beyond), each for at most `hello_timeout`, and what
/// is read from each before its `hello` has authenticated is at most
/// [`crate::EdgeConfig::max_hello_bytes`].
fn legacy_upgrade<F: ServiceFactory>(
    edge: Arc<Edge<F>>,
    peer: SocketAddr,
    handshake: Handshake,
    standing: Option<Standing>,
) -> Result<Response, EdgeError> {
    let permit = edge
        .pending_hellos
        .clone()
        .try_acquire_owned()
        .map_err(|_| EdgeError::Busy)?;
    let tracker_token = edge.connections.token();
    let budget = ReadBudget::limited(edge.config.max_hello_bytes);
    let limits = Limits {
        max_message_bytes: edge.config.max_message_bytes,
        budget: budget.clone(),
    };
    Ok(handshake.accept(false, limits, move |socket| async move {
        let _counted = tracker_token;
        // Boxed, and done with before the connection is served.
        let hello = Box::pin(legacy_hello(edge, peer, socket, budget, permit, standing)).await;
        if let Some((admitted, socket)) = hello {
            admitted.serve(socket, true).await;
        }
    }))
}

/// The legacy protocol's opening: the first frame must be a `hello` whose
/// `jwt` or `token` authenticates the user; otherwise `hello_ack {ok:
/// false}` and close 4003 (1009 when more than the budget came first).
/// Then the budget is lifted and the session opens as for any connection.
async fn legacy_hello<F: ServiceFactory>(
    edge: Arc<Edge<F>>,
    peer: SocketAddr,
    mut socket: Socket,
    budget: ReadBudget,
    permit: tokio::sync::OwnedSemaphorePermit,
    standing: Option<Standing>,
) -> Option<(Box<Admitted<F::Service>>, Socket)> {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let first = tokio::select! {
        frame = tokio::time::timeout(edge.config.hello_timeout, socket.next()) => frame,
        () = edge.shutdown.cancelled() => return None,
    };
    let hello = match first {
        Ok(Some(Ok(Message::Text(text)))) => legacy::Hello::parse(text.as_str()),
        _ if budget.spent() => {
            refuse(
                socket,
                "hello too large",
                close::MESSAGE_TOO_BIG,
                "hello too large",
            )
            .await;
            return None;
        }
        _ => None,
    };
    let Some(hello) = hello else {
        // No hello (an MCP message, garbage, or nothing in time): this
        // socket has no credential, and gets nothing else.
        refuse(
            socket,
            "missing_hello",
            close::LEGACY_UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        return None;
    };
    let credential = hello.credential.as_deref().map(Credential::Bearer);
    let principal = match admission::authenticate(&edge, credential).await {
        Ok(principal) => principal,
        Err(error) => {
            admission::refused(&edge, error, None);
            refuse(
                socket,
                "unauthorized",
                close::LEGACY_UNAUTHORIZED,
                "unauthorized",
            )
            .await;
            return None;
        }
    };
    if let Some(standing) = standing {
        standing.authenticated();
    }
    let admitted = match admit(&edge, principal, None, peer, "legacy").await {
        Ok(admitted) => admitted,
        Err(EdgeError::Store(StoreError::LimitReached { .. })) => {
            refuse(
                socket,
                "connection limit reached",
                close::TRY_AGAIN_LATER,
                "connection limit reached",
            )
            .await;
            return None;
        }
        Err(_) => {
            refuse(
                socket,
                "session store unavailable",
                close::TRY_AGAIN_LATER,
                "session store unavailable",
            )
            .await;
            return None;
        }
    };
    budget.lift();
    drop(permit);
    Some((admitted, socket))
}

/// Refuses a legacy socket: `hello_ack {ok: false, error}`, the close
/// frame, then the close that lets the client read them.
async fn refuse(mut socket: Socket, error: &str, code: u16, reason: &'static str) {
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let ack = legacy::hello_refused(error).to_string();
    let _ = socket.feed(Message::Text(ack.into())).await;
    let _ = socket
        .feed(Message::Close(Some(websocket::close_frame(code, reason))))
        .await;
    websocket::close(socket).await;
}
