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
}
