//! The PostgreSQL backend: a pooled direct connection (`DATABASE_URL`), for
//! self-hosted PostgreSQL and for Supabase's direct connection string (TLS
//! per the URL's `sslmode`).
//!
//! tokio-postgres with a deadpool pool: asynchronous, small, and needing no
//! database at build time (sqlx's checked queries would).
//!
//! The per-user limit is checked inside `mcp_open_session`, under a per-user
//! advisory lock, so several daemons sharing one database cannot together
//! exceed it. Every query names the user it acts for. Every call is bounded
//! by [`PostgresConfig::timeout`]; a call that fails or times out is
//! [`StoreError::Unavailable`].

use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use exai_auth::{ApiKeyRecord, ApiKeyStore, KeyStoreError, Principal, UserId};
use rustls_platform_verifier::ConfigVerifierExt as _;
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{
    ConversationId, ConversationLimits, ModelUsage, OpenSession, SessionFilter, SessionId,
    SessionRecord, SessionStatus, SessionStore, StoreError, Turn, UsageRecord, is_admin,
};

/// The SQL migrations, in order. Each is idempotent; `exai migrate` and
/// [`PostgresStore::migrate`] apply them, and they paste into Supabase's SQL
/// editor as they are.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_supabase_bootstrap",
        include_str!("../migrations/0001_supabase_bootstrap.sql"),
    ),
    (
        "0002_mcp_sessions",
        include_str!("../migrations/0002_mcp_sessions.sql"),
    ),
    (
        "0003_mcp_api_keys",
        include_str!("../migrations/0003_mcp_api_keys.sql"),
    ),
    (
        "0004_session_functions",
        include_str!("../migrations/0004_session_functions.sql"),
    ),
    (
        "0005_conversations_and_lifecycle",
        include_str!("../migrations/0005_conversations_and_lifecycle.sql"),
    ),
    (
        "0006_killed_sessions",
        include_str!("../migrations/0006_killed_sessions.sql"),
    ),
    ("0007_usage", include_str!("../migrations/0007_usage.sql")),
    (
        "0008_conversation_exchanges",
        include_str!("../migrations/0008_conversation_exchanges.sql"),
    ),
];

const SESSION_COLUMNS: &str =
    "session_id, user_id, connection_status, created_at, last_active, metadata";

