//! Credential validation for exai.
//!
//! This crate turns what a client presents (today: a Supabase Auth access
//! token) into a [`Principal`]: the user a connection acts for. It knows
//! nothing about HTTP, WebSockets or databases; the transport hands it a
//! credential and gets back a principal or an [`AuthError`] whose
//! [`reason`](AuthError::reason) is safe to show to the client.
//!
//! Invariants:
//! - no token, secret or key material ever appears in an error, a `Debug`
//!   output or a log line produced here ([`Secret`] redacts itself);
//! - verification fails closed: a claim we cannot check is a refusal.

mod error;
mod jwt;
mod principal;
mod secret;

pub use error::AuthError;
pub use jwt::{AccessTokenClaims, JwtConfig, JwtVerifier, MintError, mint_hs256};
pub use principal::{AuthMethod, Principal, UserId};
pub use secret::Secret;

/// What a client presented to prove who it is.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum Credential<'a> {
    /// An `Authorization: Bearer …` value.
    Bearer(&'a str),
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Credential::Bearer(<redacted>)"),
        }
    }
}

/// Checks credentials. The one entry point the transport calls.
///
/// It is cheap to share (`Arc`) and safe to call from many tasks at once.
#[derive(Debug)]
pub struct Authenticator {
    jwt: JwtVerifier,
}

impl Authenticator {
    /// An authenticator that accepts access tokens checked by `jwt`.
    pub fn new(jwt: JwtVerifier) -> Self {
        Authenticator { jwt }
    }

    /// Verifies `credential` and returns the principal it proves.
    ///
    /// Async because later credential kinds (API keys, JWKS refresh) need IO.
    pub async fn authenticate(&self, credential: Credential<'_>) -> Result<Principal, AuthError> {
        match credential {
            Credential::Bearer(token) => self.jwt.verify(token),
        }
    }
}
