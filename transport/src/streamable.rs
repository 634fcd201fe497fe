//! MCP over Streamable HTTP: `POST`, `GET` (without `Upgrade`) and `DELETE`
//! on `/mcp`, as the MCP specification defines the transport.
//!
//! `rmcp`'s `StreamableHttpService` speaks the protocol (JSON or SSE
//! answers, `MCP-Protocol-Version`, the standalone `GET` stream, stateless
//! 2026-07-28 requests). This module puts exai's rules around it:
//!
//! - `Origin` and, on a loopback listener, `Host` are checked first (403);
//! - every request is authenticated on its own: a session id is never a
//!   credential;
//! - an `initialize` opens a session in the store, within the user's limit
//!   (429), before `rmcp` sees it, and `rmcp`'s session takes the store's
//!   id, so `Mcp-Session-Id` is the id `exai sessions list` shows;
//! - a session id answers only its own user: another user's, an ended one
//!   and an unknown one are all 404, alike;
//! - the session ends (and is recorded as ended) on `DELETE`, when it
//!   expires or is killed (404 from then on), and at shutdown.
//!
//! `rmcp` builds a session's handler with a factory that takes no
//! arguments; the request being served is handed to it, and to
//! [`HttpSessions::create_session`], through the task-local [`REQUEST`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use exai_auth::UserId;
use exai_sessions::{SessionClient, StoreError};
use futures::{Stream, StreamExt as _};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::{
    RestoreOutcome, ServerSseMessage, SessionId as RmcpSessionId, SessionManager,
};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::admission::{self, Opened, SessionGuard};
use crate::error::EdgeError;
use crate::framing::{self, Decoded};
use crate::lifecycle::LiveSession;
use crate::{ConnectionContext, Edge, EdgeConfig, EdgeMetrics, ServiceFactory};

/// The transport label of sessions opened over HTTP.
pub(crate) const TRANSPORT: &str = "http";

tokio::task_local! {
    /// The request `rmcp` is serving, for its handler factory and for
    /// [`HttpSessions::create_session`].
    static REQUEST: Arc<RequestScope>;
}

/// What one HTTP request brings to `rmcp`.
struct RequestScope {
    context: ConnectionContext,
    /// For an `initialize`: the protocol version the client asked for.
    protocol: Option<String>,
    /// For an `initialize`: the session opened for it, until
    /// `create_session` takes it.
    opening: Mutex<Option<Opened>>,
}

/// `rmcp`'s Streamable HTTP service, with exai's sessions.
pub(crate) type HttpService<S> = StreamableHttpService<S, HttpSessions>;

/// Builds the service: handlers come from `factory`, for the request in
/// [`REQUEST`].
pub(crate) fn service<F: ServiceFactory>(
    factory: Arc<F>,
    sessions: Arc<HttpSessions>,
    config: &EdgeConfig,
    shutdown: CancellationToken,
) -> HttpService<F::Service> {
    let rmcp_config = StreamableHttpServerConfig::default()
        // Host and Origin are checked by `check_origin_and_host`, before
        // authentication, so that a refused request opens nothing.
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(config.max_message_bytes)
        .with_sse_keep_alive(Some(config.ping_interval))
        .with_cancellation_token(shutdown);
    StreamableHttpService::new(
        move || {
            REQUEST
                .try_with(|request| factory.service(&request.context))
                .map_err(|_| std::io::Error::other("no request in scope"))
        },
        sessions,
        rmcp_config,
    )
}

