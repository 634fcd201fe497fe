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
//! use exai_sessions::{MemoryStore, OpenSession, Page, SessionMetadata, Sessions, StoreError};
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
//! assert_eq!(store.list(&ana, Page::default()).await?.len(), 1);
//! // Bo cannot see it, nor tell it from a session that does not exist.
//! assert!(store.list(&bo, Page::default()).await?.is_empty());
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
mod store;
mod supabase;

use exai_auth::Principal;

pub use memory::MemoryStore;
pub use model::{
    ConversationId, ConversationLimits, Heartbeat, Lease, LeaseRequest, ModelUsage, Node,
    OpenSession, Page, SessionClient, SessionFilter, SessionId, SessionMetadata, SessionRecord,
    SessionStatus, Turn, UsageRecord,
};
pub use postgres::{MIGRATIONS, MigrationOutcome, PostgresConfig, PostgresStore};
pub use store::{
    ConnectionStore, ConversationStore, SessionAdmin, SessionLifecycle, SessionStore, Sessions,
    UsageStore, UserBudgets,
};
pub use supabase::{SupabaseConfig, SupabaseStore};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such session for this user (it may belong to someone else).
    #[error("session not found")]
    NotFound,
    /// The user already has the most live sessions allowed.
    #[error(
        "connection limit reached: this user already holds {limit} live connections, the most \
         allowed (MCP_MAX_CONNECTIONS_PER_USER); the `sessions` tool lists them: close one, or \
         retry once one has closed"
    )]
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
    /// The exchange alone is larger than a user's conversations may be
    /// (`ConversationLimits::max_bytes_per_user`).
    #[error("the exchange is larger than a user's conversations may be ({max} bytes)")]
    ConversationTooLarge {
        /// The bound, in bytes.
        max: usize,
    },
    /// The operation conflicts with the session's state (e.g. it is closed).
    #[error("session is {0}")]
    Conflict(SessionStatus),
    /// The backend could not be reached or failed.
    #[error("session store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Whether `principal` may use the admin operations.
pub(crate) fn is_admin(principal: &Principal) -> bool {
    principal.role == "service_role"
}
