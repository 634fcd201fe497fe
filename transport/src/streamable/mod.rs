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

mod early;
mod sessions;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use exai_sessions::{SessionClient, StoreError};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

pub(crate) use sessions::HttpSessions;
use sessions::KeptHandler;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::admission::{self, Opened};
use crate::error::EdgeError;
use crate::framing::{self, Decoded};
use crate::{ConnectionContext, Edge, EdgeConfig, ServiceFactory};

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
    /// The session's handler: for an `initialize`, the one made for it
    /// (until `create_session` keeps it); for a suspended session, the one
    /// kept, which the restored service is to run.
    handler: Mutex<Option<KeptHandler>>,
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
    // Suspended sessions are restored from the bindings (`HttpSessions`).
    let mut rmcp_config = rmcp_config;
    rmcp_config.session_store = Some(sessions.clone());
    StreamableHttpService::new(
        move || {
            REQUEST
                .try_with(|request| {
                    let kept = lock(&request.handler).clone();
                    if let Some(kept) = kept
                        && let Ok(handler) = kept.downcast::<F::Service>()
                    {
                        return (*handler).clone();
                    }
                    let handler = factory.service(&request.context);
                    if lock(&request.opening).is_some() {
                        *lock(&request.handler) = Some(Arc::new(handler.clone()));
                    }
                    handler
                })
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
    // period waits for until its answer is sent; and its id.
    let mut answering = false;
    let mut request_id = None;
    if parts.method == Method::POST {
        let text = std::str::from_utf8(&body).unwrap_or("\u{fffd}");
        if let Some((context, Some(protocol), kept)) = &bound
            && protocol == framing::BATCH_VERSION
            && text.trim_start().starts_with('[')
        {
            let scope = Arc::new(RequestScope {
                context: context.clone(),
                protocol: None,
                opening: Mutex::new(None),
                handler: Mutex::new(kept.clone()),
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
                if let ClientJsonRpcMessage::Request(request) = &*message {
                    answering = true;
                    request_id = serde_json::to_value(&request.id).ok();
                }
            }
            Decoded::Reply(error) => return Ok(invalid(Some(&error))),
            Decoded::Drop(_) => return Ok(invalid(None)),
        }
    }

    let counted = answering.then(|| edge.http_in_flight.token());
    // A stateless request (2026-07-28): no session, no handshake.
    let stateless = answering && bound.is_none() && initialize.is_none();
    // The session's protocol version (the one asked for, for an
    // `initialize`): priming events are for 2025-11-25 and later only.
    let version = match (&bound, &initialize) {
        (Some((_, protocol, _)), _) => protocol.clone(),
        (None, Some((protocol, _))) => Some(protocol.clone()),
        (None, None) => None,
    };
    let primes = version.is_none_or(|v| v.as_str() >= PRIMING_SINCE);
    let scope = match (bound, initialize) {
        (Some((context, _, kept)), _) => RequestScope {
            context,
            protocol: None,
            opening: Mutex::new(None),
            handler: Mutex::new(kept),
        },
        (None, Some((protocol, client))) => {
            let opened =
                admission::open(edge, principal, None, peer, TRANSPORT, Some(client)).await?;
            RequestScope {
                context: opened.context(),
                protocol: Some(protocol),
                opening: Mutex::new(Some(opened)),
                handler: Mutex::new(None),
            }
        }
        // Stateless (2026-07-28), or refused by rmcp for want of a session.
        (None, None) => RequestScope {
            context: ConnectionContext {
                principal: Arc::new(principal),
                session_id: None,
                pace: crate::Pace::default(),
            },
            protocol: None,
            opening: Mutex::new(None),
            handler: Mutex::new(None),
        },
    };
    let scope = Arc::new(scope);
    let deleting = parts.method == Method::DELETE;
    let streaming = parts.method == Method::GET;
    let request = Request::from_parts(parts, Body::from(body));
    let http = edge.http.clone();
    let answer = REQUEST.scope(scope.clone(), async move {
        http.handle(request).await.map(Body::new)
    });
    let response = if stateless {
        early::answer_early(answer, edge.config.ping_interval, request_id).await
    } else {
        answer.await
    };
    // An `initialize` that rmcp refused before making a session for it: the
    // session opened for it ends now.
    let unclaimed = lock(&scope.opening).take();
    if let Some(opened) = unclaimed {
        opened.guard.close().await;
    }
    let mut response = response;
    if !primes {
        response = without_priming(response);
    }
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

/// The first protocol version whose clients expect SSE priming events (an
/// event with an id and no data, to resume from). Older clients read one
/// as a message and fail on it (TypeScript SDK 1.17: "Unexpected end of
/// JSON input"; Python SDK 1.12: "Error parsing SSE message"), as the
/// TypeScript SDK's own server knows, which sends them only from here on.
const PRIMING_SINCE: &str = "2025-11-25";

/// Whether an SSE frame is a priming event: data lines, all empty, beside
/// an id or a retry, and no event name.
fn is_priming(frame: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(frame) else {
        return false;
    };
    let mut data = false;
    for line in text.lines() {
        match line
            .split_once(':')
            .map_or((line, ""), |(field, value)| (field, value))
        {
            ("", "") => {}
            ("data", value) if value.trim().is_empty() => data = true,
            ("id" | "retry", _) => {}
            _ => return false,
        }
    }
    data
}

/// `response` without the SSE priming events `rmcp` sends in every
/// session, for sessions of protocol versions before [`PRIMING_SINCE`].
fn without_priming(response: Response) -> Response {
    use futures::StreamExt as _;
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if !is_sse {
        return response;
    }
    response.map(|body| {
        Body::from_stream(body.into_data_stream().filter(|frame| {
            let keep = frame.as_ref().map_or(true, |bytes| !is_priming(bytes));
            std::future::ready(keep)
        }))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priming_events_are_told_from_messages_and_pings() {
        assert!(is_priming(b"data: \nid: 0/0\nretry: 3000\n\n"));
        assert!(is_priming(b"data:\nid: 0\n\n"));
        assert!(!is_priming(b"data: {\"jsonrpc\":\"2.0\"}\nid: 1\n\n"));
        assert!(!is_priming(b":\n\n"), "a keep-alive comment");
        assert!(!is_priming(b"event: message\ndata: \n\n"), "a named event");
        assert!(!is_priming(b"id: 3\nretry: 10\n\n"), "no data line");
    }

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
