//! Where sessions, conversations, usage and API keys are kept.

use exai_auth::Secret;
use exai_sessions::PostgresConfig;

use super::args::DaemonArgs;
use super::problems::{ConfigError, Problems};

/// Where sessions and API keys are kept.
#[derive(Clone)]
#[non_exhaustive]
pub enum StoreConfig {
    /// In memory.
    Memory,
    /// PostgreSQL.
    Postgres {
        /// The connection string (may hold a password: never printed).
        url: Secret,
        /// Pool and timeout.
        config: PostgresConfig,
    },
    /// Supabase's REST API.
    Supabase {
        /// `SUPABASE_URL`.
        url: String,
        /// `SUPABASE_SERVICE_ROLE_KEY` (never printed).
        service_role_key: Secret,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("Memory"),
            StoreConfig::Postgres { config, .. } => f
                .debug_struct("Postgres")
                .field("url", &"<redacted>")
                .field("config", config)
                .finish(),
            StoreConfig::Supabase { url, .. } => f
                .debug_struct("Supabase")
                .field("url", url)
                .field("service_role_key", &"<redacted>")
                .finish(),
        }
    }
}

/// The store section; `supabase_url` is `SUPABASE_URL`, checked.
pub(super) fn section(
    args: &DaemonArgs,
    supabase_url: Option<String>,
    problems: &mut Problems,
) -> Option<StoreConfig> {
    let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    match args.session_store.trim() {
        "memory" => Some(StoreConfig::Memory),
        "postgres" => match given(&args.database_url) {
            Some(url) => Some(StoreConfig::Postgres {
                url: Secret::new(url.into_bytes()),
                config: PostgresConfig::default(),
            }),
            None => {
                problems.push(ConfigError::MissingDatabaseUrl);
                None
            }
        },
        "supabase" => match (supabase_url, given(&args.service_role_key)) {
            (Some(url), Some(key)) => Some(StoreConfig::Supabase {
                url,
                service_role_key: Secret::new(key.into_bytes()),
            }),
            _ => {
                problems.push(ConfigError::MissingSupabaseSettings);
                None
            }
        },
        other => {
            problems.push(ConfigError::Invalid {
                variable: "EXAI_SESSION_STORE",
                value: other.to_owned(),
                expected: "memory, postgres or supabase",
            });
            None
        }
    }
}