/// Serves one Streamable HTTP request.
pub(crate) async fn handle<F: ServiceFactory>(
    edge: &Edge<F>,
    peer: SocketAddr,
    request: Request<Body>,
) -> Result<Response, EdgeError> {
    admission::check_origin_and_host(&edge.config, request.headers())?;
    let principal = admission::authenticate_request(edge, request.headers()).await?;
    if let Some(standing) = request.extensions().get::<crate::listener::Standing>() {
        standing.authenticated();
    }
    // A stream outlives its request: it ends when the credential does, as
    // a WebSocket is closed then (the client reconnects with a fresh one).
    let expires_at = principal.expires_at;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, edge.config.max_message_bytes)
        .await
        .map_err(|_| EdgeError::TooLarge)?;
    let bound = match parts.headers.get("mcp-session-id") {
        Some(id) => {
            let id = id.to_str().map_err(|_| StoreError::NotFound)?;
            let bound = edge
                .http_sessions
                .context(principal.user_id, id)
                .ok_or(StoreError::NotFound)?;
            Some(bound)
        }
        None => None,
    };
    // A body that is not one JSON-RPC message is answered as on a
    // WebSocket (`framing`), with 400; rmcp sees only messages. A batch is
    // one only in a 2025-03-26 session.
    let mut initialize = None;
    // Whether this POST carries a request, which the shutdown grace
    // period waits for until its answer is sent.
    let mut answering = false;
    if parts.method == Method::POST {
        let text = std::str::from_utf8(&body).unwrap_or("\u{fffd}");
        if let Some((context, Some(protocol))) = &bound
            && protocol == framing::BATCH_VERSION
            && text.trim_start().starts_with('[')
        {
            let scope = Arc::new(RequestScope {
                context: context.clone(),
                protocol: None,
                opening: Mutex::new(None),
            });
            let counted = edge.http_in_flight.token();
            return Ok(counted_until_sent(
                batch(edge, &parts, text, scope).await,
                counted,
            ));
        }
        match framing::decode(text) {
            // The edge's own method: over HTTP every request brings its own
            // credential, so there is nothing to refresh, and its token
            // must not reach the MCP server (which logs it).
            Decoded::Message(message) if framing::is_refresh(&message) => {
                return Ok(refresh_over_http(&message));
            }
            Decoded::Message(message) => {
                initialize = initialize_of(&message);
                answering = matches!(*message, ClientJsonRpcMessage::Request(_));
            }
            Decoded::Reply(error) => return Ok(invalid(Some(&error))),
            Decoded::Drop(_) => return Ok(invalid(None)),
        }
    }

    let counted = answering.then(|| edge.http_in_flight.token());
    let scope = match (bound, initialize) {
        (Some((context, _)), _) => RequestScope {
            context,
            protocol: None,
            opening: Mutex::new(None),
        },
        (None, Some((protocol, client))) => {
            let opened =
                admission::open(edge, principal, None, peer, TRANSPORT, Some(client)).await?;
            RequestScope {
                context: opened.context(),
                protocol: Some(protocol),
                opening: Mutex::new(Some(opened)),
            }
        }
        // Stateless (2026-07-28), or refused by rmcp for want of a session.
        (None, None) => RequestScope {
            context: ConnectionContext {
                principal,
                session_id: None,
                pace: crate::Pace::default(),
            },
            protocol: None,
            opening: Mutex::new(None),
        },
    };
    let scope = Arc::new(scope);
    let deleting = parts.method == Method::DELETE;
    let streaming = parts.method == Method::GET;
    let request = Request::from_parts(parts, Body::from(body));
    let response = REQUEST
        .scope(scope.clone(), edge.http.handle(request))
        .await;
    // An `initialize` that rmcp refused before making a session for it: the
    // session opened for it ends now.
    let unclaimed = lock(&scope.opening).take();
    if let Some(opened) = unclaimed {
        opened.guard.close().await;
    }
    let mut response = response.map(Body::new);
    if streaming && let Some(deadline) = crate::deadline(expires_at) {
        response = until(response, deadline);
    }
    if let Some(counted) = counted {
        response = counted_until_sent(response, counted);
    }
    if deleting && response.status() == StatusCode::ACCEPTED {
        // The session is gone, not queued to go: 204, which the SDKs expect
        // (the Python SDK warns about rmcp's 202).
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    Ok(response)
}

/// The protocol version an `initialize` asks for and the client it names;
/// `None` for any other message.
fn initialize_of(message: &ClientJsonRpcMessage) -> Option<(String, SessionClient)> {
    match message {
        ClientJsonRpcMessage::Request(request) => match &request.request {
            ClientRequest::InitializeRequest(initialize) => {
                let params = &initialize.params;
                Some((
                    params.protocol_version.as_str().to_owned(),
                    SessionClient::new(&params.client_info.name, &params.client_info.version),
                ))
            }
            _ => None,
        },
        _ => None,
    }
}

/// A batch in a 2025-03-26 session: each member goes to rmcp as a request
/// of its own (in the same session, at once), invalid members and
/// `initialize` are answered in place, and the answers come back as one
/// JSON array (202 when there are none).
async fn batch<F: ServiceFactory>(
    edge: &Edge<F>,
    parts: &axum::http::request::Parts,
    text: &str,
    scope: Arc<RequestScope>,
) -> Response {
    use axum::response::IntoResponse;
    let alone = ["initialize", framing::REFRESH];
    let batch = match framing::split_batch(text, &alone, edge.config.max_batch_members) {
        Ok(batch) => batch,
        Err(error) => return invalid(Some(&error)),
    };
    let mut answers: Vec<serde_json::Value> =
        batch.answers.iter().map(|a| serde_json::json!(a)).collect();
    let limit = edge.config.max_message_bytes;
    let mut calls = Vec::new();
    for message in batch.messages {
        let id = match &message {
            ClientJsonRpcMessage::Request(request) => serde_json::to_value(&request.id).ok(),
            _ => None,
        };
        let member = serde_json::to_string(&message).unwrap_or_default();
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(parts.uri.clone())
            .body(Body::from(member))
            .expect("a valid request");
        *request.headers_mut() = parts.headers.clone();
        let response = REQUEST.scope(scope.clone(), edge.http.handle(request));
        calls.push(async move { answer_in(response.await.map(Body::new), &id?, limit).await });
    }
    answers.extend(futures::future::join_all(calls).await.into_iter().flatten());
    if answers.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Array(answers).to_string(),
    )
        .into_response()
}

