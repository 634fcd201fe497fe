//! The daemon's configuration, parsed once by the binary from flags and
//! environment into the typed [`Config`] that [`crate::start`] takes.
//!
//! The token rules live here too ([`AuthArgs`]) because the `exai` CLI must
//! sign development tokens exactly as the daemon verifies them.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use exai_auth::{JwksConfig, JwtConfig, Secret};
use exai_sessions::{ConversationLimits, PostgresConfig};
use exai_transport::EdgeConfig;

use exai_providers::OpenAiConfig;

use crate::quota::UserLimits;
use crate::tools::{ToolLimits, ToolSelection};

use crate::secret_file;

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

/// How tokens are verified (and, for `exai token mint`, signed). Shared by
/// `exai-daemon` and `exai`, so both always agree.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// The Supabase project URL (https://<ref>.supabase.co); sets the JWKS
    /// URL, the required issuer and the authorization server
    #[arg(long, env = "SUPABASE_URL", value_name = "URL")]
    pub supabase_url: Option<String>,

    /// Where the project's signing keys are [default: SUPABASE_URL/auth/v1/.well-known/jwks.json]
    #[arg(long, env = "EXAI_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,

    /// Required `iss` claim [default: SUPABASE_URL/auth/v1, none without SUPABASE_URL]
    #[arg(long, env = "EXAI_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim
    #[arg(long, env = "EXAI_JWT_AUDIENCE", default_value = "authenticated")]
    pub jwt_audience: String,

    /// Clock skew tolerated on exp and nbf, in seconds
    #[arg(long, env = "EXAI_JWT_LEEWAY_SECS", default_value = "30")]
    pub jwt_leeway_secs: String,

    /// Directory for the development signing secret
    /// [default: the user's data directory + /exai]
    #[arg(long, env = "EXAI_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The project's JWT secret; set it through the environment only.
    #[arg(
        long = "supabase-jwt-secret",
        env = "SUPABASE_JWT_SECRET",
        hide = true,
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
}

/// Which shared secret signs and verifies HS256 tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `SUPABASE_JWT_SECRET`.
    Environment,
    /// The development secret file; `created` says whether this run made it.
    DevelopmentFile {
        /// The file.
        path: PathBuf,
        /// Whether it was created now.
        created: bool,
    },
    /// No shared secret: asymmetric keys (JWKS) only.
    None,
}

impl AuthArgs {
    /// `SUPABASE_URL`, checked, without a trailing slash.
    pub fn supabase_url(&self) -> Result<Option<String>, ConfigError> {
        self.supabase_url
            .as_deref()
            .map(|url| check_url("SUPABASE_URL", url))
            .transpose()
    }

    fn jwks_url(&self) -> Result<Option<String>, ConfigError> {
        if let Some(url) = &self.jwks_url {
            return check_url("EXAI_JWKS_URL", url).map(Some);
        }
        Ok(self
            .supabase_url()?
            .map(|base| format!("{base}/auth/v1/.well-known/jwks.json")))
    }

    /// The issuer tokens must name, if any.
    pub fn issuer(&self) -> Result<Option<String>, ConfigError> {
        if let Some(issuer) = &self.jwt_issuer {
            return Ok(Some(issuer.clone()));
        }
        Ok(self.supabase_url()?.map(|base| format!("{base}/auth/v1")))
    }

