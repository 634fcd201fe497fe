//! The Supabase backend: Supabase's REST API (PostgREST) through the
//! `postgrest` crate, with the project's service-role key.
//!
//! Everything that must be atomic is one of the SQL functions of the
//! migrations, called at `/rest/v1/rpc/<name>`; reads are plain table
//! queries that name the user they act for. PostgREST answers a function's
//! `PTxyz` error with HTTP `xyz` and a JSON body whose `code` is `PTxyz`,
//! which is what this backend reads
//! (<https://postgrest.org/en/stable/references/errors.html>).
//!
//! This file is the client and the sessions; `conversations` holds
//! conversations and usage, `keys` the API keys, `budgets` the per-user
//! limits across daemons.

mod budgets;
mod conversations;
mod keys;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use exai_auth::{Principal, Secret, UserId};
use postgrest::Postgrest;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{
    ConversationLimits, Heartbeat, OpenSession, Page, SessionAdmin, SessionClient, SessionFilter,
    SessionId, SessionLifecycle, SessionRecord, SessionStatus, Sessions, StoreError, is_admin,
};

const SESSION_COLUMNS: &str =
    "session_id,user_id,connection_status,created_at,last_active,metadata,node_id,idle_since";

/// How to reach the project.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SupabaseConfig {
    /// Bound on every call.
    pub timeout: Duration,
}

impl Default for SupabaseConfig {
    fn default() -> Self {
        SupabaseConfig {
            timeout: Duration::from_secs(5),
        }
    }
}

/// Sessions, conversations and API keys through Supabase's REST API.
pub struct SupabaseStore {
    client: Postgrest,
    key: Secret,
    timeout: Duration,
    /// The daemon this store serves, if it is one (not the CLI).
    node: Option<crate::Node>,
}

impl std::fmt::Debug for SupabaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupabaseStore").finish_non_exhaustive()
    }
}

/// What went wrong talking to the REST API.
#[derive(Debug, thiserror::Error)]
pub(super) enum RestError {
    #[error("the REST API could not be reached")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the REST API did not answer in time")]
    Timeout,
    #[error("the REST API answered HTTP {status} ({code}): {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the REST API answered something unexpected: {0}")]
    Unexpected(String),
}

impl RestError {
    pub(super) fn code(&self) -> Option<&str> {
        match self {
            RestError::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub(super) fn unavailable(error: RestError) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

/// A REST error as a store error: our functions' PTxyz codes mean what they
/// say; anything else is the service failing.
pub(super) fn store_error(
    error: RestError,
    max_connections: u32,
    limits: Option<&ConversationLimits>,
) -> StoreError {
    crate::sqlstate::known(error.code(), max_connections, limits)
        .unwrap_or_else(|| unavailable(error))
}

pub(super) fn seconds(d: Duration) -> u64 {
    d.as_secs()
}

pub(super) fn timestamp(value: &Value) -> Result<Option<SystemTime>, RestError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| Some(SystemTime::from(t)))
            .map_err(|_| RestError::Unexpected(format!("a timestamp '{text}'"))),
        other => Err(RestError::Unexpected(format!("a timestamp {other}"))),
    }
}

