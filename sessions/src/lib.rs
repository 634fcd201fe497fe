//! Where sessions live: the [`SessionStore`] trait and its backends.
//!
//! A session is one client connection's server-side state, owned by exactly
//! one user. Every store call names the [`Principal`] it acts for, and a
//! session of another user is answered exactly like one that does not exist
//! ([`StoreError::NotFound`]), so ids cannot be probed.
//!
//! Backends: [`MemoryStore`] (no IO; the embedded default) and
//! [`PostgresStore`] (a pooled direct connection; the SQL migrations are in
//! `migrations/` and [`MIGRATIONS`]) and [`SupabaseStore`] (Supabase's REST
//! API, calling the same SQL functions). Every backend is
//! held to the same contract, in `tests/`. Stores also keep API keys, through
//! the [`ApiKeyStore`](exai_auth::ApiKeyStore) trait that `exai-auth` defines.
//!
//! # Example
//!
//! ```
//! use exai_auth::{AuthMethod, Principal, UserId};
//! use exai_sessions::{MemoryStore, OpenSession, SessionMetadata, SessionStore, StoreError};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let ana = Principal::new(UserId::from_email("ana@example.com"), AuthMethod::Jwt);
//! let bo = Principal::new(UserId::from_email("bo@example.com"), AuthMethod::Jwt);
//!
//! // At most one connection for Ana: the check and the insert are one step.
//! let metadata = SessionMetadata::new("websocket", None);
//! let session = store.open(&ana, OpenSession::new(1, metadata.clone())).await?;
//! let second = store.open(&ana, OpenSession::new(1, metadata)).await;
//! assert!(matches!(second, Err(StoreError::LimitReached { limit: 1 })));
//!
//! assert_eq!(store.list(&ana).await?.len(), 1);
//! // Bo cannot see it, nor tell it from a session that does not exist.
//! assert!(store.list(&bo).await?.is_empty());
//! assert!(matches!(store.get(&bo, &session.session_id).await, Err(StoreError::NotFound)));
//! # Ok::<(), StoreError>(())
//! # }).unwrap();
//! ```
//!
//! `examples/sessions.rs` runs the same against PostgreSQL when
//! `DATABASE_URL` is set (`cargo run -p exai-sessions --example sessions`).

mod memory;
mod model;
mod postgres;
mod sqlstate;
mod supabase;

use std::time::Duration;

use async_trait::async_trait;
use exai_auth::{Principal, UserId};

pub use memory::MemoryStore;
pub use model::{
    ConversationId, ConversationLimits, ModelUsage, OpenSession, SessionFilter, SessionId,
    SessionMetadata, SessionRecord, SessionStatus, Turn, UsageRecord,
};
pub use postgres::{MIGRATIONS, MigrationOutcome, PostgresConfig, PostgresStore};
pub use supabase::{SupabaseConfig, SupabaseStore};

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
    /// An administrator's operation asked for by someone else.
    #[error("not allowed")]
    Forbidden,
    /// The conversation already holds the most turns allowed.
    #[error("the conversation has reached its limit of {max} turns")]
    TurnLimit {
        /// `MAX_CONVERSATION_TURNS`.
        max: usize,
    },
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
    /// Whether the store can be used now (for readiness).
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

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

    /// Re-attaches one of the principal's `disconnected` sessions, within
    /// the per-user limit (checked atomically, as in [`SessionStore::open`]).
    /// An expired or killed session, like another user's, is not found; one
    /// attached elsewhere is a conflict.
    async fn resume(
        &self,
        principal: &Principal,
        session: &SessionId,
        max_connections: u32,
    ) -> Result<SessionRecord, StoreError>;

    /// Records activity on a batch of live sessions in one write (what the
    /// daemon's activity batcher flushes). Each entry names its user.
    async fn touch_batch(&self, sessions: &[(UserId, SessionId)]) -> Result<(), StoreError>;

    /// Which of `sessions` an administrator killed (each daemon asks about
    /// the sessions it holds, so it can close their sockets).
    async fn killed_among(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>, StoreError>;

    /// Marks every session idle for longer than `idle` (live or
    /// disconnected) `expired`, and returns them.
    async fn expire_idle(&self, idle: Duration) -> Result<Vec<SessionRecord>, StoreError>;

    /// Admin (a `service_role` principal): everyone's sessions matching
    /// `filter`, newest first.
    async fn admin_list(
        &self,
        admin: &Principal,
        filter: SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// Admin: marks a session `killed` (the daemon holding it closes it).
    async fn admin_kill(
        &self,
        admin: &Principal,
        session: &SessionId,
    ) -> Result<SessionRecord, StoreError>;

    /// Starts a conversation for the principal holding `turns` (at most
    /// `limits.max_turns`); returns its handle, the `continuation_id` tools
    /// hand out. (Stores may drop conversations past `limits.timeout` here.)
    async fn create_conversation(
        &self,
        principal: &Principal,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<ConversationId, StoreError>;

    /// Appends `turns` to one of the principal's live conversations, all or
    /// none (none when they would pass `limits.max_turns`); returns how many
    /// turns it now holds.
    async fn append_turns(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<usize, StoreError>;

    /// The turns of one of the principal's live conversations, oldest first.
    async fn read_conversation(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        limits: &ConversationLimits,
    ) -> Result<Vec<Turn>, StoreError>;

    /// Records one provider call the principal made (`mcp_usage`).
    async fn record_usage(
        &self,
        principal: &Principal,
        record: UsageRecord,
    ) -> Result<(), StoreError>;

    /// The principal's own usage, per model, sorted by model.
    async fn usage(&self, principal: &Principal) -> Result<Vec<ModelUsage>, StoreError>;
}

/// Whether `principal` may use the admin operations.
pub(crate) fn is_admin(principal: &Principal) -> bool {
    principal.role == "service_role"
}
