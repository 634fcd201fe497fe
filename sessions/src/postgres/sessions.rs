//! Sessions in PostgreSQL: open and resume through `mcp_open_session` and
//! `mcp_resume_session` (the per-user limit checked under a per-user
//! advisory lock), activity in batches, kills and idle expiry, and the
//! administrators' list and kill.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use exai_auth::{Principal, UserId};
use tokio_postgres::Row;

use super::{PostgresStore, Problem, seconds, store_error, unavailable};
use crate::{
    Heartbeat, OpenSession, Page, SessionAdmin, SessionClient, SessionFilter, SessionId,
    SessionLifecycle, SessionRecord, SessionStatus, Sessions, StoreError, is_admin,
};

const SESSION_COLUMNS: &str = "session_id, user_id, connection_status, created_at, last_active, metadata, node_id, idle_since";

/// A batch of sessions as the two arrays the SQL functions take.
fn columns(sessions: &[(UserId, SessionId)]) -> (Vec<uuid::Uuid>, Vec<&str>) {
    sessions
        .iter()
        .map(|(user, id)| (user.as_uuid(), id.as_str()))
        .unzip()
}

/// A page as SQL's `LIMIT` and `OFFSET`.
fn bounds(page: Page) -> (i64, i64) {
    let as_sql = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    (as_sql(page.limit), as_sql(page.offset))
}

fn session_from_row(row: &Row) -> Result<SessionRecord, StoreError> {
    let status: Option<String> = row.try_get("connection_status").map_err(unavailable)?;
    let status = SessionStatus::from_stored(status.as_deref());
    let user: Option<uuid::Uuid> = row.try_get("user_id").map_err(unavailable)?;
    let created_at: Option<SystemTime> = row.try_get("created_at").map_err(unavailable)?;
    let last_active: Option<SystemTime> = row.try_get("last_active").map_err(unavailable)?;
    let metadata: Option<serde_json::Value> = row.try_get("metadata").map_err(unavailable)?;
    let idle_since: Option<SystemTime> = row.try_get("idle_since").map_err(unavailable)?;
    Ok(SessionRecord {
        session_id: SessionId::from_client(
            row.try_get::<_, String>("session_id")
                .map_err(unavailable)?,
        ),
        user_id: UserId::new(
            user.ok_or_else(|| unavailable(Problem("a session row has no user")))?,
        ),
        status,
        created_at: created_at.unwrap_or(SystemTime::UNIX_EPOCH),
        last_active: last_active.or(created_at).unwrap_or(SystemTime::UNIX_EPOCH),
        metadata: metadata
            .and_then(|m| serde_json::from_value(m).ok())
            .unwrap_or_default(),
        node_id: row.try_get("node_id").map_err(unavailable)?,
        idle_since,
    })
}

#[async_trait]
impl Sessions for PostgresStore {
    async fn check(&self) -> Result<(), StoreError> {
        PostgresStore::check(self).await
    }