/// How to reach the database.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// Most connections in the pool.
    pub max_connections: usize,
    /// Bound on every store call, waiting for a connection included.
    pub timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            max_connections: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What [`PostgresStore::migrate`] did with one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationOutcome {
    /// Applied now.
    Applied(&'static str),
    /// Applied before.
    AlreadyApplied(&'static str),
}

/// Sessions and API keys in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

/// An error message for a problem of ours, not the database's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Problem(&'static str);

impl PostgresStore {
    /// A pool for `url` (`postgres://user:password@host:port/db`). Connects
    /// lazily: an unreachable database shows at the first call.
    ///
    /// TLS follows the URL's `sslmode`, as libpq's does: `prefer` (the
    /// default) uses TLS when the server offers it, `require` insists, and
    /// `disable` never tries. Certificates are checked against the
    /// platform's trusted roots.
    pub fn new(url: &str, config: PostgresConfig) -> Result<Self, StoreError> {
        let pg_config = tokio_postgres::Config::from_str(url).map_err(unavailable)?;
        let tls = rustls::ClientConfig::with_platform_verifier().map_err(unavailable)?;
        let manager = Manager::from_config(
            pg_config,
            MakeRustlsConnect::new(tls),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(unavailable)?;
        Ok(PostgresStore {
            pool,
            timeout: config.timeout,
        })
    }

    /// Runs `f` with a pooled connection, within the timeout.
    async fn with_client<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, StoreError>,
    {
        let work = async {
            let client = self.pool.get().await.map_err(unavailable)?;
            f(&client).await
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(unavailable(Problem("the database did not answer in time"))))
    }

    /// Whether the database answers.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.with_client(async |client| {
            client.simple_query("SELECT 1").await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    /// The ids of the users with these emails (admin tooling).
    pub async fn user_ids_by_email(&self, email: &str) -> Result<Vec<UserId>, StoreError> {
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT id FROM auth.users WHERE lower(email) = lower($1)",
                    &[&email],
                )
                .await
                .map_err(unavailable)?;
            Ok(rows.iter().map(|r| UserId::new(r.get(0))).collect())
        })
        .await
    }

    /// Every user who holds an API key (admin tooling).
    pub async fn all_api_key_users(&self) -> Result<Vec<UserId>, StoreError> {
        self.with_client(async |client| {
            let rows = client
                .query("SELECT DISTINCT user_id FROM public.mcp_api_keys", &[])
                .await
                .map_err(unavailable)?;
            Ok(rows.iter().map(|r| UserId::new(r.get(0))).collect())
        })
        .await
    }

    /// The emails of these users, where known (admin tooling).
    pub async fn emails(
        &self,
        users: &[UserId],
    ) -> Result<std::collections::HashMap<UserId, String>, StoreError> {
        let ids: Vec<uuid::Uuid> = users.iter().map(|u| u.as_uuid()).collect();
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT id, email FROM auth.users WHERE id = ANY($1) AND email IS NOT NULL",
                    &[&ids],
                )
                .await
                .map_err(unavailable)?;
            Ok(rows
                .iter()
                .map(|r| (UserId::new(r.get(0)), r.get(1)))
                .collect())
        })
        .await
    }

    /// The migrations not applied yet (all of them on an empty database).
    pub async fn pending_migrations(&self) -> Result<Vec<&'static str>, StoreError> {
        let applied: Vec<String> = self
            .with_client(async |client| {
                let exists = client
                    .query_one(
                        "SELECT to_regclass('public.exai_migrations') IS NOT NULL",
                        &[],
                    )
                    .await
                    .map_err(unavailable)?
                    .get::<_, bool>(0);
                if !exists {
                    return Ok(Vec::new());
                }
                let rows = client
                    .query("SELECT name FROM public.exai_migrations", &[])
                    .await
                    .map_err(unavailable)?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .await?;
        Ok(MIGRATIONS
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !applied.iter().any(|a| a == name))
            .collect())
    }

    /// Applies the migrations that were not applied yet, one transaction
    /// each, recorded in `public.exai_migrations`. Concurrent callers are
    /// serialised by an advisory lock.
    pub async fn migrate(&self) -> Result<Vec<MigrationOutcome>, StoreError> {
        let mut client = self.pool.get().await.map_err(unavailable)?;
        let tx = client.transaction().await.map_err(unavailable)?;
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('exai_migrations', 0));
             CREATE TABLE IF NOT EXISTS public.exai_migrations (
               name text PRIMARY KEY,
               applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .map_err(unavailable)?;
        let mut outcomes = Vec::new();
        for (name, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM public.exai_migrations WHERE name = $1",
                    &[name],
                )
                .await
                .map_err(unavailable)?
                .is_some();
            if done {
                outcomes.push(MigrationOutcome::AlreadyApplied(name));
                continue;
            }
            tx.batch_execute(sql).await.map_err(unavailable)?;
            tx.execute(
                "INSERT INTO public.exai_migrations (name) VALUES ($1)",
                &[name],
            )
            .await
            .map_err(unavailable)?;
            outcomes.push(MigrationOutcome::Applied(name));
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(outcomes)
    }
}

fn session_from_row(row: &Row) -> Result<SessionRecord, StoreError> {
    let status: Option<String> = row.try_get("connection_status").map_err(unavailable)?;
    let status = match status.as_deref() {
        Some("connected") => SessionStatus::Connected,
        Some("expired") => SessionStatus::Expired,
        Some("killed") => SessionStatus::Killed,
        _ => SessionStatus::Disconnected,
    };
    let user: Option<uuid::Uuid> = row.try_get("user_id").map_err(unavailable)?;
    let created_at: Option<SystemTime> = row.try_get("created_at").map_err(unavailable)?;
    let last_active: Option<SystemTime> = row.try_get("last_active").map_err(unavailable)?;
    let metadata: Option<serde_json::Value> = row.try_get("metadata").map_err(unavailable)?;
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
    })
}

fn key_from_row(row: &Row) -> Result<ApiKeyRecord, KeyStoreError> {
    let key_error = |e: tokio_postgres::Error| KeyStoreError(Box::new(e));
    let hash: Vec<u8> = row.try_get("secret_hash").map_err(key_error)?;
    let secret_hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| KeyStoreError(Box::new(Problem("a stored key hash is not 32 bytes"))))?;
    let mut record = ApiKeyRecord::new(
        row.try_get("key_id").map_err(key_error)?,
        UserId::new(row.try_get("user_id").map_err(key_error)?),
        secret_hash,
        row.try_get("created_at").map_err(key_error)?,
    );
    record.name = row.try_get("name").map_err(key_error)?;
    record.expires_at = row.try_get("expires_at").map_err(key_error)?;
    record.revoked_at = row.try_get("revoked_at").map_err(key_error)?;
    record.last_used_at = row.try_get("last_used_at").map_err(key_error)?;
    Ok(record)
}

/// A database error as a store error: our functions' PTxyz codes mean what
/// they say; anything else is the database failing.
fn store_error(
    error: tokio_postgres::Error,
    max_connections: u32,
    limits: Option<&ConversationLimits>,
) -> StoreError {
    crate::sqlstate::known(error.code().map(|c| c.code()), max_connections, limits)
        .unwrap_or_else(|| unavailable(error))
}

