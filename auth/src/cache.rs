//! Verified tokens, remembered by the SHA-256 of the token until they expire,
//! so a client that reconnects often does not pay for a signature check each
//! time. Bounded: the least useful entries are evicted past the capacity.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::Principal;

#[derive(Clone)]
pub(crate) struct Verified {
    pub(crate) principal: Principal,
    /// The JWKS key that signed the token (`None` for HS256), so a verdict is
    /// dropped once that key leaves the key set.
    pub(crate) kid: Option<String>,
    expires_at: u64,
}

pub(crate) struct TokenCache {
    entries: quick_cache::sync::Cache<[u8; 32], Verified>,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            entries: quick_cache::sync::Cache::new(capacity),
        }
    }

    pub(crate) fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The cached verdict for this token, if it has not expired.
    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<Verified> {
        let hit = self.entries.get(key)?;
        if unix_now() < hit.expires_at {
            Some(hit)
        } else {
            self.entries.remove(key);
            None
        }
    }

    pub(crate) fn remove(&self, key: &[u8; 32]) {
        self.entries.remove(key);
    }

    pub(crate) fn insert(&self, key: [u8; 32], principal: &Principal, kid: Option<String>) {
        if let Some(expires_at) = principal.expires_at {
            let verified = Verified {
                principal: principal.clone(),
                kid,
                expires_at,
            };
            self.entries.insert(key, verified);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::{AuthError, JwtConfig, JwtVerifier, Secret, mint_hs256};

    const SECRET: &[u8] = b"test-secret-with-at-least-32-bytes!!";

    /// A token verified once is remembered (a reconnecting client's costs
    /// a hash), but never past its `exp`: the cached verdict expires with
    /// the token.
    #[tokio::test]
    async fn a_cached_token_stops_working_at_its_exp() {
        let mut config = JwtConfig::new().with_hs256(Secret::new(SECRET.to_vec()));
        config.leeway = Duration::ZERO;
        let verifier = JwtVerifier::new(config).unwrap();
        let exp = unix_now() + 2;
        let token = mint_hs256(
            &json!({"sub": "1fb4fe69-33d1-456c-9b18-fe580006aaf7", "aud": "authenticated",
                    "role": "authenticated", "exp": exp}),
            &Secret::new(SECRET.to_vec()),
        )
        .unwrap();
        assert!(verifier.verify(&token).await.is_ok());
        assert!(verifier.verify(&token).await.is_ok(), "the cached verdict");
        while unix_now() <= exp {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            verifier.verify(&token).await.map(|_| ()),
            Err(AuthError::Expired)
        );
    }
}
