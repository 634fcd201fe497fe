//! The one place where failures become HTTP statuses, WebSocket close codes
//! and JSON-RPC error codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use exai_auth::AuthError;
use exai_sessions::StoreError;

/// Why a request was refused before any upgrade.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EdgeError {
    /// A refused credential; `resource_metadata` is the URL of this
    /// resource's RFC 9728 metadata, named in the challenge.
    #[error("{error}")]
    Auth {
        error: AuthError,
        resource_metadata: Option<String>,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("this endpoint speaks MCP over WebSocket: send an Upgrade: websocket request")]
    UpgradeRequired,
    /// A request body over `EXAI_WS_MAX_BYTES`.
    #[error("request body too large")]
    TooLarge,
    /// A browser page from an origin not in `EXAI_ALLOWED_ORIGINS`.
    #[error("origin not allowed (see EXAI_ALLOWED_ORIGINS)")]
    OriginNotAllowed,
    /// A loopback daemon addressed by another name (DNS rebinding).
    #[error("host not allowed")]
    HostNotAllowed,
    /// Too many connections are waiting to authenticate.
    #[error("too many connections waiting to authenticate; retry shortly")]
    Busy,
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        let reason = self.to_string();
        let (status, challenge) = match &self {
            // Supabase's rules for a refused credential, as exai-auth's
            // HTTP layer answers them.
            EdgeError::Auth {
                error,
                resource_metadata,
            } => exai_auth::http::refusal(error, resource_metadata.as_deref()),
            EdgeError::Store(StoreError::LimitReached { .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, None)
            }
            EdgeError::Store(StoreError::NotFound) => (StatusCode::NOT_FOUND, None),
            EdgeError::Store(StoreError::UnknownUser) => (StatusCode::FORBIDDEN, None),
            EdgeError::Store(StoreError::Conflict(_)) => (StatusCode::CONFLICT, None),
            EdgeError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
            EdgeError::UpgradeRequired => (StatusCode::UPGRADE_REQUIRED, None),
            EdgeError::Busy => (StatusCode::SERVICE_UNAVAILABLE, None),
            EdgeError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, None),
            EdgeError::OriginNotAllowed | EdgeError::HostNotAllowed => {
                (StatusCode::FORBIDDEN, None)
            }
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, source = ?std::error::Error::source(&self), "request refused");
        } else {
            tracing::info!(status = status.as_u16(), reason = %reason, "request refused");
        }
        let mut response = (status, format!("{reason}\n")).into_response();
        let headers = response.headers_mut();
        if let Some(challenge) = challenge {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if status == StatusCode::UPGRADE_REQUIRED {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        if let EdgeError::Store(StoreError::LimitReached { .. }) = &self {
            // A slot frees when one of the user's connections closes (or
            // its daemon is presumed dead): no time is certain, so a pace
            // for polite retries.
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(LIMIT_RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// `Retry-After` on a `429` for the per-user connection limit, in seconds.
pub(crate) const LIMIT_RETRY_AFTER_SECS: &str = "10";

/// WebSocket close codes (RFC 6455 §7.4.1) the edge uses.
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client sent a binary frame; MCP messages are text.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message larger than `EXAI_WS_MAX_BYTES`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A ping went unanswered for `EXAI_WS_PING_TIMEOUT` (as other servers
    /// close a dead keep-alive).
    pub const PING_TIMEOUT: u16 = 1011;
    /// The MCP session behind the socket ended.
    pub const NORMAL: u16 = 1000;
    /// The credential that opened the connection expired (reconnect with a
    /// fresh one).
    pub const TOKEN_EXPIRED: u16 = 4401;
    /// An in-band refresh offered another user's credential.
    pub const OTHER_USER: u16 = 4403;
    /// No MCP request for longer than the session timeout.
    pub const SESSION_TIMED_OUT: u16 = 4408;
    /// An administrator killed the session.
    pub const SESSION_KILLED: u16 = 4410;
    /// A limit or an unavailable store refused the legacy protocol's
    /// `hello` (RFC 6455's "try again later").
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The legacy protocol's `hello` was missing, or its credential was
    /// refused (the code the original daemon used).
    pub const LEGACY_UNAUTHORIZED: u16 = 4003;
}

/// The JSON-RPC error codes the edge answers with itself (the standard
/// ones come from rmcp), in the range JSON-RPC reserves for servers. The
/// daemon's tools and `exai connect` keep theirs beside their own code
/// (`exai_daemon::jsonrpc`, `exai_cli::jsonrpc`); none reuses another's.
pub mod jsonrpc {
    /// `auth/refresh` with a credential that does not verify.
    pub const INVALID_CREDENTIAL: i32 = -32001;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let check = |e: EdgeError, status: u16, challenge: Option<&str>| {
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(
                r.headers()
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap()),
                challenge
            );
        };
        let auth = |error| EdgeError::Auth {
            error,
            resource_metadata: None,
        };
        check(
            EdgeError::Auth {
                error: AuthError::Expired,
                resource_metadata: Some("http://h/.well-known/oauth-protected-resource".into()),
            },
            401,
            Some(
                r#"Bearer error="invalid_token", error_description="token expired", resource_metadata="http://h/.well-known/oauth-protected-resource""#,
            ),
        );
        check(auth(AuthError::Unavailable), 503, None);
        check(
            auth(AuthError::RoleNotAllowed("service_role".into())),
            403,
            Some(
                r#"Bearer error="insufficient_scope", error_description="role 'service_role' is not allowed""#,
            ),
        );
        check(StoreError::LimitReached { limit: 5 }.into(), 429, None);
        let limited = EdgeError::from(StoreError::LimitReached { limit: 5 }).into_response();
        assert_eq!(
            limited.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static(LIMIT_RETRY_AFTER_SECS))
        );
        check(StoreError::Unavailable("db down".into()).into(), 503, None);
        check(EdgeError::UpgradeRequired, 426, None);
        check(EdgeError::TooLarge, 413, None);
        check(EdgeError::OriginNotAllowed, 403, None);
        check(StoreError::NotFound.into(), 404, None);
    }
}
