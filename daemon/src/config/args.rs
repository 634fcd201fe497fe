//! The settings of `exai-daemon` as clap reads them: flags, each bound to
//! its environment variable ([`super::env::bind`]). Values are kept as
//! text and checked by the sections of [`super`], so that every problem is
//! reported at once, naming its variable.

#![allow(
    rustdoc::bare_urls,
    rustdoc::invalid_html_tags,
    reason = "these comments are clap's --help text, read in a terminal"
)]

use std::path::PathBuf;

/// Command-line flags and environment of `exai-daemon`. Values are read as
/// text and checked together by [`DaemonArgs::into_config`], so that every
/// problem is reported at once, naming its variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "exai-daemon",
    version,
    about = "Multi-user MCP daemon: authenticated MCP over WebSocket and Streamable HTTP at /mcp",
    after_help = "Tokens are verified with SUPABASE_JWT_SECRET (HS256) and/or the project's \
                  signing keys (SUPABASE_URL or EXAI_JWKS_URL). With neither, a development \
                  secret is created in the data directory (for development only). \
                  EXAI_WS_TOKEN is the shared token of single-user mode."
)]
pub struct DaemonArgs {
    /// Check the configuration, print every problem, and exit (0 when valid,
    /// 64 otherwise) without starting
    #[arg(long)]
    pub(crate) check_config: bool,

    /// Settings file (NAME=value lines) under flags and the environment
    /// [default: .env, else .env.docker, in the working directory]
    #[arg(long, value_name = "FILE")]
    pub(crate) env_file: Option<PathBuf>,

