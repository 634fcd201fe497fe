//! exai's authentication for any HTTP service built on axum or tower
//! (feature `axum`, on by default).
//!
//! - [`credential`]: the credential a request carries (`Authorization:
//!   Bearer …` or `X-API-Key: …`, never the query string);
//! - [`refusal`]: what a refused credential is answered with: 401 with an
//!   RFC 6750 `WWW-Authenticate` challenge (naming the RFC 9728 metadata
//!   when given), 403 `insufficient_scope` for a role that may not enter,
//!   503 when the signing keys cannot be had;
//! - [`AuthLayer`]: a tower [`Layer`] that authenticates every request,
//!   answers a refusal itself and hands the [`Principal`] to the service in
//!   the request's extensions, where the [`Authenticated`] extractor finds
//!   it.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use exai_auth::http::{AuthLayer, Authenticated};
//! use exai_auth::{Authenticator, JwtConfig, JwtVerifier, Secret};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = JwtConfig::new().with_hs256(Secret::new(b"the project's JWT secret".to_vec()));
//! let auth = Arc::new(Authenticator::multi_user(JwtVerifier::start(jwt).await?, None));
//! let app: Router = Router::new()
//!     .route("/", get(|Authenticated(user): Authenticated| async move {
//!         format!("hello {}", user.user_id)
//!     }))
//!     .layer(AuthLayer::new(auth));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::{Access, AuthError, Authenticator, Credential, Principal};

/// The credential of a request: `Authorization: Bearer …` (an access token
/// or an API key), else `X-API-Key: …`. A header that is not text is
/// [`AuthError::Malformed`]; another `Authorization` scheme is no
/// credential at all.
pub fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        return Ok(match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Some(Credential::Bearer(token.trim()))
            }
            _ => None,
        });
    }
    if let Some(value) = headers.get("x-api-key") {
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        return Ok(Some(Credential::ApiKey(value.trim())));
    }
    Ok(None)
}

/// The status and `WWW-Authenticate` challenge that answer `error`;
/// `resource_metadata` is this resource's RFC 9728 metadata URL, named in
/// the challenge so that OAuth clients can find the authorization server.
pub fn refusal(
    error: &AuthError,
    resource_metadata: Option<&str>,
) -> (StatusCode, Option<HeaderValue>) {
    let (status, code) = if error.is_unavailable() {
        return (StatusCode::SERVICE_UNAVAILABLE, None);
    } else if error.is_insufficient_scope() {
        (StatusCode::FORBIDDEN, "insufficient_scope")
    } else {
        (StatusCode::UNAUTHORIZED, "invalid_token")
    };
    let mut value = format!(
        "Bearer error=\"{code}\", error_description=\"{}\"",
        quoted_string_safe(&error.reason())
    );
    if let Some(url) = resource_metadata {
        value.push_str(&format!(
            ", resource_metadata=\"{}\"",
            quoted_string_safe(url)
        ));
    }
    (status, HeaderValue::from_str(&value).ok())
}

/// Keeps `s` inside an RFC 7230 quoted-string: printable ASCII without `"`
/// and `\`.
pub fn quoted_string_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect()
}

/// The response to a refused request: [`refusal`]'s status and challenge,
/// and the refusal's reason (safe to show) as the body.
pub fn refused(error: &AuthError, resource_metadata: Option<&str>) -> Response {
    let (status, challenge) = refusal(error, resource_metadata);
    let mut response = (status, format!("{}\n", error.reason())).into_response();
    if let Some(challenge) = challenge {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// A tower layer that admits only requests whose credential the
/// [`Authenticator`] accepts, and gives the service their [`Principal`]
/// (in the request's extensions; see [`Authenticated`]).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    access: Access,
    resource_metadata: Option<Arc<str>>,
}

impl AuthLayer {
    /// Admits users ([`Access::User`]) that `auth` accepts.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer {
            auth,
            access: Access::User,
            resource_metadata: None,
        }
    }

    /// Admits only what `access` allows ([`Access::Admin`]: only
    /// `service_role` tokens).
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Names this resource's RFC 9728 metadata URL in every challenge.
    pub fn resource_metadata(mut self, url: impl Into<String>) -> Self {
        self.resource_metadata = Some(url.into().into());
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around `S`.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The service that was polled ready serves this request; its clone
        // waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let verdict = match credential(request.headers()) {
                Ok(credential) => layer.auth.authenticate(credential, layer.access).await,
                Err(malformed) => Err(malformed),
            };
            match verdict {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(error) => Ok(refused(&error, layer.resource_metadata.as_deref())),
            }
        })
    }
}

/// The [`Principal`] that [`AuthLayer`] admitted, as an axum extractor.
/// Without the layer in front, the request is refused (500), never served
/// as anyone.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Principal);

/// Why [`Authenticated`] found no principal: no [`AuthLayer`] ran.
#[derive(Debug, Clone, Copy)]
pub struct NoAuthLayer;

impl IntoResponse for NoAuthLayer {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no AuthLayer in front of this route\n",
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = NoAuthLayer;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NoAuthLayer> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Authenticated)
            .ok_or(NoAuthLayer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn credentials_come_from_bearer_or_api_key_headers() {
        let bearer = headers(&[("authorization", "Bearer  t0k ")]);
        assert!(matches!(
            credential(&bearer),
            Ok(Some(Credential::Bearer("t0k")))
        ));
        let basic = headers(&[("authorization", "Basic dTpw")]);
        assert!(matches!(credential(&basic), Ok(None)));
        let key = headers(&[("x-api-key", "exai_a_b")]);
        assert!(matches!(
            credential(&key),
            Ok(Some(Credential::ApiKey("exai_a_b")))
        ));
        assert!(matches!(credential(&HeaderMap::new()), Ok(None)));
        let mut bad = HeaderMap::new();
        bad.insert(
            "authorization",
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert!(matches!(credential(&bad), Err(AuthError::Malformed)));
    }

    #[test]
    fn refusals_carry_the_right_status_and_challenge() {
        let (status, challenge) = refusal(&AuthError::Expired, Some("http://h/m"));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge.unwrap(),
            r#"Bearer error="invalid_token", error_description="token expired", resource_metadata="http://h/m""#
        );
        let (status, challenge) = refusal(&AuthError::RoleNotAllowed("service_role".into()), None);
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            challenge.unwrap(),
            r#"Bearer error="insufficient_scope", error_description="role 'service_role' is not allowed""#
        );
        assert_eq!(
            refusal(&AuthError::Unavailable, None),
            (StatusCode::SERVICE_UNAVAILABLE, None)
        );
    }

    #[test]
    fn descriptions_cannot_break_out_of_the_quoted_string() {
        assert_eq!(
            quoted_string_safe("role 'x\" y\\\r\n' é"),
            "role 'x? y???' ?"
        );
    }
}
