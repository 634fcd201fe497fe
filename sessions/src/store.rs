//! The store's traits, one per concern, so a backend or a test double
//! implements what it needs: [`Sessions`], [`SessionLifecycle`],
//! [`SessionAdmin`], [`ConversationStore`], [`UsageStore`],
//! [`UserBudgets`]; API keys are
//! `exai-auth`'s [`ApiKeyStore`](exai_auth::ApiKeyStore).
//!
//! [`ConnectionStore`] is what the network edge needs (sessions and their
//! lifecycle) and [`SessionStore`] all six, what the daemon holds; both
//! are implemented for every type that implements their parts. All are
//! object-safe: callers hold an `Arc<dyn SessionStore>` (or `dyn
//! ConnectionStore`, to which it converts).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use exai_auth::{Principal, UserId};

use crate::{
    ConversationId, ConversationLimits, Heartbeat, Lease, LeaseRequest, ModelUsage, OpenSession,
    Page, SessionClient, SessionFilter, SessionId, SessionRecord, SessionStatus, StoreError, Turn,
    UsageRecord,
};

/// One user's sessions: open (within the per-user limit, atomically),
/// record activity, close, read, resume. Every call names the user it acts
/// for; another user's session is [`StoreError::NotFound`], like a missing
/// one.
#[async_trait]
pub trait Sessions: Send + Sync + std::fmt::Debug + 'static {
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

    /// The principal's sessions, newest first: one `page` of them.
    async fn list(
        &self,
        principal: &Principal,
        page: Page,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// Re-attaches one of the principal's `disconnected` sessions, within
    /// the per-user limit (checked atomically, as in [`Sessions::open`]).
    /// An expired or killed session, like another user's, is not found; one
    /// attached elsewhere is a conflict.
    async fn resume(
        &self,
        principal: &Principal,
        session: &SessionId,
        max_connections: u32,
    ) -> Result<SessionRecord, StoreError>;
}

/// What a daemon's lifecycle task does for every session it holds, in
/// batches: activity, kills, idle expiry.
#[async_trait]
pub trait SessionLifecycle: Send + Sync + std::fmt::Debug + 'static {
    /// Records activity on a batch of live sessions in one write (what the
    /// daemon's activity batcher flushes). Each entry names its user.
    async fn touch_batch(&self, sessions: &[(UserId, SessionId)]) -> Result<(), StoreError>;

    /// Records which client each of `sessions` is (from its `initialize`,
    /// when that came after the session was opened: WebSocket), in one
    /// write.
    async fn describe_clients(
        &self,
        sessions: &[(UserId, SessionId, SessionClient)],
    ) -> Result<(), StoreError>;

    /// Which of `sessions` ended elsewhere, and how: killed by an
    /// administrator, or expired (idle past the session timeout, or an idle
    /// session taken to make room at its user's cap). Each daemon asks
    /// about the sessions it holds, so it can end their connections.
    async fn ended_among(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<(SessionId, SessionStatus)>, StoreError>;

    /// Marks live sessions idle since a time (`Some`: nothing in flight,
    /// no stream open, for the idle grace) or in use again (`None`), in one
    /// write. When a user is at the cap, [`Sessions::open`] and
    /// [`Sessions::resume`] first expire that user's least recently used
    /// idle session, whichever daemon holds it.
    async fn mark_idle(
        &self,
        sessions: &[(UserId, SessionId, Option<SystemTime>)],
    ) -> Result<(), StoreError>;

    /// Marks every session idle for longer than `idle` (live or
    /// disconnected) `expired`, and returns them.
    async fn expire_idle(&self, idle: Duration) -> Result<Vec<SessionRecord>, StoreError>;

    /// Registers this store's node (at start). A store without a node, or
    /// one that is the only node (memory), has nothing to do.
    async fn register_node(&self) -> Result<(), StoreError>;

    /// This store's node is alive: its heartbeat and the activity of
    /// `sessions` in one write; then the live sessions of every node
    /// silent for longer than `node_timeout` become `disconnected`.
    /// Without nodes, only the activity is written.
    async fn heartbeat(
        &self,
        sessions: &[(UserId, SessionId)],
        node_timeout: Duration,
    ) -> Result<Heartbeat, StoreError>;

    /// After this node was reaped: claims `sessions` (which it still holds
    /// open) again, each within its user's `max_connections`, in order;
    /// returns the ones it may not keep (resumed elsewhere, killed,
    /// expired, or over the cap), whose connections must end.
    async fn reassert(
        &self,
        sessions: &[(UserId, SessionId)],
        max_connections: u32,
    ) -> Result<Vec<SessionId>, StoreError>;
}

/// Administrators' operations (a `service_role` principal; anyone else is
/// [`StoreError::Forbidden`]).
#[async_trait]
pub trait SessionAdmin: Send + Sync + std::fmt::Debug + 'static {
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
}

/// Conversations by `continuation_id`, each bound to its user.
#[async_trait]
pub trait ConversationStore: Send + Sync + std::fmt::Debug + 'static {
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
}

/// Usage: every provider call a user made (`mcp_usage`), summed per model.
#[async_trait]
pub trait UsageStore: Send + Sync + std::fmt::Debug + 'static {
    /// Records one provider call the principal made (`mcp_usage`).
    async fn record_usage(
        &self,
        principal: &Principal,
        record: UsageRecord,
    ) -> Result<(), StoreError>;

    /// The principal's own usage, per model, sorted by model.
    async fn usage(&self, principal: &Principal) -> Result<Vec<ModelUsage>, StoreError>;
}

/// Per-user limits that hold across every daemon on one store, without a
/// store write per call: a daemon leases a slice of a user's calls per
/// minute and of their running-call slots, spends it locally, and gives
/// back the slots it no longer uses.
#[async_trait]
pub trait UserBudgets: Send + Sync + std::fmt::Debug + 'static {
    /// Takes what it can of `request` for `user`, atomically per user:
    /// calls out of the user's token bucket, and slots for this store's
    /// node while all live nodes together hold fewer than
    /// `request.max_in_flight`. A store without nodes grants everything
    /// (the daemon's own limits are the only ones).
    async fn lease(&self, user: &UserId, request: LeaseRequest) -> Result<Lease, StoreError>;

    /// Gives back slots this node no longer uses (`(user, how many)`), in
    /// one write.
    async fn release_slots(&self, slots: &[(UserId, u32)]) -> Result<(), StoreError>;
}

/// What the network edge needs of a store: sessions and their lifecycle.
pub trait ConnectionStore: Sessions + SessionLifecycle {}

impl<T: Sessions + SessionLifecycle + ?Sized> ConnectionStore for T {}

/// A whole store: every concern. The daemon holds an `Arc<dyn
/// SessionStore>`.
pub trait SessionStore:
    ConnectionStore + SessionAdmin + ConversationStore + UsageStore + UserBudgets
{
}

impl<T> SessionStore for T where
    T: Sessions
        + SessionLifecycle
        + SessionAdmin
        + ConversationStore
        + UsageStore
        + UserBudgets
        + ?Sized
{
}
