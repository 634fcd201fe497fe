//! The SQL migrations, embedded, and applying them: each once, in order,
//! one transaction each, recorded in `public.exai_migrations`.

use super::{PostgresStore, unavailable};
use crate::StoreError;

/// The SQL migrations, in order. Each is idempotent; `exai migrate` and
/// [`PostgresStore::migrate`] apply them, and they paste into Supabase's SQL
/// editor as they are.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_supabase_bootstrap",
        include_str!("../../migrations/0001_supabase_bootstrap.sql"),
    ),
    (
        "0002_mcp_sessions",
        include_str!("../../migrations/0002_mcp_sessions.sql"),
    ),
    (
        "0003_mcp_api_keys",
        include_str!("../../migrations/0003_mcp_api_keys.sql"),
    ),
    (
        "0004_session_functions",
        include_str!("../../migrations/0004_session_functions.sql"),
    ),
    (
        "0005_conversations_and_lifecycle",
        include_str!("../../migrations/0005_conversations_and_lifecycle.sql"),
    ),
    (
        "0006_killed_sessions",
        include_str!("../../migrations/0006_killed_sessions.sql"),
    ),
    (
        "0007_usage",
        include_str!("../../migrations/0007_usage.sql"),
    ),
    (
        "0008_conversation_exchanges",
        include_str!("../../migrations/0008_conversation_exchanges.sql"),
    ),
    (
        "0009_daemon_only_writes",
        include_str!("../../migrations/0009_daemon_only_writes.sql"),
    ),
    (
        "0010_nodes",
        include_str!("../../migrations/0010_nodes.sql"),
    ),
    (
        "0011_user_budgets",
        include_str!("../../migrations/0011_user_budgets.sql"),
    ),
    (
        "0012_session_clients",
        include_str!("../../migrations/0012_session_clients.sql"),
    ),
    (
        "0013_idle_http_sessions",
        include_str!("../../migrations/0013_idle_http_sessions.sql"),
    ),
];

/// What [`PostgresStore::migrate`] did with one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationOutcome {
    /// Applied now.
    Applied(&'static str),
    /// Applied before.
    AlreadyApplied(&'static str),
}

impl PostgresStore {
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