    /// The HS256 secret: `SUPABASE_JWT_SECRET`; else, when no asymmetric
    /// keys are configured either, the development secret in the data
    /// directory (created on first use with mode 0600).
    pub fn hs256_secret(&self) -> Result<(Option<Secret>, SecretSource), ConfigError> {
        if let Some(secret) = &self.jwt_secret {
            if secret.is_empty() {
                return Err(ConfigError::EmptySecret);
            }
            let secret = Secret::new(secret.as_bytes().to_vec());
            return Ok((Some(secret), SecretSource::Environment));
        }
        if self.jwks_url()?.is_some() {
            return Ok((None, SecretSource::None));
        }
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => dirs::data_dir().ok_or(ConfigError::NoDataDir)?.join("exai"),
        };
        let path = dir.join("dev-jwt-secret");
        let (secret, created) = secret_file::load_or_create(&path)?;
        Ok((
            Some(secret),
            SecretSource::DevelopmentFile { path, created },
        ))
    }

    /// The secret `exai token mint` signs with.
    pub fn signing_secret(&self) -> Result<Secret, ConfigError> {
        self.hs256_secret()?.0.ok_or(ConfigError::NoSigningSecret)
    }

    /// What a valid access token is.
    pub fn jwt_config(&self) -> Result<(JwtConfig, SecretSource), ConfigError> {
        let (secret, source) = self.hs256_secret()?;
        let mut config = JwtConfig::new();
        config.hs256_secret = secret;
        config.jwks = self.jwks_url()?.map(JwksConfig::new);
        config.issuer = self.issuer()?;
        config.audience = self.jwt_audience.clone();
        config.leeway = Duration::from_secs(parse(
            "EXAI_JWT_LEEWAY_SECS",
            &self.jwt_leeway_secs,
            "a number of seconds",
            |v: &u64| *v <= 3600,
        )?);
        Ok((config, source))
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
fn parse<T: std::str::FromStr>(
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

fn parse_bool(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
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

/// Command-line flags and environment of `exai-daemon`. Values are read as
/// text and checked together by [`DaemonArgs::into_config`], so that every
/// problem is reported at once, naming its variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "exai-daemon",
    version,
    about = "Multi-user MCP daemon: authenticated MCP over WebSocket at /mcp",
    after_help = "Tokens are verified with SUPABASE_JWT_SECRET (HS256) and/or the project's \
                  signing keys (SUPABASE_URL or EXAI_JWKS_URL). With neither, a development \
                  secret is created in the data directory (for development only). \
                  EXAI_WS_TOKEN is the shared token of single-user mode."
)]
pub struct DaemonArgs {
    /// Check the configuration, print every problem, and exit (0 when valid,
    /// 64 otherwise) without starting
    #[arg(long)]
    pub check_config: bool,

    /// Settings file (NAME=value lines) under flags and the environment
    /// [default: .env, else .env.docker, in the working directory]
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,

    /// Address to listen on; overrides --host and --port
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// Host or IP address to listen on
    #[arg(long, env = "EXAI_WS_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on
    #[arg(long, env = "EXAI_WS_PORT", default_value = "8079")]
    pub port: String,

    /// Address for /metrics, /healthz and /readyz, apart from the public
    /// listener [default: served on the public listener]
    #[arg(long, env = "EXAI_ADMIN_LISTEN", value_name = "HOST:PORT")]
    pub admin_listen: Option<String>,

    /// Concurrent connections one user may hold
    #[arg(long, env = "MCP_MAX_CONNECTIONS_PER_USER", default_value = "5")]
    pub max_connections_per_user: String,

    /// Seconds without an MCP request after which a session expires (its
    /// socket is closed with 4408; it can no longer be resumed)
    #[arg(long, env = "MCP_SESSION_TIMEOUT", default_value = "3600")]
    pub session_timeout: String,

    /// Largest WebSocket message accepted, in bytes (a larger one closes the
    /// connection with 1009)
    #[arg(long, env = "EXAI_WS_MAX_BYTES", default_value = "33554432")]
    pub ws_max_bytes: String,

    /// Seconds between the server's WebSocket pings
    #[arg(long, env = "EXAI_WS_PING_INTERVAL", default_value = "30")]
    pub ws_ping_interval: String,

    /// Seconds to wait for the pong to a ping before closing the connection
    /// (1011)
    #[arg(long, env = "EXAI_WS_PING_TIMEOUT", default_value = "10")]
    pub ws_ping_timeout: String,

    /// Seconds a tool call may run before it is stopped with a tool error
    #[arg(long, env = "EXAI_TOOL_TIMEOUT_SECS", default_value = "300")]
    pub tool_timeout: String,

    /// Seconds between progress reports of a running tool call, to clients
    /// that sent a progress token
    #[arg(long, env = "EXAI_WS_PROGRESS_INTERVAL_SECS", default_value = "8")]
    pub progress_interval: String,

    /// Tool calls one session may have running at once; more are refused
    /// with a JSON-RPC error (-32004) at once
    #[arg(long, env = "EXAI_SESSION_MAX_INFLIGHT", default_value = "8")]
    pub session_max_inflight: String,

    /// Tool calls one user may start per minute, over all their sessions
    /// (0: no limit); more are refused with a JSON-RPC error (-32005)
    /// saying when to retry
    #[arg(long, env = "EXAI_USER_RPM", default_value = "60")]
    pub user_rpm: String,

    /// Tool calls one user may have running at once, over all their
    /// sessions; more are refused with a JSON-RPC error (-32005)
    #[arg(long, env = "EXAI_USER_MAX_INFLIGHT", default_value = "8")]
    pub user_max_inflight: String,

    /// The most provider calls one tool call may make
    #[arg(long, env = "EXAI_MAX_PROVIDER_CALLS_PER_TOOL", default_value = "8")]
    pub max_provider_calls: String,

    /// The most turns (a question and its answer are two) a conversation
    /// may hold
    #[arg(long, env = "MAX_CONVERSATION_TURNS", default_value = "20")]
    pub max_conversation_turns: String,

    /// Hours after its last turn that a conversation is gone
    #[arg(long, env = "CONVERSATION_TIMEOUT_HOURS", default_value = "3")]
    pub conversation_timeout_hours: String,

    /// Seconds tool calls running at shutdown may take to finish before they
    /// are cancelled
    #[arg(long, env = "EXAI_SHUTDOWN_GRACE_SECS", default_value = "10")]
    pub shutdown_grace: String,

    /// Kimi (Moonshot AI) API key; set it through the environment only.
    #[arg(
        long = "kimi-api-key",
        env = "KIMI_API_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub kimi_api_key: Option<String>,

    /// Kimi's API base URL
    #[arg(long, env = "KIMI_API_URL", value_name = "URL")]
    pub kimi_api_url: Option<String>,

    /// GLM (Z.ai) API key; set it through the environment only.
    #[arg(
        long = "glm-api-key",
        env = "GLM_API_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub glm_api_key: Option<String>,

    /// GLM's API base URL
    #[arg(long, env = "GLM_API_URL", value_name = "URL")]
    pub glm_api_url: Option<String>,

    /// Key of another OpenAI-compatible API; set it through the environment
    /// only.
    #[arg(
        long = "openai-api-key",
        env = "OPENAI_API_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub openai_api_key: Option<String>,

    /// Base URL of another OpenAI-compatible API (default with a key:
    /// https://api.openai.com/v1)
    #[arg(long, env = "OPENAI_BASE_URL", value_name = "URL")]
    pub openai_base_url: Option<String>,

    /// The models that API serves, comma-separated
    #[arg(long, env = "OPENAI_MODELS", default_value = "")]
    pub openai_models: String,

    /// A TOML file of more OpenAI-compatible providers (name, base_url,
    /// api_key_env, models); see docs/providers.md
    #[arg(long, env = "EXAI_PROVIDERS_FILE", value_name = "PATH")]
    pub providers_file: Option<PathBuf>,

    /// The model a call that names none is sent to (default: glm-4.5-flash
    /// with GLM configured, else the offline echo)
    #[arg(long, env = "DEFAULT_MODEL")]
    pub default_model: Option<String>,

    /// Only these tools are offered, comma-separated (default: all)
    #[arg(long, env = "ENABLED_TOOLS", default_value = "")]
    pub enabled_tools: String,

    /// These tools are not offered, comma-separated
    #[arg(long, env = "DISABLED_TOOLS", default_value = "")]
    pub disabled_tools: String,

    /// Milliseconds the offline `echo` model takes to answer (to try
    /// progress, timeouts and cancellation without a model)
    #[arg(long, env = "EXAI_ECHO_DELAY_MS", default_value = "0")]
    pub echo_delay_ms: String,

    /// Browser origins allowed to call /mcp over HTTP, comma-separated
    /// (`https://app.example.com`, `http://localhost:6274`, or `*`); a
    /// request from any other origin is refused with 403
    #[arg(long, env = "EXAI_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,

    /// Host names /mcp answers to over HTTP besides the loopback ones,
    /// comma-separated (a proxy's public name, when the daemon listens on
    /// loopback behind it); when set, other names get 403
    #[arg(long, env = "EXAI_ALLOWED_HOSTS", default_value = "")]
    pub allowed_hosts: String,

    /// Multi-user mode: every connection authenticates as a Supabase user;
    /// false: the single-user mode of the original daemon
    #[arg(long, env = "MCP_ENABLE_MULTI_USER", default_value = "true")]
    pub multi_user: String,

    /// Where sessions are kept: memory, postgres or supabase
    #[arg(long, env = "EXAI_SESSION_STORE", default_value = "memory")]
    pub session_store: String,

    /// The PostgreSQL connection string, for the postgres store
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// The project's service-role key, for the supabase store; set it
    /// through the environment only.
    #[arg(
        long = "supabase-service-role-key",
        env = "SUPABASE_SERVICE_ROLE_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub service_role_key: Option<String>,

    /// The public base URL of this daemon, for the metadata it publishes
    #[arg(long, env = "EXAI_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Log format: text or json
    #[arg(long, env = "EXAI_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Single-user mode's shared token; set it through the environment only.
    #[arg(
        long = "ws-token",
        env = "EXAI_WS_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub ws_token: Option<String>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: AuthArgs,
}

/// Runs each check, keeping every problem rather than stopping at the first.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// Keeps `problem` unless the same one was found already (one setting
    /// can be read by several checks).
    fn push(&mut self, problem: ConfigError) {
        let text = problem.to_string();
        if !self.0.iter().any(|p| p.to_string() == text) {
            self.0.push(problem);
        }
    }
}

