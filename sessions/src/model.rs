//! The records a store keeps.

use std::fmt;
use std::time::SystemTime;

use exai_auth::UserId;
use serde::{Deserialize, Serialize};

/// An MCP session id: 122 random bits (UUID v4 from the OS CSPRNG), never
/// derived from anything a client controls.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random id.
    pub fn generate() -> Self {
        SessionId(uuid::Uuid::new_v4().to_string())
    }

    /// Wraps an id a client sent back (it is only ever looked up, never trusted).
    pub fn from_client(id: impl Into<String>) -> Self {
        SessionId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A conversation's handle: the `continuation_id` tools hand out. Random,
/// and only ever meaningful together with its owner.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConversationId(String);

impl ConversationId {
    /// A fresh random id.
    pub fn generate() -> Self {
        ConversationId(uuid::Uuid::new_v4().to_string())
    }

    /// Wraps an id a client sent back (only ever looked up, never trusted).
    pub fn from_client(id: impl Into<String>) -> Self {
        ConversationId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Turn {
    /// `user` or `assistant` (or a tool's own label).
    pub role: String,
    /// What was said.
    pub content: String,
}

impl Turn {
    /// A turn by `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Turn {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// How long and how far a conversation may go.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ConversationLimits {
    /// `MAX_CONVERSATION_TURNS` (default 20).
    pub max_turns: usize,
    /// `CONVERSATION_TIMEOUT_HOURS` (default 3): a conversation untouched
    /// for this long is gone.
    pub timeout: std::time::Duration,
    /// The memory store's bound on the text one user's conversations hold
    /// together (`EXAI_USER_CONVERSATION_BYTES`, default 64 MiB): past it
    /// the user's oldest conversations are dropped.
    pub max_bytes_per_user: usize,
    /// The memory store's bound on the text of all conversations
    /// (`EXAI_CONVERSATION_MEMORY_BYTES`, default 1 GiB): past it the
    /// oldest conversations, whoever's, are dropped.
    pub max_bytes_total: usize,
}

impl Default for ConversationLimits {
    fn default() -> Self {
        ConversationLimits {
            max_turns: 20,
            timeout: std::time::Duration::from_secs(3 * 3600),
            max_bytes_per_user: 64 << 20,
            max_bytes_total: 1 << 30,
        }
    }
}

/// A bounded slice of a list, newest first: at most `limit` rows after
/// skipping `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Rows at most (at most [`Page::MAX_LIMIT`]).
    pub limit: usize,
    /// Rows skipped first.
    pub offset: usize,
}

impl Page {
    /// The most rows one page may hold.
    pub const MAX_LIMIT: usize = 1000;

    /// `limit` rows (clamped to 1 ..= [`Page::MAX_LIMIT`]) after `offset`.
    pub fn new(limit: usize, offset: usize) -> Self {
        Page {
            limit: limit.clamp(1, Self::MAX_LIMIT),
            offset,
        }
    }
}

impl Default for Page {
    /// The newest 100.
    fn default() -> Self {
        Page::new(100, 0)
    }
}

/// Which sessions an administrator lists.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SessionFilter {
    /// Only this user's.
    pub user: Option<UserId>,
    /// Only in this state.
    pub status: Option<SessionStatus>,
    /// Which of them.
    pub page: Page,
}

impl SessionFilter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &SessionRecord) -> bool {
        self.user.is_none_or(|u| u == record.user_id)
            && self.status.is_none_or(|s| s == record.status)
    }
}

/// A session's state, as stored in `mcp_sessions.connection_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SessionStatus {
    /// A client is attached.
    Connected,
    /// The client went away; the owner may resume it until it times out.
    Disconnected,
    /// Idle for longer than the session timeout.
    Expired,
    /// Ended by an administrator.
    Killed,
}

