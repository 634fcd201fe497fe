//! Routes and the authenticated upgrade to MCP over WebSocket.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use axum::routing::get;
use exai_auth::{AuthError, Credential};
use exai_sessions::{OpenSession, SessionMetadata};
use tracing::Instrument;

use crate::error::EdgeError;
use crate::ws::{self, SessionGuard};
use crate::{ConnectionContext, Edge, ServiceFactory};

/// Size of the per-connection read buffer; tungstenite's default (128 KiB)
/// would dominate the memory of an idle connection.
const READ_BUFFER_BYTES: usize = 8 * 1024;

pub(crate) fn router<F: ServiceFactory>(edge: Arc<Edge<F>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/mcp", get(mcp_upgrade::<F>))
        .with_state(edge)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /mcp`: authenticate, open the session (within the user's limit),
/// then upgrade. Nothing is upgraded before all three have succeeded.
async fn mcp_upgrade<F: ServiceFactory>(
    State(edge): State<Arc<Edge<F>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, EdgeError> {
    let principal = edge.auth.authenticate(bearer(&headers)?).await?;
    let upgrade = upgrade.map_err(|_| EdgeError::UpgradeRequired)?;
    let metadata = SessionMetadata::new("websocket", Some(peer.to_string()));
    let request = OpenSession::new(edge.config.max_connections_per_user, metadata);
    let session = edge.store.open(&principal, request).await?;

    let span = tracing::info_span!(
        "connection",
        user_id = %principal.user_id,
        session_id = %session.session_id,
        transport = "websocket",
    );
    let guard = SessionGuard::new(
        edge.store.clone(),
        principal.clone(),
        session.session_id.clone(),
        edge.connections.clone(),
    );
    let context = ConnectionContext {
        principal,
        session_id: session.session_id.clone(),
    };
    let service = edge.factory.service(&context);
    let tracker_token = edge.connections.token();
    let shutdown = edge.shutdown.clone();
    let config = edge.config.clone();
    let mut response = upgrade
        .protocols(["mcp"])
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_message_bytes)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            async move {
                let _counted = tracker_token;
                tracing::info!(peer = %peer, "connection opened");
                ws::run(socket, service, guard, shutdown, config.outbound_queue).await;
            }
            .instrument(span)
        });
    if let Ok(id) = HeaderValue::from_str(session.session_id.as_str()) {
        response.headers_mut().insert("mcp-session-id", id);
    }
    Ok(response)
}

/// The bearer credential of a request. The token itself is never logged.
fn bearer(headers: &HeaderMap) -> Result<Credential<'_>, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(Credential::Bearer(token.trim()))
        }
        _ => Err(AuthError::Missing),
    }
}