/// `response`, its body ended at `deadline`.
fn until(response: Response, deadline: tokio::time::Instant) -> Response {
    use futures::StreamExt as _;
    response.map(|body| {
        Body::from_stream(
            body.into_data_stream()
                .take_until(tokio::time::sleep_until(deadline)),
        )
    })
}

/// `response`, holding `counted` until its body was sent (or the client
/// went away).
fn counted_until_sent(response: Response, counted: TaskTrackerToken) -> Response {
    use futures::StreamExt as _;
    response.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _counted = &counted;
            chunk
        }))
    })
}

/// The answer to request `id` in rmcp's `response`: an event of its SSE
/// stream (read up to that event), or a JSON body.
async fn answer_in(
    response: Response,
    id: &serde_json::Value,
    limit: usize,
) -> Option<serde_json::Value> {
    use futures::StreamExt as _;
    let is_answer = |m: &serde_json::Value| {
        m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some())
    };
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if sse {
        let mut events = sse_stream::SseStream::new(response.into_body());
        while let Some(Ok(event)) = events.next().await {
            let message = event.data.and_then(|d| serde_json::from_str(&d).ok());
            if let Some(message) = message.filter(is_answer) {
                return Some(message);
            }
        }
        return None;
    }
    let body = axum::body::to_bytes(response.into_body(), limit)
        .await
        .ok()?;
    serde_json::from_slice(&body).ok().filter(is_answer)
}

/// The answer to `auth/refresh` over HTTP: -32601 to a request, 202 to a
/// notification.
fn refresh_over_http(message: &ClientJsonRpcMessage) -> Response {
    use axum::response::IntoResponse;
    let ClientJsonRpcMessage::Request(request) = message else {
        return StatusCode::ACCEPTED.into_response();
    };
    let error = rmcp::model::ErrorData::new(
        rmcp::model::ErrorCode::METHOD_NOT_FOUND,
        "auth/refresh is for WebSocket connections; over HTTP every request carries its own credential",
        None,
    );
    let body = ServerJsonRpcMessage::error(error, Some(request.id.clone()));
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response()
}