impl SessionStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Connected => "connected",
            SessionStatus::Disconnected => "disconnected",
            SessionStatus::Expired => "expired",
            SessionStatus::Killed => "killed",
        }
    }

    /// A stored spelling read back (anything unknown reads as
    /// `disconnected`, which nothing counts or resumes into trouble).
    pub(crate) fn from_stored(text: Option<&str>) -> SessionStatus {
        match text {
            Some("connected") => SessionStatus::Connected,
            Some("expired") => SessionStatus::Expired,
            Some("killed") => SessionStatus::Killed,
            _ => SessionStatus::Disconnected,
        }
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the daemon records about a connection (`mcp_sessions.metadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionMetadata {
    /// `websocket`, `streamable-http`, …
    pub transport: String,
    /// The client's self-reported name, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// The client's self-reported version, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// The peer address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    /// Which daemon holds the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

impl SessionMetadata {
    /// Metadata for a connection over `transport` from `remote_addr`.
    pub fn new(transport: impl Into<String>, remote_addr: Option<String>) -> Self {
        SessionMetadata {
            transport: transport.into(),
            remote_addr,
            ..SessionMetadata::default()
        }
    }

    /// The same, naming the client as its `initialize` did.
    pub fn with_client(mut self, client: SessionClient) -> Self {
        self.client_name = Some(client.name);
        self.client_version = Some(client.version);
        self
    }
}

/// The client a session's `initialize` named (`clientInfo`), so a user
/// can tell which editor holds what. Each field is cut to
/// [`SessionClient::MAX_CHARS`] characters, so what a client says about
/// itself stays small in every row and list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionClient {
    /// `clientInfo.name`.
    pub name: String,
    /// `clientInfo.version`.
    pub version: String,
}

impl SessionClient {
    /// The most characters kept of each field.
    pub const MAX_CHARS: usize = 128;

    /// A client's name and version, each cut to [`Self::MAX_CHARS`].
    pub fn new(name: &str, version: &str) -> Self {
        let cut = |s: &str| s.chars().take(Self::MAX_CHARS).collect();
        SessionClient {
            name: cut(name),
            version: cut(version),
        }
    }
}

/// A request to open a session.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OpenSession {
    /// The most live sessions this user may hold, including the new one.
    pub max_connections: u32,
    /// What to record about the connection.
    pub metadata: SessionMetadata,
}

impl OpenSession {
    /// A request with the given limit and metadata.
    pub fn new(max_connections: u32, metadata: SessionMetadata) -> Self {
        OpenSession {
            max_connections,
            metadata,
        }
    }
}

/// A stored session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionRecord {
    /// The session's id.
    pub session_id: SessionId,
    /// Its owner.
    pub user_id: UserId,
    /// Its state.
    pub status: SessionStatus,
    /// When it was opened.
    pub created_at: SystemTime,
    /// When it last saw activity.
    pub last_active: SystemTime,
    /// What was recorded about the connection.
    pub metadata: SessionMetadata,
    /// The daemon holding it (or that last held it), where the store
    /// knows nodes.
    pub node_id: Option<uuid::Uuid>,
    /// For a live HTTP session nobody has used for the idle grace: since
    /// when (its last request ended). The first to go when its user is at
    /// the cap.
    pub idle_since: Option<SystemTime>,
}

/// A daemon as the cluster knows it: what holds sessions and heartbeats.
/// A store given one (`with_node`) stamps it on every session it opens or
/// resumes, and [`SessionLifecycle::heartbeat`] keeps it alive.
///
/// [`SessionLifecycle::heartbeat`]: crate::SessionLifecycle::heartbeat
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Fresh at every start.
    pub id: uuid::Uuid,
    /// The machine's host name, for people reading the table.
    pub host: String,
    /// The daemon's version.
    pub version: String,
}

impl Node {
    /// A node with a fresh id.
    pub fn new(host: impl Into<String>, version: impl Into<String>) -> Self {
        Node {
            id: uuid::Uuid::new_v4(),
            host: host.into(),
            version: version.into(),
        }
    }
}

/// What one heartbeat found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// This node had been reaped (it was silent too long, a pause): it is
    /// registered again, and must re-assert the sessions it still holds
    /// ([`SessionLifecycle::reassert`]).
    ///
    /// [`SessionLifecycle::reassert`]: crate::SessionLifecycle::reassert
    pub was_reaped: bool,
    /// Live sessions of silent nodes this heartbeat freed.
    pub reaped_sessions: u64,
}

/// What a daemon asks of a user's budget when its local slice runs out
/// ([`UserBudgets::lease`](crate::UserBudgets::lease)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The user's calls per minute (`EXAI_USER_RPM`); 0 is no rate limit.
    pub rpm: u32,
    /// Calls wanted out of the user's bucket (up to `rpm`, refilled at
    /// `rpm` per minute); 0 asks for none.
    pub calls: u32,
    /// The user's running calls over all daemons (`EXAI_USER_MAX_INFLIGHT`).
    pub max_in_flight: u32,
    /// Running-call slots wanted for this node; 0 asks for none.
    pub slots: u32,
}

impl LeaseRequest {
    /// All of it: what a store without nodes grants.
    pub(crate) fn granted(self) -> Lease {
        Lease {
            calls: self.calls,
            slots: self.slots,
            retry_after: std::time::Duration::ZERO,
        }
    }
}

/// What a lease granted: at most what was asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// Calls taken out of the user's bucket.
    pub calls: u32,
    /// Running-call slots this node now holds in addition.
    pub slots: u32,
    /// When calls were asked and none granted: how long until the bucket
    /// holds one again.
    pub retry_after: std::time::Duration,
}

/// One provider call, as `mcp_usage` records it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageRecord {
    /// The session the call was made in, if any (a stateless request has none).
    pub session_id: Option<SessionId>,
    /// The tool that made the call.
    pub tool: String,
    /// The provider asked.
    pub provider: String,
    /// The model asked.
    pub model: String,
    /// Tokens in the prompt, as the provider reported them (0 when it did not).
    pub prompt_tokens: u64,
    /// Tokens in the answer, likewise.
    pub completion_tokens: u64,
    /// How long the call took.
    pub latency: std::time::Duration,
    /// `ok`, or what went wrong (`error`, `cancelled`, …).
    pub outcome: String,
}

impl UsageRecord {
    /// A call of `tool` to `provider`'s `model` that ended with `outcome`.
    pub fn new(
        tool: impl Into<String>,
        provider: impl Into<String>,
        model: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        UsageRecord {
            session_id: None,
            tool: tool.into(),
            provider: provider.into(),
            model: model.into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            latency: std::time::Duration::ZERO,
            outcome: outcome.into(),
        }
    }

    /// Made in `session`.
    pub fn in_session(mut self, session: Option<SessionId>) -> Self {
        self.session_id = session;
        self
    }

    /// With the provider's token counts.
    pub fn with_tokens(mut self, prompt: u64, completion: u64) -> Self {
        self.prompt_tokens = prompt;
        self.completion_tokens = completion;
        self
    }

    /// Taking `latency`.
    pub fn with_latency(mut self, latency: std::time::Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Whether the call succeeded.
    pub fn is_ok(&self) -> bool {
        self.outcome == "ok"
    }
}

/// A user's usage of one model, summed over every call recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelUsage {
    /// The model.
    pub model: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that did not succeed.
    pub errors: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl ModelUsage {
    /// Nothing yet of `model`.
    pub fn new(model: impl Into<String>) -> Self {
        ModelUsage {
            model: model.into(),
            ..ModelUsage::default()
        }
    }

    /// Counts `record` in.
    pub fn add(&mut self, record: &UsageRecord) {
        self.calls += 1;
        self.errors += u64::from(!record.is_ok());
        self.prompt_tokens += record.prompt_tokens;
        self.completion_tokens += record.completion_tokens;
    }
}
