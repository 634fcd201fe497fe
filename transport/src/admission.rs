//! Admission: how a request or a socket becomes a connection of one user.
//!
//! Every path into the edge (the WebSocket upgrade, a legacy `hello`, each
//! Streamable HTTP request) goes through here, in this order:
//!
//! 0. [`check_origin_and_host`]: a browser page from another origin, or a
//!    DNS-rebound name of a loopback daemon, is refused (403) before any
//!    credential is looked at;
//! 1. [`credential`]: the credential a request carries, from its headers;
//! 2. [`authenticate`]: the [`Authenticator`](exai_auth::Authenticator)'s
//!    verdict; a refusal is counted and becomes the challenge the client
//!    is sent ([`refused`]);
//! 3. [`open`]: the user's session opened (or resumed) in the store within
//!    `MCP_MAX_CONNECTIONS_PER_USER`, registered with the lifecycle, and
//!    held by a [`SessionGuard`] that records it closed however the
//!    connection ends.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use exai_auth::{Access, AuthError, Credential, Principal};
use exai_sessions::{OpenSession, SessionClient, SessionId, SessionMetadata, StoreError};
use tokio_util::task::TaskTracker;

use crate::error::EdgeError;
use crate::lifecycle::Lifecycle;
use crate::{ConnectionContext, Edge, EdgeConfig, ServiceFactory};

/// Where this resource describes itself (RFC 9728 §3).
pub(crate) const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The credential of a request: `Authorization: Bearer …` (an access token
/// or an API key), or `X-API-Key: …`, or, for browsers (which cannot set
/// headers on a WebSocket), an `mcp.auth.<token>` entry in
/// `Sec-WebSocket-Protocol`, as the MCP WebSocket proposal (SEP-1288) has
/// it; only `mcp` is ever echoed back. Never from the query string, and
/// never logged.
pub(crate) fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, EdgeError> {
    let malformed = |error| EdgeError::Auth {
        error,
        resource_metadata: None,
    };
    if let Some(credential) = exai_auth::http::credential(headers).map_err(malformed)? {
        return Ok(Some(credential));
    }
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| malformed(AuthError::Malformed))?;
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

/// Authenticates `credential` as a user of the daemon.
pub(crate) async fn authenticate<F: ServiceFactory>(
    edge: &Edge<F>,
    credential: Option<Credential<'_>>,
) -> Result<Principal, AuthError> {
    edge.auth.authenticate(credential, Access::User).await
}

/// A refused credential, counted, as the error the client is sent: with
/// the request's `headers`, a challenge naming this resource's metadata.
pub(crate) fn refused<F: ServiceFactory>(
    edge: &Edge<F>,
    error: AuthError,
    headers: Option<&HeaderMap>,
) -> EdgeError {
    edge.metrics.auth_failure(error.kind());
    EdgeError::Auth {
        error,
        resource_metadata: headers.map(|headers| resource_metadata_url(edge, headers)),
    }
}

/// Authenticates an HTTP request by its headers; a refusal is the
/// challenge to answer with.
pub(crate) async fn authenticate_request<F: ServiceFactory>(
    edge: &Edge<F>,
    headers: &HeaderMap,
) -> Result<Principal, EdgeError> {
    authenticate(edge, credential(headers)?)
        .await
        .map_err(|error| refused(edge, error, Some(headers)))
}

/// This server's base URL: `EXAI_PUBLIC_URL` when set, else from `Host`.
pub(crate) fn base_url<F: ServiceFactory>(edge: &Edge<F>, headers: &HeaderMap) -> String {
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

/// A session opened (or resumed) for one user, registered with the
/// lifecycle; closed in the store when `guard` is closed or dropped.
pub(crate) struct Opened {
    pub(crate) principal: Arc<Principal>,
    pub(crate) session_id: SessionId,
    pub(crate) live: crate::lifecycle::LiveSession,
    pub(crate) guard: SessionGuard,
    pub(crate) span: tracing::Span,
    /// The connection's pace, shared by its handler and its reader.
    pub(crate) pace: crate::Pace,
}

impl Opened {
    /// What the session's MCP handler knows of it.
    pub(crate) fn context(&self) -> ConnectionContext {
        ConnectionContext {
            principal: self.principal.clone(),
            session_id: Some(self.session_id.clone()),
            pace: self.pace.clone(),
        }
    }
}

/// The first check of every request and upgrade, before authentication:
/// `Origin`, when present (browsers always send it; other clients never
/// need to), must be one of `EXAI_ALLOWED_ORIGINS` or the request's own
/// origin on a loopback host (a page served by the daemon's own loopback
/// address); and on a loopback listener `Host` must name the loopback, so
/// a DNS-rebound page cannot reach a local daemon.
pub(crate) fn check_origin_and_host(
    config: &EdgeConfig,
    headers: &HeaderMap,
) -> Result<(), EdgeError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| EdgeError::OriginNotAllowed)?;
        let origin = origin.trim_end_matches('/');
        let listed = config
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
        let allowed = listed || same_origin_loopback(origin, headers);
        if !allowed {
            return Err(EdgeError::OriginNotAllowed);
        }
    }
    if let Some(hosts) = &config.allowed_hosts {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(host_name)
            .ok_or(EdgeError::HostNotAllowed)?;
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Err(EdgeError::HostNotAllowed);
        }
    }
    Ok(())
}