impl DaemonArgs {
    /// Checks every setting and resolves the signing keys. All problems are
    /// returned together. The returned source says where the HS256 secret
    /// came from (multi-user mode only).
    pub fn into_config(self) -> Result<(Config, Option<SecretSource>), ConfigErrors> {
        let mut problems = Problems::default();
        let listen = self.listen.as_deref().and_then(|listen| {
            problems.check(parse("--listen", listen, "HOST:PORT", |_: &SocketAddr| {
                true
            }))
        });
        let port = problems.check(parse(
            "EXAI_WS_PORT",
            &self.port,
            "a port number (0-65535)",
            |_: &u16| true,
        ));
        if self.host.trim().is_empty() {
            problems.push(ConfigError::Invalid {
                variable: "EXAI_WS_HOST",
                value: self.host.clone(),
                expected: "a host name or IP address",
            });
        }
        let admin = self.admin_listen.as_deref().and_then(|admin| {
            problems.check(parse(
                "EXAI_ADMIN_LISTEN",
                admin,
                "HOST:PORT",
                |_: &SocketAddr| true,
            ))
        });
        let max_connections = problems.check(parse(
            "MCP_MAX_CONNECTIONS_PER_USER",
            &self.max_connections_per_user,
            "a whole number of at least 1",
            |v: &u32| *v >= 1,
        ));
        let timeout = problems.check(parse(
            "MCP_SESSION_TIMEOUT",
            &self.session_timeout,
            "a whole number of seconds, at least 1",
            |v: &u64| *v >= 1,
        ));
        let max_bytes = problems.check(parse(
            "EXAI_WS_MAX_BYTES",
            &self.ws_max_bytes,
            "a whole number of bytes, at least 1024",
            |v: &usize| *v >= 1024,
        ));
        let ping_interval = problems.check(parse(
            "EXAI_WS_PING_INTERVAL",
            &self.ws_ping_interval,
            "a whole number of seconds, at least 1",
            |v: &u64| *v >= 1,
        ));
        let ping_timeout = problems.check(parse(
            "EXAI_WS_PING_TIMEOUT",
            &self.ws_ping_timeout,
            "a whole number of seconds, at least 1",
            |v: &u64| *v >= 1,
        ));
        let tools = self.tool_limits(&mut problems);
        let (providers, default_model) = self.providers(&mut problems);
        let shutdown_grace = problems.check(parse(
            "EXAI_SHUTDOWN_GRACE_SECS",
            &self.shutdown_grace,
            "a whole number of seconds",
            |_: &u64| true,
        ));
        let multi_user = problems.check(parse_bool("MCP_ENABLE_MULTI_USER", &self.multi_user));
        let log_format = problems.check(match self.log_format.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::Invalid {
                variable: "EXAI_LOG_FORMAT",
                value: other.to_owned(),
                expected: "text or json",
            }),
        });
        let public_url = self
            .public_url
            .as_deref()
            .and_then(|url| problems.check(check_url("EXAI_PUBLIC_URL", url)));
        let supabase_url = problems.check(self.auth.supabase_url()).flatten();
        let allowed_origins = list(&self.allowed_origins);
        for origin in &allowed_origins {
            if origin != "*" && !origin.starts_with("http://") && !origin.starts_with("https://") {
                problems.push(ConfigError::Invalid {
                    variable: "EXAI_ALLOWED_ORIGINS",
                    value: origin.clone(),
                    expected: "origins such as https://app.example.com, or *",
                });
            }
        }
        let extra_hosts = list(&self.allowed_hosts);
        let (host, port) = match listen {
            Some(addr) => (addr.ip().to_string(), addr.port()),
            None => (self.host.clone(), port.unwrap_or_default()),
        };
        let mut source = None;
        let auth = match multi_user {
            Some(true) => problems.check(self.auth.jwt_config()).map(|(jwt, found)| {
                source = Some(found);
                AuthMode::MultiUser(jwt)
            }),
            Some(false) => {
                let token = self.ws_token.clone().filter(|t| !t.is_empty());
                if token.is_none() && !is_loopback(&host) {
                    problems
                        .0
                        .push(ConfigError::SingleUserNeedsToken { host: host.clone() });
                }
                Some(AuthMode::SingleUser {
                    token: token.map(|t| Secret::new(t.into_bytes())),
                })
            }
            None => None,
        };
        let store = match self.session_store.trim() {
            "memory" => Some(StoreConfig::Memory),
            "postgres" => match self.database_url.clone().filter(|url| !url.is_empty()) {
                Some(url) => Some(StoreConfig::Postgres {
                    url: Secret::new(url.into_bytes()),
                    config: PostgresConfig::default(),
                }),
                None => {
                    problems.push(ConfigError::MissingDatabaseUrl);
                    None
                }
            },
            "supabase" => match (
                supabase_url.clone(),
                self.service_role_key.clone().filter(|key| !key.is_empty()),
            ) {
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
        };
        let (
            Some(auth),
            Some(store),
            Some(max_connections),
            Some(timeout),
            Some(log_format),
            Some(max_bytes),
            Some(ping_interval),
            Some(ping_timeout),
            Some((tools, echo_delay)),
            Some(shutdown_grace),
            true,
        ) = (
            auth,
            store,
            max_connections,
            timeout,
            log_format,
            max_bytes,
            ping_interval,
            ping_timeout,
            tools,
            shutdown_grace,
            problems.0.is_empty(),
        )
        else {
            return Err(ConfigErrors(problems.0));
        };
        let mut edge = EdgeConfig::default();
        edge.max_connections_per_user = max_connections;
        edge.max_message_bytes = max_bytes;
        edge.ping_interval = Duration::from_secs(ping_interval);
        edge.ping_timeout = Duration::from_secs(ping_timeout);
        edge.session_timeout = Duration::from_secs(timeout);
        edge.shutdown_grace = Duration::from_secs(shutdown_grace);
        edge.activity_flush = activity_flush(edge.session_timeout);
        edge.public_url = public_url;
        edge.allowed_origins = allowed_origins;
        edge.allowed_hosts = allowed_hosts(&host, extra_hosts);
        edge.authorization_servers = supabase_url
            .map(|base| format!("{base}/auth/v1"))
            .into_iter()
            .collect();
        Ok((
            Config {
                host,
                port,
                admin_listen: admin,
                log_format,
                auth,
                store,
                edge,
                tools,
                echo_delay,
                providers,
                default_model,
            },
            source,
        ))
    }

    /// The model providers configured, and the default model.
    fn providers(&self, problems: &mut Problems) -> (Vec<OpenAiConfig>, String) {
        let secret = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| Secret::new(v.as_bytes().to_vec()))
        };
        let url = |problems: &mut Problems, variable, value: &Option<String>| {
            value
                .as_deref()
                .filter(|v| !v.trim().is_empty())
                .and_then(|v| problems.check(check_url(variable, v.trim())))
        };
        let mut providers = Vec::new();
        let kimi_url = url(problems, "KIMI_API_URL", &self.kimi_api_url);
        if let Some(key) = secret(&self.kimi_api_key) {
            providers.push(OpenAiConfig::kimi(key, kimi_url));
        }
        let glm_url = url(problems, "GLM_API_URL", &self.glm_api_url);
        let glm = secret(&self.glm_api_key).map(|key| OpenAiConfig::glm(key, glm_url));
        let glm_configured = glm.is_some();
        providers.extend(glm);
        let openai_url = url(problems, "OPENAI_BASE_URL", &self.openai_base_url);
        let openai_key = secret(&self.openai_api_key);
        if openai_url.is_some() || openai_key.is_some() {
            let models = list(&self.openai_models);
            if models.is_empty() {
                problems.push(ConfigError::MissingOpenAiModels);
            }
            let base = openai_url.unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
            let mut config = OpenAiConfig::new("openai", base, models);
            if let Some(key) = openai_key {
                config = config.with_api_key(key);
            }
            providers.push(config);
        }
        if let Some(path) = &self.providers_file {
            let lookup = |variable: &str| std::env::var(variable).ok();
            match crate::providers_file::load(path, &lookup) {
                Ok(listed) => providers.extend(listed),
                Err(listed) => {
                    for problem in listed {
                        problems.push(ConfigError::ProvidersFile {
                            path: path.display().to_string(),
                            problem,
                        });
                    }
                }
            }
        }
        let default_model = match self.default_model.as_deref().map(str::trim) {
            Some(model) if !model.is_empty() => model.to_owned(),
            _ if glm_configured => exai_providers::GLM_DEFAULT_MODEL.to_owned(),
            _ => exai_providers::EchoProvider::MODEL.to_owned(),
        };
        let served = std::iter::once(exai_providers::EchoProvider::MODEL.to_owned())
            .chain(providers.iter().flat_map(|p| p.models.iter().cloned()))
            .collect::<Vec<_>>();
        if !served.contains(&default_model) {
            problems.push(ConfigError::UnservedDefaultModel(
                default_model.clone(),
                served.join(", "),
            ));
        }
        (providers, default_model)
    }

    /// The tool call limits, and the echo model's delay.
    fn tool_limits(&self, problems: &mut Problems) -> Option<(ToolLimits, Duration)> {
        let seconds = "a whole number of seconds, at least 1";
        let timeout = problems.check(parse(
            "EXAI_TOOL_TIMEOUT_SECS",
            &self.tool_timeout,
            seconds,
            |v: &u64| *v >= 1,
        ));
        let progress = problems.check(parse(
            "EXAI_WS_PROGRESS_INTERVAL_SECS",
            &self.progress_interval,
            seconds,
            |v: &u64| *v >= 1,
        ));
        let in_flight = problems.check(parse(
            "EXAI_SESSION_MAX_INFLIGHT",
            &self.session_max_inflight,
            "a whole number from 1 to 1000",
            |v: &usize| (1..=1000).contains(v),
        ));
        let user_rpm = problems.check(parse(
            "EXAI_USER_RPM",
            &self.user_rpm,
            "a whole number of calls per minute (0: no limit)",
            |_: &u32| true,
        ));
        let user_in_flight = problems.check(parse(
            "EXAI_USER_MAX_INFLIGHT",
            &self.user_max_inflight,
            "a whole number from 1 to 10000",
            |v: &usize| (1..=10_000).contains(v),
        ));
        let provider_calls = problems.check(parse(
            "EXAI_MAX_PROVIDER_CALLS_PER_TOOL",
            &self.max_provider_calls,
            "a whole number from 1 to 100",
            |v: &usize| (1..=100).contains(v),
        ));
        let turns = problems.check(parse(
            "MAX_CONVERSATION_TURNS",
            &self.max_conversation_turns,
            "a whole number from 2 to 10000",
            |v: &usize| (2..=10_000).contains(v),
        ));
        let hours = problems.check(parse(
            "CONVERSATION_TIMEOUT_HOURS",
            &self.conversation_timeout_hours,
            "a number of hours above 0, at most 8760",
            |v: &f64| *v > 0.0 && *v <= 8760.0,
        ));
        let echo_delay = problems.check(parse(
            "EXAI_ECHO_DELAY_MS",
            &self.echo_delay_ms,
            "a whole number of milliseconds",
            |_: &u64| true,
        ));
        let mut selection = ToolSelection::default();
        let enabled = list(&self.enabled_tools);
        let disabled = list(&self.disabled_tools);
        for (variable, names) in [("ENABLED_TOOLS", &enabled), ("DISABLED_TOOLS", &disabled)] {
            for name in names {
                if !crate::tools::tool_names().any(|t| t == name) {
                    problems.push(ConfigError::UnknownTool {
                        variable,
                        name: name.clone(),
                        known: crate::tools::tool_names().collect::<Vec<_>>().join(", "),
                    });
                }
            }
        }
        selection.enabled = (!enabled.is_empty()).then_some(enabled);
        selection.disabled = disabled;
        let per_user = UserLimits {
            rpm: NonZeroU32::new(user_rpm?),
            max_in_flight: user_in_flight?,
        };
        let mut conversations = ConversationLimits::default();
        conversations.max_turns = turns?;
        conversations.timeout = Duration::from_secs_f64(hours? * 3600.0);
        let limits = ToolLimits {
            timeout: Duration::from_secs(timeout?),
            progress_interval: Duration::from_secs(progress?),
            max_in_flight: in_flight?,
            per_user,
            max_provider_calls: provider_calls?,
            conversations,
            selection,
            ..ToolLimits::default()
        };
        Some((limits, Duration::from_millis(echo_delay?)))
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How often activity is written: every 30 s at most, and often enough that
/// an active session never looks idle for its timeout.
pub fn activity_flush(session_timeout: Duration) -> Duration {
    (session_timeout / 4).min(Duration::from_secs(30))
}

/// A comma-separated list, without blanks.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `Host` names `/mcp` answers to over HTTP: on a loopback listener the
/// loopback names (against DNS rebinding) and `extra`; elsewhere `extra`,
/// or any when none are given.
fn allowed_hosts(listen_host: &str, extra: Vec<String>) -> Option<Vec<String>> {
    if is_loopback(listen_host) {
        let mut hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        hosts.extend(extra);
        Some(hosts)
    } else if extra.is_empty() {
        None
    } else {
        Some(extra)
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

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

/// How connections authenticate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AuthMode {
    /// Every connection is a Supabase user (tokens) or an API key's user.
    MultiUser(JwtConfig),
    /// The original daemon's mode: one local user, one optional shared token.
    SingleUser {
        /// `EXAI_WS_TOKEN`.
        token: Option<Secret>,
    },
}

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Host or address to bind.
    pub host: String,
    /// Port to bind (0: any free port).
    pub port: u16,
    /// Where /metrics, /healthz and /readyz are served apart from the
    /// public listener, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// How log lines are written (the binary sets logging up with it).
    pub log_format: LogFormat,
    /// How connections authenticate.
    pub auth: AuthMode,
    /// Where sessions are kept.
    pub store: StoreConfig,
    /// Limits at the network edge.
    pub edge: EdgeConfig,
    /// Limits on tool calls.
    pub tools: ToolLimits,
    /// How long the offline `echo` model takes to answer.
    pub echo_delay: Duration,
    /// The model providers besides the offline `echo`.
    pub providers: Vec<OpenAiConfig>,
    /// The model a call that names none is sent to.
    pub default_model: String,
}

impl Config {
    /// Multi-user mode verifying HS256 tokens with `jwt_secret`; defaults
    /// for everything else.
    pub fn new(host: impl Into<String>, port: u16, jwt_secret: Secret) -> Self {
        Config {
            host: host.into(),
            port,
            admin_listen: None,
            log_format: LogFormat::Text,
            auth: AuthMode::MultiUser(JwtConfig::new().with_hs256(jwt_secret)),
            store: StoreConfig::Memory,
            edge: EdgeConfig::default(),
            tools: ToolLimits::default(),
            echo_delay: Duration::ZERO,
            providers: Vec::new(),
            default_model: exai_providers::EchoProvider::MODEL.to_owned(),
        }
    }

    pub(crate) fn listen_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<DaemonArgs, clap::Error> {
        DaemonArgs::try_parse_from(std::iter::once("exai-daemon").chain(args.iter().copied()))
    }

    #[test]
    fn listen_overrides_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let (config, source) = parse(&["--listen", "[::1]:9000", "--data-dir", data])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.listen_addr(), "[::1]:9000");
        assert!(matches!(
            source,
            Some(SecretSource::DevelopmentFile { created: true, .. })
        ));
    }

    #[test]
    fn websocket_settings_reach_the_edge() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let (config, _) = parse(&[
            "--data-dir",
            data,
            "--ws-max-bytes",
            "2048",
            "--ws-ping-interval",
            "7",
            "--ws-ping-timeout",
            "3",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(config.edge.max_message_bytes, 2048);
        assert_eq!(config.edge.ping_interval, Duration::from_secs(7));
        assert_eq!(config.edge.ping_timeout, Duration::from_secs(3));
    }

    #[test]
    fn origins_and_hosts_reach_the_edge() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let config = |args: &[&str]| {
            let mut all = vec!["--data-dir", data];
            all.extend_from_slice(args);
            parse(&all).unwrap().into_config().unwrap().0.edge
        };
        let edge = config(&[
            "--allowed-origins",
            "http://localhost:6274, https://a.example",
        ]);
        assert_eq!(
            edge.allowed_origins,
            ["http://localhost:6274", "https://a.example"]
        );
        assert_eq!(
            edge.allowed_hosts.as_deref(),
            Some(&["localhost".to_owned(), "127.0.0.1".into(), "::1".into()][..]),
            "the default listener is loopback"
        );
        let edge = config(&["--host", "0.0.0.0"]);
        assert_eq!(edge.allowed_hosts, None);
        let edge = config(&["--host", "0.0.0.0", "--allowed-hosts", "exai.example.com"]);
        assert_eq!(
            edge.allowed_hosts,
            Some(vec!["exai.example.com".to_owned()])
        );
        assert_eq!(
            problems(&["--allowed-origins", "example.com"]),
            [
                "EXAI_ALLOWED_ORIGINS=example.com: expected origins such as https://app.example.com, or *"
            ]
        );
    }

    #[test]
    fn providers_come_from_their_keys_and_the_default_model_must_be_served() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let config = |args: &[&str]| {
            let mut all = vec!["--data-dir", data];
            all.extend_from_slice(args);
            parse(&all).unwrap().into_config().unwrap().0
        };
        let none = config(&[]);
        assert!(none.providers.is_empty());
        assert_eq!(none.default_model, "echo");

        let both = config(&["--kimi-api-key", "k1", "--glm-api-key", "k2"]);
        let names: Vec<&str> = both.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["kimi", "glm"]);
        assert_eq!(both.default_model, "glm-4.5-flash", "GLM's default");
        assert_eq!(both.providers[0].base_url, "https://api.moonshot.ai/v1");

        let local = config(&[
            "--openai-base-url",
            "http://127.0.0.1:9/v1/",
            "--openai-models",
            "a, b",
            "--default-model",
            "b",
        ]);
        assert_eq!(local.providers[0].base_url, "http://127.0.0.1:9/v1");
        assert_eq!(local.providers[0].models, ["a", "b"]);
        assert!(local.providers[0].api_key.is_none());
        assert_eq!(local.default_model, "b");

        assert_eq!(
            problems(&["--openai-api-key", "k", "--default-model", "gpt-9"]),
            [
                "OPENAI_MODELS: name the models the OpenAI-compatible endpoint serves (comma-separated)",
                "DEFAULT_MODEL=gpt-9: no configured provider serves it (models: echo)",
            ]
        );
        assert_eq!(
            problems(&["--glm-api-url", "not a url"]),
            ["GLM_API_URL is not an http(s) URL: 'not a url'"]
        );
    }

    #[test]
    fn tool_selection_names_real_tools() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let (config, _) = parse(&["--data-dir", data, "--disabled-tools", "chat, debug"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.tools.selection.disabled, ["chat", "debug"]);
        assert!(config.tools.selection.enabled.is_none());
        let problems = problems(&["--enabled-tools", "chat,nosuch"]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("ENABLED_TOOLS: no tool 'nosuch' (tools: chat, thinkdeep,"),
            "{problems:?}"
        );
    }

    /// The problems `args` has, as their messages.
    fn problems(args: &[&str]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["--data-dir", dir.path().to_str().unwrap()];
        all.extend_from_slice(args);
        match parse(&all).unwrap().into_config() {
            Ok(_) => Vec::new(),
            Err(ConfigErrors(problems)) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let check =
            |args: &[&str], expected: &[&str]| assert_eq!(problems(args), expected, "{args:?}");
        check(&[], &[]);
        check(
            &["--max-connections-per-user", "0"],
            &["MCP_MAX_CONNECTIONS_PER_USER=0: expected a whole number of at least 1"],
        );
        check(
            &["--port", "70000"],
            &["EXAI_WS_PORT=70000: expected a port number (0-65535)"],
        );
        check(
            &["--multi-user", "maybe"],
            &["MCP_ENABLE_MULTI_USER=maybe: expected true or false"],
        );
        check(
            &["--multi-user", "false", "--host", "0.0.0.0"],
            &[
                "MCP_ENABLE_MULTI_USER=false without EXAI_WS_TOKEN would let anyone who can reach \
               0.0.0.0 in; set EXAI_WS_TOKEN or listen on a loopback address",
            ],
        );
        check(&["--multi-user", "false", "--host", "localhost"], &[]);
        check(
            &["--supabase-url", "ftp://x"],
            &["SUPABASE_URL is not an http(s) URL: 'ftp://x'"],
        );
        check(
            &[
                "--port",
                "x",
                "--session-timeout",
                "0",
                "--session-store",
                "postgres",
                "--log-format",
                "xml",
            ],
            &[
                "EXAI_WS_PORT=x: expected a port number (0-65535)",
                "MCP_SESSION_TIMEOUT=0: expected a whole number of seconds, at least 1",
                "EXAI_LOG_FORMAT=xml: expected text or json",
                "EXAI_SESSION_STORE=postgres needs DATABASE_URL",
            ],
        );
        check(
            &[
                "--ws-max-bytes",
                "100",
                "--ws-ping-interval",
                "0",
                "--ws-ping-timeout",
                "soon",
            ],
            &[
                "EXAI_WS_MAX_BYTES=100: expected a whole number of bytes, at least 1024",
                "EXAI_WS_PING_INTERVAL=0: expected a whole number of seconds, at least 1",
                "EXAI_WS_PING_TIMEOUT=soon: expected a whole number of seconds, at least 1",
            ],
        );
        check(
            &["--session-store", "mongo", "--jwt-leeway-secs=-1"],
            &[
                "EXAI_JWT_LEEWAY_SECS=-1: expected a number of seconds",
                "EXAI_SESSION_STORE=mongo: expected memory, postgres or supabase",
            ],
        );
    }
}
#[cfg(test)]
mod auth_args_tests {
    use super::*;

