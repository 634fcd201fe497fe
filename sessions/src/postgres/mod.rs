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
//!
//! One file per concern: `migrate` (the embedded migrations), `sessions`
//! (sessions, their lifecycle and the administrators' operations),
//! `conversations`, `usage`, `keys` (API keys and the admin tooling's
//! user lookups), `budgets` (per-user limits across daemons); this file is
//! the pool and what they share.

mod budgets;
mod conversations;
mod keys;
mod migrate;
mod sessions;
mod usage;

use std::str::FromStr as _;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls_platform_verifier::ConfigVerifierExt as _;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{ConversationLimits, StoreError};

pub use migrate::{MIGRATIONS, MigrationOutcome};

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

/// Sessions and API keys in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
    /// The daemon this store serves, if it is one (not the CLI).
    pub(super) node: Option<crate::Node>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

pub(super) fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

/// An error message for a problem of ours, not the database's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Problem(&'static str);

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
            node: None,
        })
    }

    /// This store as `node`'s: the sessions it opens and resumes are
    /// stamped with it, and [`SessionLifecycle::heartbeat`] keeps it
    /// alive and reaps silent nodes.
    ///
    /// [`SessionLifecycle::heartbeat`]: crate::SessionLifecycle::heartbeat
    pub fn with_node(mut self, node: crate::Node) -> Self {
        self.node = Some(node);
        self
    }

    fn node_id(&self) -> Option<uuid::Uuid> {
        self.node.as_ref().map(|node| node.id)
    }

    /// Runs `f` with a pooled connection, within the timeout.
    pub(super) async fn with_client<T, F>(&self, f: F) -> Result<T, StoreError>
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
}

/// A database error as a store error: our functions' PTxyz codes mean what
/// they say; anything else is the database failing.
pub(super) fn store_error(
    error: tokio_postgres::Error,
    max_connections: u32,
    limits: Option<&ConversationLimits>,
) -> StoreError {
    crate::sqlstate::known(error.code().map(|c| c.code()), max_connections, limits)
        .unwrap_or_else(|| unavailable(error))
}

pub(super) fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
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