/// 400, with the JSON-RPC error when there is one to send.
fn invalid(error: Option<&ServerJsonRpcMessage>) -> Response {
    use axum::response::IntoResponse;
    match error.and_then(|e| serde_json::to_string(e).ok()) {
        Some(body) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        None => (StatusCode::BAD_REQUEST, "malformed notification\n").into_response(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The HTTP sessions this daemon holds: `rmcp`'s in-memory sessions, each
/// bound to the user and store session it was opened for.
pub(crate) struct HttpSessions {
    local: LocalSessionManager,
    bound: Mutex<HashMap<RmcpSessionId, Bound>>,
    metrics: Arc<EdgeMetrics>,
    /// Counts open sessions, so shutdown waits for their closes.
    tracker: tokio_util::task::TaskTracker,
    this: Weak<HttpSessions>,
}

struct Bound {
    user: UserId,
    context: ConnectionContext,
    /// Streams open in this session (a request's answer, the GET stream):
    /// while any is, the session is in use.
    streams: Arc<AtomicUsize>,
    /// The protocol version the client asked for in `initialize`.
    protocol: Option<String>,
    live: LiveSession,
    guard: SessionGuard,
    span: tracing::Span,
    _counted: TaskTrackerToken,
}

impl HttpSessions {
    pub(crate) fn new(
        metrics: Arc<EdgeMetrics>,
        tracker: tokio_util::task::TaskTracker,
    ) -> Arc<Self> {
        let mut local = LocalSessionManager::default();
        // Idle sessions are expired by the lifecycle (MCP_SESSION_TIMEOUT),
        // which also records it; rmcp's own idle timer would not.
        local.session_config.keep_alive = None;
        Arc::new_cyclic(|this| HttpSessions {
            local,
            bound: Mutex::default(),
            metrics,
            tracker,
            this: this.clone(),
        })
    }

    /// Closes `user`'s least recently used session held here that has had
    /// no stream open and no request for `grace`, to make room for a new
    /// connection at the user's cap; whether one was closed.
    pub(crate) async fn close_idle(&self, user: UserId, grace: Duration) -> bool {
        let oldest = lock(&self.bound)
            .iter()
            .filter(|(_, s)| s.user == user && s.streams.load(Ordering::Acquire) == 0)
            .map(|(id, s)| (s.live.idle_for(), id.clone(), s.span.clone()))
            .filter(|(idle, _, _)| *idle >= grace)
            .max_by_key(|(idle, _, _)| *idle);
        let Some((idle, id, span)) = oldest else {
            return false;
        };
        span.in_scope(|| {
            tracing::info!(
                idle_secs = idle.as_secs(),
                "closing an idle http session to make room at its user's connection limit"
            );
        });
        self.metrics.session_event("idle_http_closed");
        let _ = self.close_session(&id).await;
        true
    }

    /// `stream`, counted among session `id`'s open streams until dropped.
    fn counted<S: Stream + Send + Sync + 'static>(
        &self,
        id: &RmcpSessionId,
        stream: S,
    ) -> impl Stream<Item = S::Item> + Send + Sync + 'static {
        let open = lock(&self.bound)
            .get(id)
            .map(|s| OpenStream::new(&s.streams));
        stream.inspect(move |_| {
            let _ = &open;
        })
    }

    /// The context and protocol version of session `id` if it is
    /// `user`'s, recording activity.
    fn context(&self, user: UserId, id: &str) -> Option<(ConnectionContext, Option<String>)> {
        let bound = lock(&self.bound);
        let session = bound.get(id).filter(|s| s.user == user)?;
        session.live.record_activity();
        Some((session.context.clone(), session.protocol.clone()))
    }
}

/// One open stream of a session, counted while it lives.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::AcqRel);
        OpenStream(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why an HTTP session could not be made or used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpSessionError {
    #[error("no session was opened for this request")]
    NotOpened,
    #[error("a session with this id already exists")]
    Duplicate,
    #[error(transparent)]
    Local(
        #[from] rmcp::transport::streamable_http_server::session::local::LocalSessionManagerError,
    ),
}

impl SessionManager for HttpSessions {
    type Error = HttpSessionError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(RmcpSessionId, Self::Transport), Self::Error> {
        let (opened, protocol) = REQUEST
            .try_with(|request| {
                lock(&request.opening)
                    .take()
                    .map(|opened| (opened, request.protocol.clone()))
            })
            .ok()
            .flatten()
            .ok_or(HttpSessionError::NotOpened)?;
        let id: RmcpSessionId = opened.session_id.as_str().into();
        let transport = match self.local.restore_session(id.clone()).await? {
            RestoreOutcome::Restored(transport) => transport,
            _ => {
                opened.guard.close().await;
                return Err(HttpSessionError::Duplicate);
            }
        };
        // When the lifecycle ends the session (expired, killed, key
        // revoked), end rmcp's too; from then on its id is unknown.
        let ended = opened.live.ended.clone();
        let this = self.this.clone();
        let watched = id.clone();
        tokio::spawn(async move {
            ended.cancelled().await;
            if let Some(sessions) = this.upgrade() {
                let _ = sessions.close_session(&watched).await;
            }
        });
        let context = opened.context();
        let Opened {
            principal,
            live,
            guard,
            span,
            ..
        } = opened;
        span.in_scope(|| tracing::info!("http session opened"));
        self.metrics.connection_opened(TRANSPORT);
        lock(&self.bound).insert(
            id.clone(),
            Bound {
                user: principal.user_id,
                context,
                streams: live.streams.clone(),
                protocol,
                live,
                guard,
                span,
                _counted: self.tracker.token(),
            },
        );
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &RmcpSessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.local.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &RmcpSessionId) -> Result<bool, Self::Error> {
        Ok(self.local.has_session(id).await?)
    }

    /// Ends session `id`: on `DELETE`, when the lifecycle ended it, when
    /// its rmcp worker stopped, and at shutdown. Safe to call twice.
    async fn close_session(&self, id: &RmcpSessionId) -> Result<(), Self::Error> {
        let bound = lock(&self.bound).remove(id);
        let result = self.local.close_session(id).await;
        if let Some(bound) = bound {
            bound.live.ended.cancel();
            bound
                .span
                .in_scope(|| tracing::info!("http session closed"));
            self.metrics.connection_closed(TRANSPORT);
            bound.guard.close().await;
        }
        Ok(result?)
    }

    async fn create_stream(
        &self,
        id: &RmcpSessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.local.create_stream(id, message).await?;
        Ok(self.counted(id, stream))
    }

    async fn accept_message(
        &self,
        id: &RmcpSessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        Ok(self.local.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &RmcpSessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.local.create_standalone_stream(id).await?;
        Ok(self.counted(id, stream))
    }

    async fn resume(
        &self,
        id: &RmcpSessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.local.resume(id, last_event_id).await?;
        Ok(self.counted(id, stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_is_recognised_and_nothing_else() {
        let check = |text: &str| match framing::decode(text) {
            Decoded::Message(message) => initialize_of(&message).is_some(),
            _ => false,
        };
        assert!(check(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#
        ));
        assert!(!check(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#));
        assert!(!check(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
        ));
    }
}