    async fn open(
        &self,
        principal: &Principal,
        request: OpenSession,
    ) -> Result<SessionRecord, StoreError> {
        let user = principal.user_id.as_uuid();
        let id = SessionId::generate();
        let limit = i32::try_from(request.max_connections).unwrap_or(i32::MAX);
        let metadata = serde_json::to_value(&request.metadata).map_err(unavailable)?;
        self.with_client(async |client| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM public.mcp_open_session($1, $2, $3, $4, $5)"
            );
            match client
                .query_one(
                    &sql,
                    &[&user, &id.as_str(), &limit, &metadata, &self.node_id()],
                )
                .await
            {
                Ok(row) => session_from_row(&row),
                Err(e) => Err(store_error(e, request.max_connections, None)),
            }
        })
        .await
    }

    async fn touch(&self, principal: &Principal, session: &SessionId) -> Result<(), StoreError> {
        let user = principal.user_id.as_uuid();
        self.with_client(async |client| {
            let updated = client
                .execute(
                    "UPDATE public.mcp_sessions SET last_active = now()
                      WHERE user_id = $1 AND session_id = $2 AND connection_status = 'connected'",
                    &[&user, &session.as_str()],
                )
                .await
                .map_err(unavailable)?;
            if updated == 1 {
                return Ok(());
            }
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM public.mcp_sessions WHERE user_id = $1 AND session_id = $2"
            );
            match client.query_opt(&sql, &[&user, &session.as_str()]).await.map_err(unavailable)? {
                Some(row) => Err(StoreError::Conflict(session_from_row(&row)?.status)),
                None => Err(StoreError::NotFound),
            }
        })
        .await
    }

    async fn close(&self, principal: &Principal, session: &SessionId) -> Result<(), StoreError> {
        let user = principal.user_id.as_uuid();
        self.with_client(async |client| {
            let row = client
                .query_one(
                    "SELECT public.mcp_close_session($1, $2)",
                    &[&user, &session.as_str()],
                )
                .await
                .map_err(unavailable)?;
            if row.try_get::<_, bool>(0).map_err(unavailable)? {
                Ok(())
            } else {
                Err(StoreError::NotFound)
            }
        })
        .await
    }

    async fn get(
        &self,
        principal: &Principal,
        session: &SessionId,
    ) -> Result<SessionRecord, StoreError> {
        let user = principal.user_id.as_uuid();
        self.with_client(async |client| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM public.mcp_sessions WHERE user_id = $1 AND session_id = $2"
            );
            match client.query_opt(&sql, &[&user, &session.as_str()]).await.map_err(unavailable)? {
                Some(row) => session_from_row(&row),
                None => Err(StoreError::NotFound),
            }
        })
        .await
    }

    async fn list(
        &self,
        principal: &Principal,
        page: Page,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let user = principal.user_id.as_uuid();
        let (limit, offset) = bounds(page);
        self.with_client(async |client| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM public.mcp_sessions WHERE user_id = $1
                  ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
            );
            client
                .query(&sql, &[&user, &limit, &offset])
                .await
                .map_err(unavailable)?
                .iter()
                .map(session_from_row)
                .collect()
        })
        .await
    }

    async fn resume(
        &self,
        principal: &Principal,
        session: &SessionId,
        max_connections: u32,
    ) -> Result<SessionRecord, StoreError> {
        let user = principal.user_id.as_uuid();
        let limit = i32::try_from(max_connections).unwrap_or(i32::MAX);
        self.with_client(async |client| {
            let sql =
                format!("SELECT {SESSION_COLUMNS} FROM public.mcp_resume_session($1, $2, $3, $4)");
            match client
                .query_one(&sql, &[&user, &session.as_str(), &limit, &self.node_id()])
                .await
            {
                Ok(row) => session_from_row(&row),
                Err(e) => Err(store_error(e, max_connections, None)),
            }
        })
        .await
    }
}

#[async_trait]
impl SessionLifecycle for PostgresStore {
    async fn touch_batch(&self, sessions: &[(UserId, SessionId)]) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let (users, ids) = columns(sessions);
        self.with_client(async |client| {
            client
                .execute("SELECT public.mcp_touch_sessions($1, $2)", &[&users, &ids])
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn describe_clients(
        &self,
        sessions: &[(UserId, SessionId, SessionClient)],
    ) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let users: Vec<uuid::Uuid> = sessions.iter().map(|(u, _, _)| u.as_uuid()).collect();
        let ids: Vec<&str> = sessions.iter().map(|(_, s, _)| s.as_str()).collect();
        let names: Vec<&str> = sessions.iter().map(|(_, _, c)| c.name.as_str()).collect();
        let versions: Vec<&str> = sessions
            .iter()
            .map(|(_, _, c)| c.version.as_str())
            .collect();
        self.with_client(async |client| {
            client
                .execute(
                    "SELECT public.mcp_describe_sessions($1, $2, $3, $4)",
                    &[&users, &ids, &names, &versions],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn ended_among(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<(SessionId, SessionStatus)>, StoreError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = sessions.iter().map(SessionId::as_str).collect();
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT session_id, connection_status FROM public.mcp_ended_sessions($1)",
                    &[&ids],
                )
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    let id: String = r.try_get(0).map_err(unavailable)?;
                    let status: Option<String> = r.try_get(1).map_err(unavailable)?;
                    Ok((
                        SessionId::from_client(id),
                        SessionStatus::from_stored(status.as_deref()),
                    ))
                })
                .collect()
        })
        .await
    }

