//! API keys: `exai_<id>_<secret>`, the simple path for scripts.
//!
//! The secret is 256 random bits; only its SHA-256 is stored. A key is found
//! by its id and its secret compared in constant time. Storage is the
//! [`ApiKeyStore`] trait, implemented by `exai-sessions`.

use std::time::SystemTime;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::UserId;

/// Every API key starts with this.
pub const API_KEY_PREFIX: &str = "exai_";
/// Hex digits of a key id (64 bits).
const ID_HEX: usize = 16;
/// Hex digits of a key secret (256 bits).
const SECRET_HEX: usize = 64;

/// A stored API key. Never holds the secret, only its hash.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiKeyRecord {
    /// The public id (the `<id>` of `exai_<id>_<secret>`).
    pub key_id: String,
    /// The user the key acts for.
    pub user_id: UserId,
    /// A label chosen by whoever created it.
    pub name: Option<String>,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// When it was created.
    pub created_at: SystemTime,
    /// When it stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
    /// When it was last used (updated at most once a minute).
    pub last_used_at: Option<SystemTime>,
}

impl ApiKeyRecord {
    /// A record as a store reads it back: the given id, owner, hash and
    /// creation time, not expiring, not revoked, never used.
    pub fn new(
        key_id: String,
        user_id: UserId,
        secret_hash: [u8; 32],
        created_at: SystemTime,
    ) -> Self {
        ApiKeyRecord {
            key_id,
            user_id,
            name: None,
            secret_hash,
            created_at,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        }
    }
}

impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("key_id", &self.key_id)
            .field("user_id", &self.user_id)
            .field("name", &self.name)
            .field("secret_hash", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A freshly generated key: the text to hand to the user once, and the
/// record to store.
#[non_exhaustive]
pub struct NewApiKey {
    /// `exai_<id>_<secret>`: shown once, never stored.
    pub key: String,
    /// What to store.
    pub record: ApiKeyRecord,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("key", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

/// The OS random source failed.
#[derive(Debug, thiserror::Error)]
#[error("no randomness available to generate a key")]
pub struct RandomnessError;

impl NewApiKey {
    /// A new key for `user_id`.
    pub fn generate(
        user_id: UserId,
        name: Option<String>,
        expires_at: Option<SystemTime>,
    ) -> Result<NewApiKey, RandomnessError> {
        let mut bytes = [0u8; ID_HEX / 2 + SECRET_HEX / 2];
        getrandom::fill(&mut bytes).map_err(|_| RandomnessError)?;
        let (id, secret) = bytes.split_at(ID_HEX / 2);
        let (key_id, secret) = (hex(id), hex(secret));
        Ok(NewApiKey {
            key: format!("{API_KEY_PREFIX}{key_id}_{secret}"),
            record: ApiKeyRecord {
                key_id,
                user_id,
                name,
                secret_hash: hash_secret(&secret),
                created_at: SystemTime::now(),
                expires_at,
                revoked_at: None,
                last_used_at: None,
            },
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits `exai_<id>_<secret>`; `None` when the text is not shaped like a key.
pub(crate) fn parse(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(API_KEY_PREFIX)?.split_once('_')?;
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (is_hex(id, ID_HEX) && is_hex(secret, SECRET_HEX)).then_some((id, secret))
}

/// The API key store could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("API key store unavailable")]
pub struct KeyStoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Where API keys live. `exai-auth` defines it; `exai-sessions` implements it.
#[async_trait]
pub trait ApiKeyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new key.
    async fn insert_api_key(&self, record: ApiKeyRecord) -> Result<(), KeyStoreError>;
    /// The key with this id, if any.
    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreError>;
    /// Marks the key revoked; `false` if there is no such key.
    async fn revoke_api_key(&self, key_id: &str, at: SystemTime) -> Result<bool, KeyStoreError>;
    /// Records that the key was used at `at`.
    async fn record_api_key_use(&self, key_id: &str, at: SystemTime) -> Result<(), KeyStoreError>;
    /// The keys of one user.
    async fn list_api_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyRecord>, KeyStoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash() {
        let new = NewApiKey::generate(UserId::from_email("a@example.com"), None, None).unwrap();
        let (id, secret) = parse(&new.key).unwrap();
        assert_eq!(id, new.record.key_id);
        assert_eq!(hash_secret(secret), new.record.secret_hash);
        assert_eq!(
            new.key.len(),
            API_KEY_PREFIX.len() + ID_HEX + 1 + SECRET_HEX
        );
        assert!(!format!("{new:?}").contains(secret));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let good = format!("exai_{}_{}", "a".repeat(16), "b".repeat(64));
        assert!(parse(&good).is_some());
        for bad in [
            "exai_".to_owned(),
            "exai_abc_def".to_owned(),
            format!("exai_{}_{}", "a".repeat(16), "B".repeat(64)),
            format!("exai_{}_{}", "a".repeat(15), "b".repeat(64)),
            format!("exai_{}{}", "a".repeat(16), "b".repeat(64)),
            format!("exai_{}_{}_", "a".repeat(16), "b".repeat(64)),
            format!("xeai_{}_{}", "a".repeat(16), "b".repeat(64)),
        ] {
            assert!(parse(&bad).is_none(), "{bad}");
        }
    }
}