    /// Address to listen on; overrides --host and --port
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) listen: Option<String>,

    /// Host or IP address to listen on
    #[arg(long, env = "EXAI_WS_HOST", default_value = "127.0.0.1")]
    pub(crate) host: String,

    /// Port to listen on
    #[arg(long, env = "EXAI_WS_PORT", default_value = "8079")]
    pub(crate) port: String,

    /// Address for /metrics, /healthz and /readyz, apart from the public
    /// listener [default: served on the public listener]
    #[arg(long, env = "EXAI_ADMIN_LISTEN", value_name = "HOST:PORT")]
    pub(crate) admin_listen: Option<String>,

    /// TCP connections the public listener holds open at once, of any kind;
    /// more wait in the kernel's backlog until one closes
    #[arg(long, env = "EXAI_MAX_CONNECTIONS", default_value = "10000")]
    pub(crate) max_connections: String,

    /// Seconds a request's headers (or the next request on an idle
    /// keep-alive connection) may take to arrive before the connection is
    /// closed
    #[arg(long, env = "EXAI_HEADER_READ_TIMEOUT_SECS", default_value = "10")]
    pub(crate) header_read_timeout: String,

    /// Connections one address may hold that have not authenticated yet;
    /// more are closed at once
    #[arg(
        long,
        env = "EXAI_MAX_UNAUTHENTICATED_PER_ADDRESS",
        default_value = "64"
    )]
    pub(crate) max_unauthenticated_per_address: String,

    /// Concurrent connections one user may hold
    #[arg(long, env = "MCP_MAX_CONNECTIONS_PER_USER", default_value = "5")]
    pub(crate) max_connections_per_user: String,

    /// Seconds without an MCP request after which a session expires (its
    /// socket is closed with 4408; it can no longer be resumed)
    #[arg(long, env = "MCP_SESSION_TIMEOUT", default_value = "3600")]
    pub(crate) session_timeout: String,

    /// Seconds of silence after which another daemon on the same database
    /// is presumed dead and its live sessions are freed (they become
    /// resumable elsewhere); the heartbeat is written every third of it
    #[arg(long, env = "EXAI_NODE_TIMEOUT", default_value = "30")]
    pub(crate) node_timeout: String,

    /// Largest WebSocket message accepted, in bytes (a larger one closes the
    /// connection with 1009)
    #[arg(long, env = "EXAI_WS_MAX_BYTES", default_value = "33554432")]
    pub(crate) ws_max_bytes: String,

    /// The most messages one JSON-RPC batch may hold (protocol version
    /// 2025-03-26); a larger batch is refused whole with -32600
    #[arg(long, env = "EXAI_MAX_BATCH_MESSAGES", default_value = "64")]
    pub(crate) max_batch_messages: String,

    /// Seconds between the server's WebSocket pings
    #[arg(long, env = "EXAI_WS_PING_INTERVAL", default_value = "30")]
    pub(crate) ws_ping_interval: String,

    /// Seconds to wait for the pong to a ping before closing the connection
    /// (1011)
    #[arg(long, env = "EXAI_WS_PING_TIMEOUT", default_value = "10")]
    pub(crate) ws_ping_timeout: String,

    /// Seconds a tool call may run before it is stopped with a tool error
    #[arg(long, env = "EXAI_TOOL_TIMEOUT_SECS", default_value = "300")]
    pub(crate) tool_timeout: String,

    /// Seconds between progress reports of a running tool call, to clients
    /// that sent a progress token
    #[arg(long, env = "EXAI_WS_PROGRESS_INTERVAL_SECS", default_value = "8")]
    pub(crate) progress_interval: String,

    /// Tool calls one session may have running at once; more are refused
    /// with a JSON-RPC error (-32004) at once
    #[arg(long, env = "EXAI_SESSION_MAX_INFLIGHT", default_value = "8")]
    pub(crate) session_max_inflight: String,

    /// Tool calls one user may start per minute, over all their sessions
    /// (0: no limit); more are refused with a JSON-RPC error (-32005)
    /// saying when to retry
    #[arg(long, env = "EXAI_USER_RPM", default_value = "60")]
    pub(crate) user_rpm: String,

    /// Tool calls one user may have running at once, over all their
    /// sessions; more are refused with a JSON-RPC error (-32005)
    #[arg(long, env = "EXAI_USER_MAX_INFLIGHT", default_value = "8")]
    pub(crate) user_max_inflight: String,

    /// The largest one argument of a tool call may be, in bytes; a larger
    /// one is a tool error naming the limit
    #[arg(long, env = "EXAI_MAX_ARGUMENT_BYTES", default_value = "1048576")]
    pub(crate) max_argument_bytes: String,

    /// The most provider calls one tool call may make
    #[arg(long, env = "EXAI_MAX_PROVIDER_CALLS_PER_TOOL", default_value = "8")]
    pub(crate) max_provider_calls: String,

    /// The most turns (a question and its answer are two) a conversation
    /// may hold
    #[arg(long, env = "MAX_CONVERSATION_TURNS", default_value = "20")]
    pub(crate) max_conversation_turns: String,

    /// Bytes of text one user's conversations may hold together in the
    /// memory store; past it that user's oldest conversations are dropped
    #[arg(long, env = "EXAI_USER_CONVERSATION_BYTES", default_value = "67108864")]
    pub(crate) user_conversation_bytes: String,

    /// Bytes of text all conversations may hold together in the memory
    /// store; past it the oldest conversations are dropped
    #[arg(
        long,
        env = "EXAI_CONVERSATION_MEMORY_BYTES",
        default_value = "1073741824"
    )]
    pub(crate) conversation_memory_bytes: String,

    /// Hours after its last turn that a conversation is gone
    #[arg(long, env = "CONVERSATION_TIMEOUT_HOURS", default_value = "3")]
    pub(crate) conversation_timeout_hours: String,

    /// Seconds tool calls running at shutdown may take to finish before they
    /// are cancelled
    #[arg(long, env = "EXAI_SHUTDOWN_GRACE_SECS", default_value = "10")]
    pub(crate) shutdown_grace: String,

    /// Kimi (Moonshot AI) API key; set it through the environment only.
    #[arg(
        long = "kimi-api-key",
        env = "KIMI_API_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub(crate) kimi_api_key: Option<String>,

    /// Kimi's API base URL
    #[arg(long, env = "KIMI_API_URL", value_name = "URL")]
    pub(crate) kimi_api_url: Option<String>,

    /// GLM (Z.ai) API key; set it through the environment only.
    #[arg(
        long = "glm-api-key",
        env = "GLM_API_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub(crate) glm_api_key: Option<String>,

    /// GLM's API base URL
    #[arg(long, env = "GLM_API_URL", value_name = "URL")]
    pub(crate) glm_api_url: Option<String>,

    /// Key of another OpenAI-compatible API; set it through the environment
    /// only.
    #[arg(
        long = "openai-api-key",
        env = "OPENAI_API_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub(crate) openai_api_key: Option<String>,

    /// Base URL of another OpenAI-compatible API (default with a key:
    /// https://api.openai.com/v1)
    #[arg(long, env = "OPENAI_BASE_URL", value_name = "URL")]
    pub(crate) openai_base_url: Option<String>,

    /// The models that API serves, comma-separated
    #[arg(long, env = "OPENAI_MODELS", default_value = "")]
    pub(crate) openai_models: String,

    /// A TOML file of more OpenAI-compatible providers (name, base_url,
    /// api_key_env, models); see docs/providers.md
    #[arg(long, env = "EXAI_PROVIDERS_FILE", value_name = "PATH")]
    pub(crate) providers_file: Option<PathBuf>,

    /// The model a call that names none is sent to (default: glm-4.5-flash
    /// with GLM configured, else the offline echo)
    #[arg(long, env = "DEFAULT_MODEL")]
    pub(crate) default_model: Option<String>,

    /// Only these tools are offered, comma-separated (default: all)
    #[arg(long, env = "ENABLED_TOOLS", default_value = "")]
    pub(crate) enabled_tools: String,

    /// These tools are not offered, comma-separated
    #[arg(long, env = "DISABLED_TOOLS", default_value = "")]
    pub(crate) disabled_tools: String,

    /// Milliseconds the offline `echo` model takes to answer (to try
    /// progress, timeouts and cancellation without a model)
    #[arg(long, env = "EXAI_ECHO_DELAY_MS", default_value = "0")]
    pub(crate) echo_delay_ms: String,

    /// Browser origins allowed to use /mcp (HTTP and WebSocket),
    /// comma-separated (`https://app.example.com`, `http://localhost:6274`,
    /// or `*`); a loopback daemon's own origin always is; a request from
    /// any other origin is refused with 403
    #[arg(long, env = "EXAI_ALLOWED_ORIGINS", default_value = "")]
    pub(crate) allowed_origins: String,

    /// Host names /mcp answers to (HTTP and WebSocket) besides the loopback ones,
    /// comma-separated (a proxy's public name, when the daemon listens on
    /// loopback behind it); when set, other names get 403
    #[arg(long, env = "EXAI_ALLOWED_HOSTS", default_value = "")]
    pub(crate) allowed_hosts: String,

    /// Multi-user mode: every connection authenticates as a Supabase user;
    /// false: the single-user mode of the original daemon
    #[arg(long, env = "MCP_ENABLE_MULTI_USER", default_value = "true")]
    pub(crate) multi_user: String,

    /// Where sessions are kept: memory, postgres or supabase
    #[arg(long, env = "EXAI_SESSION_STORE", default_value = "memory")]
    pub(crate) session_store: String,

    /// The PostgreSQL connection string, for the postgres store
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub(crate) database_url: Option<String>,

    /// The project's service-role key, for the supabase store; set it
    /// through the environment only.
    #[arg(
        long = "supabase-service-role-key",
        env = "SUPABASE_SERVICE_ROLE_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub(crate) service_role_key: Option<String>,

    /// The public base URL of this daemon, for the metadata it publishes
    #[arg(long, env = "EXAI_PUBLIC_URL", value_name = "URL")]
    pub(crate) public_url: Option<String>,

    /// Log format: text or json
    #[arg(long, env = "EXAI_LOG_FORMAT", default_value = "text")]
    pub(crate) log_format: String,

    /// Single-user mode's shared token; set it through the environment only.
    #[arg(
        long = "ws-token",
        env = "EXAI_WS_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub(crate) ws_token: Option<String>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub(crate) auth: AuthArgs,
}