/// Turns as the two arrays the SQL functions take.
fn columns(turns: &[Turn]) -> (Vec<&str>, Vec<&str>) {
    turns
        .iter()
        .map(|t| (t.role.as_str(), t.content.as_str()))
        .unzip()
}

fn max_turns(limits: &ConversationLimits) -> i32 {
    i32::try_from(limits.max_turns).unwrap_or(i32::MAX)
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[async_trait]
impl SessionStore for PostgresStore {
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
            let sql =
                format!("SELECT {SESSION_COLUMNS} FROM public.mcp_open_session($1, $2, $3, $4)");
            match client
                .query_one(&sql, &[&user, &id.as_str(), &limit, &metadata])
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

    async fn list(&self, principal: &Principal) -> Result<Vec<SessionRecord>, StoreError> {
        let user = principal.user_id.as_uuid();
        self.with_client(async |client| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM public.mcp_sessions WHERE user_id = $1
                  ORDER BY created_at DESC, id"
            );
            client
                .query(&sql, &[&user])
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
                format!("SELECT {SESSION_COLUMNS} FROM public.mcp_resume_session($1, $2, $3)");
            match client
                .query_one(&sql, &[&user, &session.as_str(), &limit])
                .await
            {
                Ok(row) => session_from_row(&row),
                Err(e) => Err(store_error(e, max_connections, None)),
            }
        })
        .await
    }

    async fn touch_batch(&self, sessions: &[(UserId, SessionId)]) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = sessions.iter().map(|(_, id)| id.as_str()).collect();
        let users: Vec<uuid::Uuid> = sessions.iter().map(|(user, _)| user.as_uuid()).collect();
        self.with_client(async |client| {
            client
                .execute("SELECT public.mcp_touch_sessions($1, $2)", &[&users, &ids])
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn killed_among(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>, StoreError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = sessions.iter().map(SessionId::as_str).collect();
        self.with_client(async |client| {
            let rows = client
                .query("SELECT public.mcp_killed_sessions($1)", &[&ids])
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
        self.with_client(async |client| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM public.mcp_sessions
                  WHERE ($1::uuid IS NULL OR user_id = $1)
                    AND ($2::text IS NULL OR connection_status = $2)
                  ORDER BY created_at DESC, id"
            );
            client
                .query(&sql, &[&user, &status])
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

    async fn create_conversation(
        &self,
        principal: &Principal,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<ConversationId, StoreError> {
        let user = principal.user_id.as_uuid();
        let id = ConversationId::generate();
        let (roles, contents) = columns(turns);
        self.with_client(async |client| {
            client
                .execute(
                    "SELECT public.mcp_start_conversation($1, $2, $3, $4, $5, $6)",
                    &[
                        &user,
                        &id.as_str(),
                        &roles,
                        &contents,
                        &max_turns(limits),
                        &seconds(limits.timeout),
                    ],
                )
                .await
                .map_err(|e| store_error(e, 0, Some(limits)))?;
            Ok(())
        })
        .await?;
        Ok(id)
    }

    async fn append_turns(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<usize, StoreError> {
        let user = principal.user_id.as_uuid();
        let (roles, contents) = columns(turns);
        self.with_client(async |client| {
            let row = client
                .query_one(
                    "SELECT public.mcp_append_turns($1, $2, $3, $4, $5, $6)",
                    &[
                        &user,
                        &conversation.as_str(),
                        &roles,
                        &contents,
                        &max_turns(limits),
                        &seconds(limits.timeout),
                    ],
                )
                .await
                .map_err(|e| store_error(e, 0, Some(limits)))?;
            let count: i32 = row.try_get(0).map_err(unavailable)?;
            Ok(usize::try_from(count).unwrap_or_default())
        })
        .await
    }

    async fn read_conversation(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        limits: &ConversationLimits,
    ) -> Result<Vec<Turn>, StoreError> {
        let user = principal.user_id.as_uuid();
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT role, content FROM public.mcp_read_conversation($1, $2, $3)",
                    &[&user, &conversation.as_str(), &seconds(limits.timeout)],
                )
                .await
                .map_err(|e| store_error(e, 0, Some(limits)))?;
            Ok(rows
                .iter()
                .map(|r| Turn::new(r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect())
        })
        .await
    }

    async fn record_usage(
        &self,
        principal: &Principal,
        record: UsageRecord,
    ) -> Result<(), StoreError> {
        let user = principal.user_id.as_uuid();
        let session = record.session_id.as_ref().map(SessionId::as_str);
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let latency = i32::try_from(record.latency.as_millis()).unwrap_or(i32::MAX);
        self.with_client(async |client| {
            client
                .execute(
                    "SELECT public.mcp_record_usage($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &user,
                        &session,
                        &record.tool,
                        &record.provider,
                        &record.model,
                        &tokens(record.prompt_tokens),
                        &tokens(record.completion_tokens),
                        &latency,
                        &record.outcome,
                    ],
                )
                .await
                .map_err(|e| store_error(e, 0, None))?;
            Ok(())
        })
        .await
    }

    async fn usage(&self, principal: &Principal) -> Result<Vec<ModelUsage>, StoreError> {
        let user = principal.user_id.as_uuid();
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT model, calls, errors, prompt_tokens, completion_tokens \
                     FROM public.mcp_usage_totals($1)",
                    &[&user],
                )
                .await
                .map_err(|e| store_error(e, 0, None))?;
            let count = |row: &Row, i: usize| -> Result<u64, StoreError> {
                let n: i64 = row.try_get(i).map_err(unavailable)?;
                Ok(u64::try_from(n).unwrap_or_default())
            };
            rows.iter()
                .map(|row| {
                    let mut usage =
                        ModelUsage::new(row.try_get::<_, String>(0).map_err(unavailable)?);
                    usage.calls = count(row, 1)?;
                    usage.errors = count(row, 2)?;
                    usage.prompt_tokens = count(row, 3)?;
                    usage.completion_tokens = count(row, 4)?;
                    Ok(usage)
                })
                .collect()
        })
        .await
    }
}

fn key_store_error(error: StoreError) -> KeyStoreError {
    KeyStoreError(Box::new(error))
}

#[async_trait]
impl ApiKeyStore for PostgresStore {
    async fn insert_api_key(&self, record: ApiKeyRecord) -> Result<(), KeyStoreError> {
        self.with_client(async |client| {
            client
                .execute(
                    "INSERT INTO public.mcp_api_keys
                       (key_id, user_id, name, secret_hash, created_at, expires_at, revoked_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &record.key_id,
                        &record.user_id.as_uuid(),
                        &record.name,
                        &record.secret_hash.as_slice(),
                        &record.created_at,
                        &record.expires_at,
                        &record.revoked_at,
                    ],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
        .map_err(key_store_error)
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreError> {
        let row = self
            .with_client(async |client| {
                client
                    .query_opt(
                        "SELECT * FROM public.mcp_api_keys WHERE key_id = $1",
                        &[&key_id],
                    )
                    .await
                    .map_err(unavailable)
            })
            .await
            .map_err(key_store_error)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn revoke_api_key(&self, key_id: &str, at: SystemTime) -> Result<bool, KeyStoreError> {
        self.with_client(async |client| {
            let updated = client
                .execute(
                    "UPDATE public.mcp_api_keys SET revoked_at = coalesce(revoked_at, $2)
                      WHERE key_id = $1",
                    &[&key_id, &at],
                )
                .await
                .map_err(unavailable)?;
            Ok(updated == 1)
        })
        .await
        .map_err(key_store_error)
    }

    async fn record_api_key_use(&self, key_id: &str, at: SystemTime) -> Result<(), KeyStoreError> {
        self.with_client(async |client| {
            client
                .execute(
                    "UPDATE public.mcp_api_keys SET last_used_at = $2 WHERE key_id = $1",
                    &[&key_id, &at],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
        .map_err(key_store_error)
    }

    async fn list_api_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        "SELECT * FROM public.mcp_api_keys WHERE user_id = $1 ORDER BY created_at DESC",
                        &[&user_id.as_uuid()],
                    )
                    .await
                    .map_err(unavailable)
            })
            .await
            .map_err(key_store_error)?;
        rows.iter().map(key_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the default `sslmode=prefer`, the first thing sent is
    /// PostgreSQL's SSLRequest (length 8, code 80877103): the backend asks
    /// for TLS whenever the server might offer it. (A client without TLS
    /// would send its startup message instead.)
    #[tokio::test]
    async fn tls_is_asked_for_by_default() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 8];
            socket.read_exact(&mut first).await.unwrap();
            let _ = first_tx.send(first);
            // "N": no TLS here; then hang up.
            let _ = socket.write_all(b"N").await;
        });
        let config = PostgresConfig {
            timeout: Duration::from_secs(2),
            ..PostgresConfig::default()
        };
        let store =
            PostgresStore::new(&format!("postgres://u@127.0.0.1:{port}/db"), config).unwrap();
        let _ = store.check().await;
        let first = first_rx.await.unwrap();
        assert_eq!(first, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "an SSLRequest");
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let err =
            PostgresStore::new("postgres://u:hunter2@[bad", PostgresConfig::default()).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }
}
