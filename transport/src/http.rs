//! Routes: `/mcp` (a WebSocket upgrade goes to [`upgrade`], anything else
//! to [`streamable`]), the protected-resource metadata, and the operators'
//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::admission::{self, METADATA_PATH};
use crate::error::EdgeError;
use crate::listener::Standing;
use crate::websocket::Upgrade;
use crate::{Edge, ServiceFactory, streamable, upgrade};

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

/// The exposed registry, in the Prometheus text format; 404 when the
/// caller exposes none.
async fn metrics<F: ServiceFactory>(State(edge): State<Arc<Edge<F>>>) -> Response {
    let Some(registry) = &edge.exposition else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Ready when the session store answers, a signing key is loaded and this
/// daemon's heartbeat is current; else 503 naming what is not.
async fn readyz<F: ServiceFactory>(State(edge): State<Arc<Edge<F>>>) -> Response {
    let mut problems = Vec::new();
    if let Err(error) = edge.store.check().await {
        problems.push(format!("session store: {error}"));
    }
    if !edge.auth.ready() {
        problems.push("signing keys: none loaded".to_owned());
    }
    let (age, current) = edge.lifecycle.heartbeat_age();
    if !current {
        problems.push(format!(
            "node heartbeat: last written {} s ago, past the node timeout (other daemons may \
             have freed this one's sessions)",
            age.as_secs()
        ));
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
    mut request: Request,
) -> Result<Response, EdgeError> {
    match Upgrade::of(&mut request) {
        Upgrade::Valid(handshake) => {
            let standing = request.extensions().get::<Standing>().cloned();
            upgrade::websocket(edge, peer, request.headers(), handshake, standing).await
        }
        // It asks for a WebSocket but is not a valid upgrade (a missing
        // key or version): told what a valid one needs, not served as HTTP.
        Upgrade::Invalid => Err(EdgeError::UpgradeRequired),
        Upgrade::No => streamable::handle(&edge, peer, request).await,
    }
}

/// RFC 9728 protected-resource metadata: what this resource is and which
/// authorization server (Supabase Auth) issues tokens for it.
async fn resource_metadata<F: ServiceFactory>(
    State(edge): State<Arc<Edge<F>>>,
    headers: HeaderMap,
) -> Response {
    let base = admission::base_url(&edge, &headers);
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
