//! Credential validation for exai.
//!
//! This crate turns what a client presents into a [`Principal`]: the user a
//! connection acts for. It accepts exactly what a Supabase project issues —
//! access tokens signed with the legacy shared secret (HS256) or with the
//! project's asymmetric keys (ES256, RS256, EdDSA, via its JWKS) — plus exai
//! API keys (`exai_<id>_<secret>`), and, in single-user mode, one shared
//! token. It knows nothing about HTTP or databases: the transport hands it a
//! [`Credential`] and gets a principal or an [`AuthError`] whose
//! [`reason`](AuthError::reason) is safe to show to the client.
//!
//! # Example
//!
//! Verify Supabase access tokens signed with the project's JWT secret (a
//! JWKS from `SUPABASE_URL` works the same way, through
//! [`JwtConfig::with_jwks`]):
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use exai_auth::{
//!     Access, AccessTokenClaims, AuthError, Authenticator, Credential, JwtConfig, JwtVerifier,
//!     Secret, UserId, mint_hs256,
//! };
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let secret = Secret::new(b"the project's JWT secret, 32+ bytes".to_vec());
//! let verifier = JwtVerifier::start(JwtConfig::new().with_hs256(secret.clone())).await?;
//! let auth = Authenticator::multi_user(verifier, None);
//!
//! // A token as Supabase Auth issues it (minted here for the example).
//! let user = UserId::from_email("ana@example.com");
//! let claims = AccessTokenClaims::new(user, None, SystemTime::now(), Duration::from_secs(600));
//! let token = mint_hs256(&claims, &secret)?;
//!
//! let principal = auth.authenticate(Some(Credential::Bearer(&token)), Access::User).await?;
//! assert_eq!(principal.user_id, user);
//! // Anything else is refused, with a reason that is safe to show.
//! let refused = auth.authenticate(Some(Credential::Bearer("nonsense")), Access::User).await;
//! assert!(matches!(refused, Err(AuthError::Malformed)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! With the `axum` feature (on by default), [`http`] puts this in front of
//! any axum or tower service: `examples/tower_layer.rs` is a whole one
//! (`SUPABASE_JWT_SECRET=… cargo run -p exai-auth --example tower_layer`).
//!
//! Invariants:
//! - no token, secret, key or hash ever appears in an error, a `Debug`
//!   output or a log line produced here ([`Secret`] redacts itself);
//! - verification fails closed: a claim we cannot check is a refusal;
//! - the only network IO is fetching the JWKS (`jwks`).

mod api_key;
mod cache;
mod error;
#[cfg(feature = "axum")]
pub mod http;
mod jwks;
mod jwt;
mod principal;
mod secret;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use subtle::ConstantTimeEq as _;

pub use api_key::{
    API_KEY_PREFIX, ApiKeyRecord, ApiKeyStore, KeyStoreError, NewApiKey, RandomnessError,
};
pub use error::AuthError;
pub use jwks::{JwksConfig, JwksError};
pub use jwt::{AccessTokenClaims, JwtConfig, JwtVerifier, LATEST_EXPIRY, MintError, mint_hs256};
pub use principal::{AuthMethod, Principal, UserId};
pub use secret::Secret;

/// `last_used_at` of an API key is written at most this often.
const KEY_USE_WRITE_INTERVAL: Duration = Duration::from_secs(60);

/// What a client presented to prove who it is.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum Credential<'a> {
    /// An `Authorization: Bearer …` value: an access token or an API key.
    Bearer(&'a str),
    /// An `X-API-Key: …` value.
    ApiKey(&'a str),
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Credential::Bearer(<redacted>)"),
            Credential::ApiKey(_) => f.write_str("Credential::ApiKey(<redacted>)"),
        }
    }
}

/// What the caller wants to do, which decides the roles admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Ordinary use (MCP connections): the configured user roles.
    User,
    /// An operation marked admin: only `service_role` tokens.
    Admin,
}

enum Mode {
    MultiUser {
        jwt: JwtVerifier,
        api_keys: Option<Arc<dyn ApiKeyStore>>,
    },
    SingleUser {
        token: Option<Secret>,
    },
}

/// Checks credentials. The one entry point the transport calls.
///
/// Cheap to share (`Arc`) and safe to call from many tasks at once.
pub struct Authenticator {
    mode: Mode,
    /// When each API key's use was last written to the store.
    key_use_written: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::MultiUser { .. } => "multi-user",
            Mode::SingleUser { token: Some(_) } => "single-user (shared token)",
            Mode::SingleUser { token: None } => "single-user (no token)",
        };
        f.debug_struct("Authenticator")
            .field("mode", &mode)
            .finish()
    }
}