/// How tokens are verified (and, for `exai token mint`, signed). Shared by
/// `exai-daemon` and `exai`, so both always agree.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// The Supabase project URL (https://<ref>.supabase.co); sets the JWKS
    /// URL, the required issuer and the authorization server
    #[arg(long, env = "SUPABASE_URL", value_name = "URL")]
    pub(crate) supabase_url: Option<String>,

    /// Where the project's signing keys are [default: SUPABASE_URL/auth/v1/.well-known/jwks.json]
    #[arg(long, env = "EXAI_JWKS_URL", value_name = "URL")]
    pub(crate) jwks_url: Option<String>,

    /// Required `iss` claim [default: SUPABASE_URL/auth/v1, none without SUPABASE_URL]
    #[arg(long, env = "EXAI_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,

    /// Required `aud` claim
    #[arg(long, env = "EXAI_JWT_AUDIENCE", default_value = "authenticated")]
    pub(crate) jwt_audience: String,

    /// Clock skew tolerated on exp and nbf, in seconds
    #[arg(long, env = "EXAI_JWT_LEEWAY_SECS", default_value = "30")]
    pub(crate) jwt_leeway_secs: String,

    /// Directory for the development signing secret
    /// [default: the user's data directory + /exai]
    #[arg(long, env = "EXAI_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// The project's JWT secret; set it through the environment only.
    #[arg(
        long = "supabase-jwt-secret",
        env = "SUPABASE_JWT_SECRET",
        hide = true,
        hide_env_values = true
    )]
    pub(crate) jwt_secret: Option<String>,
}