    async fn mark_idle(
        &self,
        sessions: &[(UserId, SessionId, Option<SystemTime>)],
    ) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let users: Vec<uuid::Uuid> = sessions.iter().map(|(u, _, _)| u.as_uuid()).collect();
        let ids: Vec<&str> = sessions.iter().map(|(_, s, _)| s.as_str()).collect();
        let since: Vec<Option<SystemTime>> = sessions.iter().map(|(_, _, at)| *at).collect();
        self.with_client(async |client| {
            client
                .execute(
                    "SELECT public.mcp_mark_idle($1, $2, $3)",
                    &[&users, &ids, &since],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn register_node(&self) -> Result<(), StoreError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        self.with_client(async |client| {
            client
                .execute(
                    "SELECT public.mcp_register_node($1, $2, $3)",
                    &[&node.id, &node.host, &node.version],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
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
        self.with_client(async |client| {
            let row = client
                .query_one(
                    "SELECT was_reaped, reaped_sessions
                       FROM public.mcp_node_heartbeat($1, $2, $3, $4, $5, $6)",
                    &[
                        &node.id,
                        &node.host,
                        &node.version,
                        &users,
                        &ids,
                        &seconds(node_timeout),
                    ],
                )
                .await
                .map_err(unavailable)?;
            let reaped: i32 = row.try_get("reaped_sessions").map_err(unavailable)?;
            Ok(Heartbeat {
                was_reaped: row.try_get("was_reaped").map_err(unavailable)?,
                reaped_sessions: u64::try_from(reaped).unwrap_or(0),
            })
        })
        .await
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
        let limit = i32::try_from(max_connections).unwrap_or(i32::MAX);
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT public.mcp_reassert_sessions($1, $2, $3, $4)",
                    &[&node.id, &users, &ids, &limit],
                )
                .await
                .map_err(unavailable)?;
            Ok(rows
                .iter()
                .map(|r| SessionId::from_client(r.get::<_, String>(0)))
                .collect())
        })
        .await
    }

    async fn expire_idle(&self, idle: Duration) -> Result<Vec<SessionRecord>, StoreError> {
        self.with_client(async |client| {
            let sql = format!("SELECT {SESSION_COLUMNS} FROM public.mcp_expire_sessions($1)");
            client
                .query(&sql, &[&seconds(idle)])
                .await
                .map_err(unavailable)?
                .iter()
                .map(session_from_row)
                .collect()
        })
        .await
    }
}

#[async_trait]
impl SessionAdmin for PostgresStore {
    async fn admin_list(
        &self,
        admin: &Principal,
        filter: SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        if !is_admin(admin) {
            return Err(StoreError::Forbidden);
        }
        let user = filter.user.map(|u| u.as_uuid());
        let status = filter.status.map(SessionStatus::as_str);
        let (limit, offset) = bounds(filter.page);
        self.with_client(async |client| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM public.mcp_sessions
                  WHERE ($1::uuid IS NULL OR user_id = $1)
                    AND ($2::text IS NULL OR connection_status = $2)
                  ORDER BY created_at DESC, id LIMIT $3 OFFSET $4"
            );
            client
                .query(&sql, &[&user, &status, &limit, &offset])
                .await
                .map_err(unavailable)?
                .iter()
                .map(session_from_row)
                .collect()
        })
        .await
    }

    async fn admin_kill(
        &self,
        admin: &Principal,
        session: &SessionId,
    ) -> Result<SessionRecord, StoreError> {
        if !is_admin(admin) {
            return Err(StoreError::Forbidden);
        }
        self.with_client(async |client| {
            let sql = format!("SELECT {SESSION_COLUMNS} FROM public.mcp_kill_session($1)");
            match client.query_one(&sql, &[&session.as_str()]).await {
                Ok(row) => session_from_row(&row),
                Err(e) => Err(store_error(e, 0, None)),
            }
        })
        .await
    }
}
