//! The project's public signing keys (JWKS), fetched over HTTP and cached.
//!
//! Policy (what Supabase recommends for its asymmetric signing keys):
//! - fetched at start-up, kept for at most [`JwksConfig::max_age`];
//! - a token naming an unknown `kid` triggers one refresh, and refreshes are
//!   at least [`JwksConfig::min_refresh_interval`] apart whatever the
//!   traffic, so a flood of junk tokens never becomes a flood of fetches;
//! - a failed refresh keeps the last good key set (and logs why);
//! - rotation (a new kid added, an old one removed) takes effect at the next
//!   refresh, without a restart.
//!
//! This is the only network IO of `exai-auth`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::AuthError;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where the keys are and how they are refreshed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JwksConfig {
    /// `${SUPABASE_URL}/auth/v1/.well-known/jwks.json` (or `EXAI_JWKS_URL`).
    pub url: String,
    /// How long a fetched key set is used before it is refreshed.
    pub max_age: Duration,
    /// The least time between two fetches.
    pub min_refresh_interval: Duration,
    /// Timeout of one fetch.
    pub timeout: Duration,
}

impl JwksConfig {
    /// Supabase's recommended policy for `url`: at most 10 minutes old, at
    /// most one fetch per 30 s, 5 s per fetch.
    pub fn new(url: impl Into<String>) -> Self {
        JwksConfig {
            url: url.into(),
            max_age: Duration::from_secs(600),
            min_refresh_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Fetching the key set failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The HTTP client could not be built.
    #[error("could not set up the HTTP client for the JWKS")]
    Client(#[source] reqwest::Error),
    /// The request failed (connection, timeout, status).
    #[error("could not fetch the JWKS from {url}")]
    Fetch {
        /// The JWKS URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with something other than a key set.
    #[error("the JWKS at {url} is not a valid key set: {reason}")]
    Invalid {
        /// The JWKS URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// One usable verification key.
pub(crate) struct Key {
    pub(crate) decoding: DecodingKey,
    pub(crate) algorithm: Algorithm,
}

struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    fetched_at: Option<Instant>,
}

struct Inner {
    config: JwksConfig,
    client: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Held while fetching; stores when the last fetch started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    fetches: std::sync::atomic::AtomicU64,
}

/// The cached key set. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Jwks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.inner.config.url)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key set that will be fetched on first use.
    pub(crate) fn new(config: JwksConfig) -> Result<Self, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(JwksError::Client)?;
        Ok(Jwks {
            inner: Arc::new(Inner {
                config,
                client,
                keys: RwLock::new(Arc::new(KeySet {
                    keys: HashMap::new(),
                    fetched_at: None,
                })),
                refresh: tokio::sync::Mutex::new(None),
                fetches: Default::default(),
            }),
        })
    }

    /// Fetches the key set now, whatever the refresh policy says.
    pub(crate) async fn fetch_now(&self) -> Result<(), JwksError> {
        let mut last = self.inner.refresh.lock().await;
        *last = Some(Instant::now());
        let set = self.inner.fetch().await?;
        self.inner.install(set);
        Ok(())
    }

    /// How many fetches were attempted (for tests and metrics).
    pub(crate) fn fetches(&self) -> u64 {
        self.inner
            .fetches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key named `kid`, refreshing the set when the policy allows.
    pub(crate) async fn key(&self, kid: &str) -> Result<Arc<Key>, AuthError> {
        let current = self.inner.current();
        if let Some(key) = current.keys.get(kid) {
            // Serve with the key we have; refresh in the background if stale.
            self.refresh_in_background_if_stale(&current);
            return Ok(key.clone());
        }
        self.inner.refresh_if_due().await;
        self.inner
            .current()
            .keys
            .get(kid)
            .cloned()
            .ok_or(AuthError::UnknownKey)
    }

    /// How many keys the current set holds.
    pub(crate) fn key_count(&self) -> usize {
        self.inner.current().keys.len()
    }

    /// Whether the current set still holds `kid`, for a verdict cached
    /// earlier. Never waits for a fetch, but starts one in the background
    /// when the set is older than the policy allows, so that a withdrawn key
    /// stops working even for clients that only ever hit the cache.
    pub(crate) fn still_publishes(&self, kid: &str) -> bool {
        let current = self.inner.current();
        self.refresh_in_background_if_stale(&current);
        current.keys.contains_key(kid)
    }

    fn refresh_in_background_if_stale(&self, current: &KeySet) {
        let stale = current
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.inner.config.max_age);
        if stale {
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.refresh_if_due().await });
        }
    }
}

impl Inner {
    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn install(&self, set: KeySet) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }

    /// One fetch, unless one started less than `min_refresh_interval` ago.
    /// Concurrent callers wait for the fetch in progress instead of starting
    /// their own.
    async fn refresh_if_due(&self) {
        let mut last = self.refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.config.min_refresh_interval) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(keys = set.keys.len(), "refreshed the JWKS");
                self.install(set);
            }
            Err(error) => tracing::warn!(
                error = %error,
                source = ?std::error::Error::source(&error).map(ToString::to_string),
                "JWKS refresh failed; keeping the last good key set"
            ),
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = &self.config.url;
        let fetch_error = |source| JwksError::Fetch {
            url: url.clone(),
            source,
        };
        let response = self
            .client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(fetch_error)?;
        let body = response.bytes().await.map_err(fetch_error)?;
        let invalid = |reason: String| JwksError::Invalid {
            url: url.clone(),
            reason,
        };
        if body.len() > MAX_JWKS_BYTES {
            return Err(invalid(format!("larger than {MAX_JWKS_BYTES} bytes")));
        }
        let document: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
        let entries = document
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| invalid("no \"keys\" array".to_owned()))?;
        let mut keys = HashMap::new();
        for entry in entries {
            match parse_key(entry) {
                Ok((kid, key)) => {
                    keys.insert(kid, Arc::new(key));
                }
                Err(reason) => tracing::warn!(reason, "skipped a key of the JWKS"),
            }
        }
        Ok(KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        })
    }
}

/// A JWK usable for verifying signatures, with the one algorithm it may
/// verify. Symmetric (`oct`) keys are never taken from a JWKS: HS256 tokens
/// are only ever checked with the configured secret.
fn parse_key(entry: &serde_json::Value) -> Result<(String, Key), &'static str> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|_| "not a JWK")?;
    let kid = jwk.common.key_id.clone().ok_or("no kid")?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key");
    }
    let (family, implied) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Algorithm::ES256),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Algorithm::ES384),
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(_) => (AlgorithmFamily::Ed, Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key"),
        _ => return Err("unknown key type"),
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(named) => named
            .to_string()
            .parse::<Algorithm>()
            .map_err(|_| "unsupported alg")?,
        None => implied,
    };
    if algorithm.family() != family || (family == AlgorithmFamily::Ec && algorithm != implied) {
        return Err("alg does not match the key type");
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| "unusable key material")?;
    Ok((
        kid,
        Key {
            decoding,
            algorithm,
        },
    ))
}
