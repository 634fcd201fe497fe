//! What can be wrong with a configuration ([`ConfigError`]), the checks
//! every section uses to read a setting's text, and [`Problems`], which
//! keeps every problem found rather than stopping at the first.

use std::path::PathBuf;

/// Every problem found in a configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// A configuration the daemon cannot run with. Each message names the
/// setting to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting's value is not of the expected form. The value is shown
    /// unless the setting is a secret.
    #[error("{variable}={value}: expected {expected}")]
    Invalid {
        /// The environment variable (or flag) named.
        variable: &'static str,
        /// The value, or `<hidden>` for secrets.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// Single-user mode without a token, bound to a non-loopback address.
    #[error(
        "MCP_ENABLE_MULTI_USER=false without EXAI_WS_TOKEN would let anyone who can reach \
         {host} in; set EXAI_WS_TOKEN or listen on a loopback address"
    )]
    SingleUserNeedsToken {
        /// The listen host.
        host: String,
    },
    /// The env file could not be used.
    #[error("env file {}: {reason}", path.display())]
    EnvFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `EXAI_SESSION_STORE=postgres` without `DATABASE_URL`.
    #[error("EXAI_SESSION_STORE=postgres needs DATABASE_URL")]
    MissingDatabaseUrl,
    /// `EXAI_SESSION_STORE=supabase` without the project's URL or key.
    #[error("EXAI_SESSION_STORE=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")]
    MissingSupabaseSettings,
    /// `ENABLED_TOOLS` or `DISABLED_TOOLS` names a tool there is not.
    #[error("{variable}: no tool '{name}' (tools: {known})")]
    UnknownTool {
        /// The variable.
        variable: &'static str,
        /// The name given.
        name: String,
        /// The tools there are.
        known: String,
    },
    /// An OpenAI-compatible endpoint without the models it serves.
    #[error(
        "OPENAI_MODELS: name the models the OpenAI-compatible endpoint serves (comma-separated)"
    )]
    MissingOpenAiModels,
    /// `EXAI_PROVIDERS_FILE` cannot be used.
    #[error("EXAI_PROVIDERS_FILE {path}: {problem}")]
    ProvidersFile {
        /// The file.
        path: String,
        /// What is wrong (never quoting the file).
        problem: String,
    },
    /// `DEFAULT_MODEL` names a model no configured provider serves.
    #[error("DEFAULT_MODEL={0}: no configured provider serves it (models: {1})")]
    UnservedDefaultModel(String, String),
    /// `SUPABASE_JWT_SECRET` is set but empty.
    #[error("SUPABASE_JWT_SECRET is set but empty")]
    EmptySecret,
    /// A URL setting is not an http(s) URL.
    #[error("{variable} is not an http(s) URL: '{value}'")]
    BadUrl {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// Minting needs a shared secret but only asymmetric keys are configured.
    #[error(
        "no HS256 secret to sign with: the project uses asymmetric keys (SUPABASE_URL / \
         EXAI_JWKS_URL) and SUPABASE_JWT_SECRET is not set"
    )]
    NoSigningSecret,
    /// No data directory could be found for the development secret.
    #[error(
        "no data directory for the development secret: set EXAI_DATA_DIR or SUPABASE_JWT_SECRET"
    )]
    NoDataDir,
    /// The development secret file could not be created or read.
    #[error("development secret {}", path.display())]
    DevSecret {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The development secret file is readable by other users.
    #[error(
        "development secret {} is accessible to other users (mode {mode:04o}); run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    DevSecretPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The development secret file holds too few bytes to be a secret.
    #[error("development secret {} is too short; delete it to create a new one", path.display())]
    DevSecretTooShort {
        /// The file.
        path: PathBuf,
    },
}

/// Runs each check, keeping every problem rather than stopping at the first.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<ConfigError>);

impl Problems {
    pub(crate) fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// Keeps `problem` unless the same one was found already (one setting
    /// can be read by several checks).
    pub(crate) fn push(&mut self, problem: ConfigError) {
        let text = problem.to_string();
        if !self.0.iter().any(|p| p.to_string() == text) {
            self.0.push(problem);
        }
    }
}

pub(crate) fn check_url(variable: &'static str, value: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::BadUrl {
        variable,
        value: value.to_owned(),
    };
    let parsed = url::Url::parse(value).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad());
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// `value` parsed as `T` and accepted by `valid`, or a problem naming
/// `variable`.
pub(crate) fn parse<T: std::str::FromStr>(
    variable: &'static str,
    value: &str,
    expected: &'static str,
    valid: impl Fn(&T) -> bool,
) -> Result<T, ConfigError> {
    value
        .trim()
        .parse::<T>()
        .ok()
        .filter(|v| valid(v))
        .ok_or_else(|| ConfigError::Invalid {
            variable,
            value: value.to_owned(),
            expected,
        })
}

pub(crate) fn parse_bool(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            variable,
            value: value.to_owned(),
            expected: "true or false",
        }),
    }
}

/// A comma-separated list, without blanks.
pub(crate) fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}