/// The name in a `Host` header, without its port: `[::1]:80` → `::1`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Whether `origin` is `http(s)://HOST[:PORT]` naming a loopback host and
/// equal to the request's `Host`: the page is the daemon's own.
fn same_origin_loopback(origin: &str, headers: &HeaderMap) -> bool {
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
        && matches!(
            host_name(authority).to_ascii_lowercase().as_str(),
            "localhost" | "127.0.0.1" | "::1"
        )
}

/// Opens (or resumes) `principal`'s session within the user's connection
/// limit.
pub(crate) async fn open<F: ServiceFactory>(
    edge: &Edge<F>,
    principal: Principal,
    resume: Option<SessionId>,
    peer: SocketAddr,
    transport: &'static str,
    client: Option<SessionClient>,
) -> Result<Opened, EdgeError> {
    let limit = edge.config.max_connections_per_user;
    let resuming = resume.is_some();
    let attempt = async || match &resume {
        // Resuming one of the caller's own sessions: another user's id, an
        // expired one and a made-up one all answer 404 alike.
        Some(id) => edge.store.resume(&principal, id, limit).await,
        None => {
            let mut metadata = SessionMetadata::new(transport, Some(peer.to_string()));
            if let Some(client) = client.clone() {
                metadata = metadata.with_client(client);
            }
            edge.store
                .open(&principal, OpenSession::new(limit, metadata))
                .await
        }
    };
    let mut opened = attempt().await;
    // At the cap, an HTTP session of this user's that nobody uses (its
    // client left without DELETE) makes room, least recently used first.
    while matches!(opened, Err(StoreError::LimitReached { .. }))
        && edge
            .http_sessions
            .close_idle(principal.user_id, edge.config.http_idle_grace)
            .await
    {
        opened = attempt().await;
    }
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
    edge.lifecycle.settle_idle(principal.user_id).await;

    let span = tracing::info_span!(
        "connection",
        user_id = %principal.user_id,
        session_id = %session.session_id,
        transport,
    );
    // An HTTP session is in use only while it has a request or a stream;
    // a WebSocket, while its socket is open.
    let idle_grace =
        (transport == crate::streamable::TRANSPORT).then_some(edge.config.http_idle_grace);
    let live = edge
        .lifecycle
        .attach(&principal, &session.session_id, idle_grace);
    let principal = Arc::new(principal);
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
        pace: crate::Pace::default(),
    })
}

/// Ends a session when the connection ends, however it ends: explicitly
/// through [`SessionGuard::close`], or on drop (a panic, a failed upgrade)
/// through a task the edge waits for at shutdown.
pub(crate) struct SessionGuard {
    session: Option<(Arc<Lifecycle>, Arc<Principal>, SessionId)>,
    tracker: TaskTracker,
}

impl SessionGuard {
    pub(crate) fn new(
        lifecycle: Arc<Lifecycle>,
        principal: Arc<Principal>,
        session: SessionId,
        tracker: TaskTracker,
    ) -> Self {
        SessionGuard {
            session: Some((lifecycle, principal, session)),
            tracker,
        }
    }

    pub(crate) async fn close(mut self) {
        if let Some((lifecycle, principal, session)) = self.session.take() {
            lifecycle.detach(principal, session).await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some((lifecycle, principal, session)) = self.session.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.tracker.spawn_on(
                    async move { lifecycle.detach(principal, session).await },
                    &runtime,
                );
            }
            Err(_) => tracing::warn!(
                session_id = %session,
                "no runtime to record the session as closed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
    }

    #[test]
    fn origin_and_host_rules() {
        let mut config = EdgeConfig {
            allowed_origins: vec!["http://localhost:6274".into()],
            allowed_hosts: Some(vec!["localhost".into(), "127.0.0.1".into()]),
            ..EdgeConfig::default()
        };
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let ok = |c: &EdgeConfig, h: HeaderMap| check_origin_and_host(c, &h).is_ok();
        assert!(ok(&config, headers(&[("host", "127.0.0.1:9")])));
        assert!(ok(
            &config,
            headers(&[("host", "localhost:9"), ("origin", "http://LOCALHOST:6274")])
        ));
        assert!(!ok(
            &config,
            headers(&[("host", "localhost:9"), ("origin", "http://evil.example")])
        ));
        assert!(!ok(&config, headers(&[("host", "evil.example:9")])));
        assert!(!ok(&config, headers(&[])));
        // A loopback daemon's own pages: same origin, by default.
        assert!(ok(
            &config,
            headers(&[("host", "127.0.0.1:9"), ("origin", "http://127.0.0.1:9")])
        ));
        assert!(ok(
            &config,
            headers(&[("host", "localhost:9"), ("origin", "http://localhost:9/")])
        ));
        assert!(
            !ok(
                &config,
                headers(&[("host", "localhost:9"), ("origin", "http://localhost:10")])
            ),
            "another port is another origin"
        );
        assert!(
            !ok(
                &config,
                headers(&[("host", "localhost:9"), ("origin", "http://127.0.0.1:9")])
            ),
            "another name is another origin"
        );
        config.allowed_hosts = None;
        assert!(
            !ok(
                &config,
                headers(&[
                    ("host", "exai.example:9"),
                    ("origin", "http://exai.example:9")
                ])
            ),
            "same origin is only granted on loopback"
        );
        assert!(ok(&config, headers(&[("host", "evil.example")])));
        config.allowed_origins.clear();
        assert!(!ok(
            &config,
            headers(&[("origin", "http://localhost:6274")])
        ));
    }
}
