//! Where sessions, conversations, usage and API keys are kept.

use exai_auth::Secret;
use exai_sessions::PostgresConfig;

use super::StoreConfig;
use super::args::DaemonArgs;
use super::problems::{ConfigError, Problems};

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
