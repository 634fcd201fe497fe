//! `tower_layer`: a plain axum service (not MCP) behind exai's
//! authenticator.
//!
//! ```text
//! SUPABASE_JWT_SECRET=… cargo run -p exai-auth --example tower_layer [ADDR]
//! ```
//!
//! `GET /` answers `hello <user id>` to a request carrying a valid Supabase
//! access token (`Authorization: Bearer …`, HS256 with
//! `SUPABASE_JWT_SECRET`); anything else gets 401 with an RFC 6750
//! `WWW-Authenticate` challenge, and a `service_role` token 403. Set
//! `SUPABASE_URL` too and tokens signed with the project's asymmetric keys
//! (its JWKS) are accepted as well, with the project's issuer required.
//!
//! `ADDR` defaults to `127.0.0.1:0`; the first line on stdout is
//! `listening on ADDR`, for scripts.

#![allow(clippy::print_stdout, reason = "an example says where it listens")]

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use exai_auth::http::{AuthLayer, Authenticated};
use exai_auth::{Authenticator, JwksConfig, JwtConfig, JwtVerifier, Secret};

async fn hello(Authenticated(user): Authenticated) -> String {
    format!("hello {}\n", user.user_id)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let mut jwt = JwtConfig::new();
    if let Ok(secret) = std::env::var("SUPABASE_JWT_SECRET") {
        jwt = jwt.with_hs256(Secret::new(secret.into_bytes()));
    }
    if let Ok(project) = std::env::var("SUPABASE_URL") {
        let project = project.trim_end_matches('/');
        jwt = jwt.with_jwks(JwksConfig::new(format!(
            "{project}/auth/v1/.well-known/jwks.json"
        )));
        jwt.issuer = Some(format!("{project}/auth/v1"));
    }
    if jwt.hs256_secret.is_none() && jwt.jwks.is_none() {
        return Err("set SUPABASE_JWT_SECRET (or SUPABASE_URL) to verify tokens".into());
    }
    let auth = Arc::new(Authenticator::multi_user(
        JwtVerifier::start(jwt).await?,
        None,
    ));

    let app = Router::new()
        .route("/", get(hello))
        .layer(AuthLayer::new(auth));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