pub(super) fn format_timestamp(at: SystemTime) -> String {
    OffsetDateTime::from(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A batch of sessions as the two arrays the SQL functions take.
fn columns(sessions: &[(UserId, SessionId)]) -> (Vec<UserId>, Vec<&SessionId>) {
    sessions.iter().map(|(user, id)| (*user, id)).unzip()
}

fn session_from_json(row: &Value) -> Result<SessionRecord, RestError> {
    let text = |field: &str| row.get(field).and_then(Value::as_str);
    let status = SessionStatus::from_stored(text("connection_status"));
    let user: UserId = text("user_id")
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| RestError::Unexpected("a session row without a user".into()))?;
    let created_at = timestamp(&row["created_at"])?;
    Ok(SessionRecord {
        session_id: SessionId::from_client(
            text("session_id")
                .ok_or_else(|| RestError::Unexpected("a session without an id".into()))?,
        ),
        user_id: user,
        status,
        created_at: created_at.unwrap_or(SystemTime::UNIX_EPOCH),
        last_active: timestamp(&row["last_active"])?
            .or(created_at)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        metadata: serde_json::from_value(row["metadata"].clone()).unwrap_or_default(),
        node_id: text("node_id").and_then(|n| n.parse().ok()),
        idle_since: timestamp(&row["idle_since"])?,
    })
}

impl SupabaseStore {
    /// A store for the project at `supabase_url`, acting with the project's
    /// `service_role` key (`SUPABASE_SERVICE_ROLE_KEY`).
    pub fn new(supabase_url: &str, service_role_key: Secret, config: SupabaseConfig) -> Self {
        let rest = format!("{}/rest/v1", supabase_url.trim_end_matches('/'));
        let key = String::from_utf8_lossy(service_role_key.expose()).into_owned();
        SupabaseStore {
            client: Postgrest::new(rest).insert_header("apikey", key),
            key: service_role_key,
            timeout: config.timeout,
            node: None,
        }
    }

    /// This store as `node`'s, as [`PostgresStore::with_node`].
    ///
    /// [`PostgresStore::with_node`]: crate::PostgresStore::with_node
    pub fn with_node(mut self, node: crate::Node) -> Self {
        self.node = Some(node);
        self
    }

    fn node_id(&self) -> Option<uuid::Uuid> {
        self.node.as_ref().map(|node| node.id)
    }

    /// Whether the API answers and the schema is there (a one-row read of
    /// `mcp_sessions`).
    pub async fn check(&self) -> Result<(), StoreError> {
        let probe = self
            .client
            .from("mcp_sessions")
            .select("session_id")
            .limit(1);
        self.send(probe).await.map(|_| ()).map_err(unavailable)
    }

    fn bearer(&self) -> String {
        String::from_utf8_lossy(self.key.expose()).into_owned()
    }

    /// Sends a request and returns its JSON body, within the timeout.
    pub(super) async fn send(&self, builder: postgrest::Builder) -> Result<Value, RestError> {
        let work = async {
            let response = builder
                .auth(self.bearer())
                .execute()
                .await
                .map_err(|e| RestError::Transport(Box::new(e)))?;
            let status = response.status().as_u16();
            let body = response
                .text()
                .await
                .map_err(|e| RestError::Transport(Box::new(e)))?;
            let json: Value = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&body).map_err(|_| {
                    RestError::Unexpected(format!("a body that is not JSON (HTTP {status})"))
                })?
            };
            if status >= 400 {
                return Err(RestError::Status {
                    status,
                    code: json["code"].as_str().unwrap_or_default().to_owned(),
                    message: json["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            Ok(json)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(RestError::Timeout))
    }

    pub(super) async fn rpc(&self, function: &str, args: Value) -> Result<Value, RestError> {
        self.send(self.client.rpc(function, args.to_string())).await
    }

    async fn sessions(
        &self,
        builder: postgrest::Builder,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = self.send(builder).await.map_err(unavailable)?;
        rows.as_array()
            .ok_or_else(|| unavailable(RestError::Unexpected("rows that are not an array".into())))?
            .iter()
            .map(|row| session_from_json(row).map_err(unavailable))
            .collect()
    }

    fn one_session(value: Result<Value, RestError>, max: u32) -> Result<SessionRecord, StoreError> {
        let value = value.map_err(|e| store_error(e, max, None))?;
        // A function returning one row comes back as an object (or a
        // one-element array, depending on the PostgREST version).
        let row = match &value {
            Value::Array(rows) => rows.first().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        session_from_json(&row).map_err(unavailable)
    }
}

#[async_trait]
impl Sessions for SupabaseStore {
    async fn check(&self) -> Result<(), StoreError> {
        SupabaseStore::check(self).await
    }

    async fn open(
        &self,
        principal: &Principal,
        request: OpenSession,
    ) -> Result<SessionRecord, StoreError> {
        let args = json!({
            "p_user_id": principal.user_id,
            "p_session_id": SessionId::generate(),
            "p_max_connections": request.max_connections,
            "p_metadata": request.metadata,
            "p_node_id": self.node_id(),
        });
        Self::one_session(
            self.rpc("mcp_open_session", args).await,
            request.max_connections,
        )
    }

    async fn touch(&self, principal: &Principal, session: &SessionId) -> Result<(), StoreError> {
        let args = json!({ "p_user_ids": [principal.user_id], "p_session_ids": [session] });
        let touched = self
            .rpc("mcp_touch_sessions", args)
            .await
            .map_err(unavailable)?;
        if touched.as_i64() == Some(1) {
            return Ok(());
        }
        let record = self.get(principal, session).await?;
        Err(StoreError::Conflict(record.status))
    }

    async fn close(&self, principal: &Principal, session: &SessionId) -> Result<(), StoreError> {
        let args = json!({ "p_user_id": principal.user_id, "p_session_id": session });
        match self
            .rpc("mcp_close_session", args)
            .await
            .map_err(unavailable)?
        {
            Value::Bool(true) => Ok(()),
            _ => Err(StoreError::NotFound),
        }
    }

    async fn get(
        &self,
        principal: &Principal,
        session: &SessionId,
    ) -> Result<SessionRecord, StoreError> {
        let query = self
            .client
            .from("mcp_sessions")
            .select(SESSION_COLUMNS)
            .eq("user_id", principal.user_id.to_string())
            .eq("session_id", session.as_str());
        self.sessions(query)
            .await?
            .pop()
            .ok_or(StoreError::NotFound)
    }

    async fn list(
        &self,
        principal: &Principal,
        page: Page,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let query = self
            .client
            .from("mcp_sessions")
            .select(SESSION_COLUMNS)
            .eq("user_id", principal.user_id.to_string())
            .order("created_at.desc")
            .range(page.offset, page.offset + page.limit - 1);
        self.sessions(query).await
    }

    async fn resume(
        &self,
        principal: &Principal,
        session: &SessionId,
        max_connections: u32,
    ) -> Result<SessionRecord, StoreError> {
        let args = json!({
            "p_user_id": principal.user_id,
            "p_session_id": session,
            "p_max_connections": max_connections,
            "p_node_id": self.node_id(),
        });
        Self::one_session(self.rpc("mcp_resume_session", args).await, max_connections)
    }
}

#[async_trait]
impl SessionLifecycle for SupabaseStore {
    async fn touch_batch(&self, sessions: &[(UserId, SessionId)]) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let (users, ids) = columns(sessions);
        let args = json!({ "p_user_ids": users, "p_session_ids": ids });
        self.rpc("mcp_touch_sessions", args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ended_among(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<(SessionId, SessionStatus)>, StoreError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .rpc("mcp_ended_sessions", json!({ "p_session_ids": sessions }))
            .await
            .map_err(unavailable)?;
        Ok(rows
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| {
                let id = row["session_id"].as_str()?;
                let status = SessionStatus::from_stored(row["connection_status"].as_str());
                Some((SessionId::from_client(id), status))
            })
            .collect())
    }

    async fn mark_idle(
        &self,
        sessions: &[(UserId, SessionId, Option<SystemTime>)],
    ) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let users: Vec<UserId> = sessions.iter().map(|(u, _, _)| *u).collect();
        let ids: Vec<&SessionId> = sessions.iter().map(|(_, s, _)| s).collect();
        let since: Vec<Option<String>> = sessions
            .iter()
            .map(|(_, _, at)| at.map(format_timestamp))
            .collect();
        let args = json!({ "p_user_ids": users, "p_session_ids": ids, "p_idle_since": since });
        self.rpc("mcp_mark_idle", args).await.map_err(unavailable)?;
        Ok(())
    }

    async fn describe_clients(
        &self,
        sessions: &[(UserId, SessionId, SessionClient)],
    ) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let users: Vec<UserId> = sessions.iter().map(|(u, _, _)| *u).collect();
        let ids: Vec<&SessionId> = sessions.iter().map(|(_, s, _)| s).collect();
        let names: Vec<&str> = sessions.iter().map(|(_, _, c)| c.name.as_str()).collect();
        let versions: Vec<&str> = sessions
            .iter()
            .map(|(_, _, c)| c.version.as_str())
            .collect();
        let args = json!({
            "p_user_ids": users, "p_session_ids": ids,
            "p_names": names, "p_versions": versions,
        });
        self.rpc("mcp_describe_sessions", args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn register_node(&self) -> Result<(), StoreError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        let args = json!({ "p_node_id": node.id, "p_host": node.host, "p_version": node.version });
        self.rpc("mcp_register_node", args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        sessions: &[(UserId, SessionId)],
        node_timeout: Duration,
    ) -> Result<Heartbeat, StoreError> {
        let Some(node) = &self.node else {
            self.touch_batch(sessions).await?;
            return Ok(Heartbeat::default());
        };
        let (users, ids) = columns(sessions);
        let args = json!({
            "p_node_id": node.id, "p_host": node.host, "p_version": node.version,
            "p_user_ids": users, "p_session_ids": ids,
            "p_node_timeout_secs": seconds(node_timeout),
        });
        let rows = self
            .rpc("mcp_node_heartbeat", args)
            .await
            .map_err(unavailable)?;
        let row = &rows[0];
        match (row["was_reaped"].as_bool(), row["reaped_sessions"].as_u64()) {
            (Some(was_reaped), Some(reaped_sessions)) => Ok(Heartbeat {
                was_reaped,
                reaped_sessions,
            }),
            _ => Err(unavailable(RestError::Unexpected(
                "mcp_node_heartbeat answered without its row".into(),
            ))),
        }
    }

    async fn reassert(
        &self,
        sessions: &[(UserId, SessionId)],
        max_connections: u32,
    ) -> Result<Vec<SessionId>, StoreError> {
        let Some(node) = &self.node else {
            return Ok(Vec::new());
        };
        let (users, ids) = columns(sessions);
        let args = json!({
            "p_node_id": node.id, "p_user_ids": users, "p_session_ids": ids,
            "p_max_connections": max_connections,
        });
        let refused = self
            .rpc("mcp_reassert_sessions", args)
            .await
            .map_err(unavailable)?;
        Ok(refused
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .map(SessionId::from_client)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn expire_idle(&self, idle: Duration) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = self
            .rpc(
                "mcp_expire_sessions",
                json!({ "p_idle_seconds": seconds(idle) }),
            )
            .await
            .map_err(unavailable)?;
        rows.as_array()
            .map(|rows| rows.iter().map(session_from_json).collect::<Result<_, _>>())
            .unwrap_or_else(|| Ok(Vec::new()))
            .map_err(unavailable)
    }
}

#[async_trait]
impl SessionAdmin for SupabaseStore {
    async fn admin_list(
        &self,
        admin: &Principal,
        filter: SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        if !is_admin(admin) {
            return Err(StoreError::Forbidden);
        }
        let mut query = self
            .client
            .from("mcp_sessions")
            .select(SESSION_COLUMNS)
            .order("created_at.desc");
        if let Some(user) = filter.user {
            query = query.eq("user_id", user.to_string());
        }
        if let Some(status) = filter.status {
            query = query.eq("connection_status", status.as_str());
        }
        let page = filter.page;
        query = query.range(page.offset, page.offset + page.limit - 1);
        self.sessions(query).await
    }

    async fn admin_kill(
        &self,
        admin: &Principal,
        session: &SessionId,
    ) -> Result<SessionRecord, StoreError> {
        if !is_admin(admin) {
            return Err(StoreError::Forbidden);
        }
        Self::one_session(
            self.rpc("mcp_kill_session", json!({ "p_session_id": session }))
                .await,
            0,
        )
    }
}