    fn args(supabase_url: Option<&str>, secret: Option<&str>) -> AuthArgs {
        AuthArgs {
            supabase_url: supabase_url.map(str::to_owned),
            jwks_url: None,
            jwt_issuer: None,
            jwt_audience: "authenticated".into(),
            jwt_leeway_secs: "30".into(),
            data_dir: Some(std::env::temp_dir().join("exai-config-tests-unused")),
            jwt_secret: secret.map(str::to_owned),
        }
    }

    #[test]
    fn supabase_url_sets_jwks_issuer_and_drops_the_dev_secret() {
        let (config, source) = args(Some("https://abc.supabase.co/"), None)
            .jwt_config()
            .unwrap();
        assert_eq!(source, SecretSource::None);
        assert!(config.hs256_secret.is_none());
        assert_eq!(
            config.jwks.unwrap().url,
            "https://abc.supabase.co/auth/v1/.well-known/jwks.json"
        );
        assert_eq!(
            config.issuer.as_deref(),
            Some("https://abc.supabase.co/auth/v1")
        );
        assert!(matches!(
            args(Some("https://abc.supabase.co"), None).signing_secret(),
            Err(ConfigError::NoSigningSecret)
        ));
    }

    #[test]
    fn both_systems_at_once() {
        let (config, source) = args(Some("https://abc.supabase.co"), Some("s3cret"))
            .jwt_config()
            .unwrap();
        assert_eq!(source, SecretSource::Environment);
        assert!(config.hs256_secret.is_some() && config.jwks.is_some());
    }
}
