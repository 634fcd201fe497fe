//! Where sessions live: the [`SessionStore`] trait and its backends.
//!
//! A session is one client connection's server-side state, owned by exactly
//! one user. Every store call names the [`Principal`] it acts for, and a
//! session of another user is answered exactly like one that does not exist
//! ([`StoreError::NotFound`]), so ids cannot be probed.
//!
//! Backends: [`MemoryStore`] (no IO; the embedded default) and
//! [`PostgresStore`] (a pooled direct connection; the SQL migrations are in
//! `migrations/` and [`MIGRATIONS`]). Every backend is
//! held to the same contract, in `tests/`. Stores also keep API keys, through
//! the [`ApiKeyStore`](exai_auth::ApiKeyStore) trait that `exai-auth` defines.

mod memory;
mod model;
mod postgres;

use async_trait::async_trait;
use exai_auth::Principal;

pub use memory::MemoryStore;
pub use model::{OpenSession, SessionId, SessionMetadata, SessionRecord, SessionStatus};
pub use postgres::{MIGRATIONS, MigrationOutcome, PostgresConfig, PostgresStore};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such session for this user (it may belong to someone else).
    #[error("session not found")]
    NotFound,
    /// The user already has the most live sessions allowed.
    #[error("connection limit reached: at most {limit} concurrent connections per user")]
    LimitReached {
        /// The per-user limit in force.
        limit: u32,
    },
    /// The user is not known to the database (`auth.users`): on Supabase,
    /// a deleted account.
    #[error("unknown user")]
    UnknownUser,
    /// The operation conflicts with the session's state (e.g. it is closed).
    #[error("session is {0}")]
    Conflict(SessionStatus),
    /// The backend could not be reached or failed.
    #[error("session store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Session storage. Object-safe: the daemon holds an `Arc<dyn SessionStore>`.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug + 'static {
    /// Opens a live (`connected`) session for `principal`, unless that user
    /// already has `request.max_connections` live sessions. The check and the
    /// insert are one atomic step.
    async fn open(
        &self,
        principal: &Principal,
        request: OpenSession,
    ) -> Result<SessionRecord, StoreError>;

    /// Records activity on one of the principal's live sessions.
    async fn touch(&self, principal: &Principal, session: &SessionId) -> Result<(), StoreError>;

    /// Marks one of the principal's sessions `disconnected`. Closing a
    /// session that is not live is a no-op.
    async fn close(&self, principal: &Principal, session: &SessionId) -> Result<(), StoreError>;

    /// One of the principal's sessions.
    async fn get(
        &self,
        principal: &Principal,
        session: &SessionId,
    ) -> Result<SessionRecord, StoreError>;

    /// The principal's sessions, newest first.
    async fn list(&self, principal: &Principal) -> Result<Vec<SessionRecord>, StoreError>;
}