impl Authenticator {
    /// Multi-user mode: access tokens checked by `jwt`, and API keys from
    /// `api_keys` when given.
    pub fn multi_user(jwt: JwtVerifier, api_keys: Option<Arc<dyn ApiKeyStore>>) -> Self {
        Authenticator {
            mode: Mode::MultiUser { jwt, api_keys },
            key_use_written: Mutex::default(),
        }
    }

    /// Single-user mode: every connection is the one local user. With
    /// `token`, connections must present it; without, anyone who can reach
    /// the daemon is admitted (the daemon binds loopback only then).
    pub fn single_user(token: Option<Secret>) -> Self {
        Authenticator {
            mode: Mode::SingleUser { token },
            key_use_written: Mutex::default(),
        }
    }

    /// The JWT verifier, in multi-user mode.
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        match &self.mode {
            Mode::MultiUser { jwt, .. } => Some(jwt),
            Mode::SingleUser { .. } => None,
        }
    }

    /// Whether the API key `key_id` may still be used (not revoked, not
    /// expired). Connections it opened are closed when it may not.
    pub async fn api_key_valid(&self, key_id: &str) -> Result<bool, AuthError> {
        let Mode::MultiUser {
            api_keys: Some(store),
            ..
        } = &self.mode
        else {
            return Ok(false);
        };
        let record = store
            .find_api_key(key_id)
            .await
            .map_err(|_| AuthError::Unavailable)?;
        let now = SystemTime::now();
        Ok(
            record
                .is_some_and(|r| r.revoked_at.is_none() && r.expires_at.is_none_or(|at| at > now)),
        )
    }

    /// Whether credentials can be checked now (for readiness): single-user
    /// mode always can; multi-user mode needs a signing key.
    pub fn ready(&self) -> bool {
        match &self.mode {
            Mode::MultiUser { jwt, .. } => jwt.has_keys(),
            Mode::SingleUser { .. } => true,
        }
    }

    /// Verifies `credential` for `access` and returns the principal it proves.
    pub async fn authenticate(
        &self,
        credential: Option<Credential<'_>>,
        access: Access,
    ) -> Result<Principal, AuthError> {
        match &self.mode {
            Mode::SingleUser { token: None } => Ok(Principal::local(AuthMethod::Local)),
            Mode::SingleUser {
                token: Some(expected),
            } => {
                let presented = match credential.ok_or(AuthError::Missing)? {
                    Credential::Bearer(t) | Credential::ApiKey(t) => t,
                };
                if bool::from(presented.as_bytes().ct_eq(expected.expose())) {
                    Ok(Principal::local(AuthMethod::SharedToken))
                } else {
                    Err(AuthError::InvalidSharedToken)
                }
            }
            Mode::MultiUser { jwt, api_keys } => {
                let principal = match credential.ok_or(AuthError::Missing)? {
                    Credential::Bearer(token) if !token.starts_with(API_KEY_PREFIX) => {
                        jwt.verify(token).await?
                    }
                    Credential::Bearer(key) | Credential::ApiKey(key) => {
                        let store = api_keys.as_ref().ok_or(AuthError::InvalidApiKey)?;
                        self.verify_api_key(store.as_ref(), key).await?
                    }
                };
                let allowed = match access {
                    Access::User => jwt.allowed_roles.contains(&principal.role),
                    Access::Admin => principal.role == "service_role",
                };
                if !allowed {
                    return Err(AuthError::role_not_allowed(&principal.role));
                }
                Ok(principal)
            }
        }
    }

    async fn verify_api_key(
        &self,
        store: &dyn ApiKeyStore,
        key: &str,
    ) -> Result<Principal, AuthError> {
        let (key_id, secret) = api_key::parse(key).ok_or(AuthError::InvalidApiKey)?;
        let record = store
            .find_api_key(key_id)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "API key lookup failed");
                AuthError::Unavailable
            })?
            .ok_or(AuthError::InvalidApiKey)?;
        let hash = api_key::hash_secret(secret);
        if !bool::from(hash.ct_eq(&record.secret_hash)) {
            return Err(AuthError::InvalidApiKey);
        }
        // Only a holder of the right secret learns that a key was revoked
        // or expired.
        let now = SystemTime::now();
        if record.revoked_at.is_some() {
            return Err(AuthError::ApiKeyRevoked);
        }
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::ApiKeyExpired);
        }
        self.record_key_use(store, key_id, now).await;
        let mut principal = Principal::new(
            record.user_id,
            AuthMethod::ApiKey {
                key_id: record.key_id,
            },
        );
        principal.expires_at = record.expires_at.and_then(|at| {
            at.duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        });
        Ok(principal)
    }

    /// Writes `last_used_at` at most once a minute per key (per process).
    async fn record_key_use(&self, store: &dyn ApiKeyStore, key_id: &str, now: SystemTime) {
        {
            let mut written = self
                .key_use_written
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match written.get(key_id) {
                Some(at) if at.elapsed() < KEY_USE_WRITE_INTERVAL => return,
                _ => {
                    written.insert(key_id.to_owned(), Instant::now());
                }
            }
        }
        if let Err(error) = store.record_api_key_use(key_id, now).await {
            tracing::warn!(%error, key_id, "could not record the API key's use");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"unit-test-secret-with-32-bytes-or-more";

    /// An API key store that counts the use records written.
    #[derive(Debug, Default)]
    struct CountingStore {
        keys: Mutex<HashMap<String, ApiKeyRecord>>,
        uses: AtomicUsize,
    }

    #[async_trait]
    impl ApiKeyStore for CountingStore {
        async fn insert_api_key(&self, record: ApiKeyRecord) -> Result<(), KeyStoreError> {
            self.keys
                .lock()
                .unwrap()
                .insert(record.key_id.clone(), record);
            Ok(())
        }
        async fn find_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreError> {
            Ok(self.keys.lock().unwrap().get(id).cloned())
        }
        async fn revoke_api_key(&self, _: &str, _: SystemTime) -> Result<bool, KeyStoreError> {
            Ok(false)
        }
        async fn record_api_key_use(&self, _: &str, _: SystemTime) -> Result<(), KeyStoreError> {
            self.uses.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn list_api_keys(&self, _: UserId) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
            Ok(Vec::new())
        }
    }

    fn authenticator(store: Option<Arc<dyn ApiKeyStore>>) -> Authenticator {
        let config = JwtConfig::new().with_hs256(Secret::new(SECRET.to_vec()));
        Authenticator::multi_user(JwtVerifier::new(config).unwrap(), store)
    }

    fn token(role: &str) -> String {
        let claims = json!({
            "sub": UserId::from_email("a@example.com"),
            "aud": "authenticated",
            "role": role,
            "exp": cache::unix_now() + 600,
        });
        mint_hs256(&claims, &Secret::new(SECRET.to_vec())).unwrap()
    }

    #[tokio::test]
    async fn service_role_only_where_an_operation_is_admin() {
        let auth = authenticator(None);
        let check = |role: &'static str, access| {
            let auth = &auth;
            async move {
                auth.authenticate(Some(Credential::Bearer(&token(role))), access)
                    .await
                    .map(|p| p.role)
            }
        };
        assert_eq!(
            check("authenticated", Access::User).await,
            Ok("authenticated".into())
        );
        assert_eq!(
            check("service_role", Access::User).await,
            Err(AuthError::RoleNotAllowed("service_role".into()))
        );
        assert_eq!(
            check("service_role", Access::Admin).await,
            Ok("service_role".into())
        );
        assert_eq!(
            check("authenticated", Access::Admin).await,
            Err(AuthError::RoleNotAllowed("authenticated".into()))
        );
    }

    #[tokio::test]
    async fn key_use_is_written_at_most_once_a_minute() {
        let store = Arc::new(CountingStore::default());
        let user = UserId::from_email("k@example.com");
        let key = NewApiKey::generate(user, None, None).unwrap();
        store.insert_api_key(key.record.clone()).await.unwrap();
        let auth = authenticator(Some(store.clone()));
        for _ in 0..5 {
            let principal = auth
                .authenticate(Some(Credential::ApiKey(&key.key)), Access::User)
                .await
                .unwrap();
            assert_eq!(principal.user_id, user);
            assert_eq!(
                principal.method,
                AuthMethod::ApiKey {
                    key_id: key.record.key_id.clone()
                }
            );
        }
        assert_eq!(store.uses.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn without_a_key_store_api_keys_are_refused() {
        let key = NewApiKey::generate(UserId::from_email("k@example.com"), None, None).unwrap();
        let got = authenticator(None)
            .authenticate(Some(Credential::Bearer(&key.key)), Access::User)
            .await;
        assert_eq!(got, Err(AuthError::InvalidApiKey));
    }
}
