//! The `exai` command-line tool, as a library: the binary only parses
//! [`Cli`] and calls [`run`].
//!
//! - [`client`] is a small MCP-over-WebSocket client (rmcp over
//!   tokio-tungstenite), usable by other Rust programs too;
//! - `bridge` is `exai connect`, the stdio bridge for editors;
//! - `commands` implements the other subcommands.

mod admin;
mod bridge;

/// The JSON-RPC error codes `exai connect` answers with itself, for
/// requests the daemon never saw (beside the daemon's own,
/// `exai_transport::jsonrpc` and `exai_daemon::jsonrpc`; none reuses
/// another's).
pub mod jsonrpc {
    /// The connection to the daemon dropped while the request was in
    /// flight; it may or may not have run.
    pub const CONNECTION_LOST: i32 = -32002;
    /// The daemon stayed unreachable for as long as the request could wait.
    pub const NOT_CONNECTED: i32 = -32003;
}

/// The daemon's WebSocket close codes `exai connect` acts on (the daemon's
/// are `exai_transport::close`; the CLI's tests check that they agree).
pub mod close {
    /// An in-band refresh offered another user's credential.
    pub const OTHER_USER: u16 = 4403;
    /// An administrator killed the session.
    pub const SESSION_KILLED: u16 = 4410;
}
pub mod client;
mod commands;
mod doctor;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod signin;

use std::io::Write as _;

use clap::{Parser, Subcommand};
use exai_daemon::config::{AuthArgs, Strings};

pub use commands::CommandError;

/// `exai`: talk to an exai daemon.
#[derive(Debug, Parser)]
#[command(
    name = "exai",
    version,
    about = "Command-line client and admin tool for the exai MCP daemon"
)]
pub struct Cli {
    /// Settings file (NAME=value lines) under flags and the environment
    /// [default: .env, else .env.docker, in the working directory]
    #[arg(long, global = true, value_name = "FILE")]
    env_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The log level when `RUST_LOG` does not say: `exai connect` reports
    /// reconnections, other commands only problems.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Connect(_) => "info",
            _ => "warn",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Development access tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Call one MCP tool on the daemon and print its result as JSON
    Call(CallArgs),
    /// Relay MCP between standard input/output and the daemon, for editors
    /// that launch a command (VSCode, Claude Desktop); logs go to stderr
    Connect(ConnectArgs),
    /// Check what the daemon's configuration would do: settings, signing
    /// keys, session store, listen address
    Doctor(Box<exai_daemon::config::DaemonArgs>),
    /// Sign in with Supabase Auth (email and password) and keep the session
    Login {
        /// The account's email [default: asked]
        #[arg(long)]
        email: Option<String>,
        /// Read the password from standard input instead of asking
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        config: ConfigDir,
    },
    /// Forget the stored session
    Logout {
        #[command(flatten)]
        config: ConfigDir,
    },
    /// Who you are signed in as (or which credential is used), and who the
    /// daemon says you are
    Whoami {
        /// The daemon's /mcp URL (ws://, wss://, http:// or https://) [default: where
        /// EXAI_WS_HOST and EXAI_WS_PORT put the daemon, ws://127.0.0.1:8079/mcp]
        #[arg(long, env = "EXAI_URL")]
        url: Option<String>,
        #[command(flatten)]
        credential: CredentialArgs,
    },
    /// Apply the database migrations (idempotent), or print their SQL
    Migrate(MigrateArgs),
    /// API keys (administrators)
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sessions of every user (administrators)
    #[command(subcommand)]
    Sessions(SessionsCommand),
}

#[derive(Debug, clap::Args)]
struct ProjectArgs {
    /// The Supabase project URL
    #[arg(long, env = "SUPABASE_URL", value_name = "URL")]
    supabase_url: Option<String>,
    /// The project's anon key; set it through the environment only.
    #[arg(
        long = "supabase-anon-key",
        env = "SUPABASE_ANON_KEY",
        hide = true,
        hide_env_values = true
    )]
    anon_key: Option<String>,
}

impl ProjectArgs {
    fn project(&self) -> Option<signin::Project<'_>> {
        Some(signin::Project {
            url: self.supabase_url.as_deref()?,
            anon_key: self.anon_key.as_deref()?,
        })
    }
}

#[derive(Debug, clap::Args)]
struct ConfigDir {
    /// Where the signed-in session is kept [default: the user's config directory + /exai]
    #[arg(long, env = "EXAI_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<std::path::PathBuf>,
}

impl ConfigDir {
    fn path(&self) -> Result<std::path::PathBuf, CommandError> {
        match &self.config_dir {
            Some(dir) => Ok(dir.clone()),
            None => dirs::config_dir().map(|d| d.join("exai")).ok_or_else(|| {
                CommandError::Usage("no config directory: set EXAI_CONFIG_DIR".into())
            }),
        }
    }
}

#[derive(Debug, clap::Args)]
struct Database {
    /// The PostgreSQL connection string
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    database_url: String,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key for a user and print it (once)
    Create {
        /// The user: a UUID, or an email known to auth.users
        #[arg(long)]
        user: String,
        /// A label for the key
        #[arg(long)]
        name: Option<String>,
        /// How long the key is valid (e.g. 90d) [default: no expiry]
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
        #[command(flatten)]
        db: Database,
    },
    /// List API keys (never their secrets)
    List {
        /// Only this user's (UUID or email)
        #[arg(long)]
        user: Option<String>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: Database,
    },
    /// Revoke an API key: refused from now on, its open connections closed
    Revoke {
        /// The key's id (the part after exai_)
        key_id: String,
        #[command(flatten)]
        db: Database,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List sessions
    List {
        /// Only this user's (UUID or email)
        #[arg(long)]
        user: Option<String>,
        /// Only in this state: connected, disconnected, expired or killed
        #[arg(long)]
        status: Option<String>,
        /// At most this many, newest first (1 to 1000)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Skip this many first (the next page: the previous offset plus its limit)
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: Database,
    },
    /// End a session: the daemon holding it closes the connection
    Kill {
        /// The session's id
        session_id: String,
        #[command(flatten)]
        db: Database,
    },
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// The PostgreSQL connection string
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    database_url: Option<String>,
    /// Migrate the hosted Supabase project at SUPABASE_URL through its direct
    /// database connection (db.<ref>.supabase.co, TLS), with the database
    /// password from SUPABASE_DB_PASSWORD
    #[arg(long)]
    supabase: bool,
    /// The Supabase project URL, for --supabase
    #[arg(long, env = "SUPABASE_URL", value_name = "URL")]
    supabase_url: Option<String>,
    /// The project's database password; set it through the environment only
    #[arg(
        long = "supabase-db-password",
        env = "SUPABASE_DB_PASSWORD",
        hide = true,
        hide_env_values = true
    )]
    supabase_db_password: Option<String>,
    /// Print the SQL (for Supabase's SQL editor) instead of applying it
    #[arg(long)]
    print: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a Supabase-shaped access token signed with the daemon's secret
    Mint(MintArgs),
}

#[derive(Debug, clap::Args)]
struct MintArgs {
    /// The user's email
    #[arg(long)]
    email: String,
    /// The user's id [default: derived stably from the email]
    #[arg(long, value_name = "UUID")]
    user_id: Option<uuid::Uuid>,
    /// How long the token is valid (e.g. 30m, 1h, 7d)
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Debug, clap::Args)]
struct CallArgs {
    /// The tool's name (e.g. whoami, chat)
    tool: String,
    /// The daemon's /mcp URL (ws://, wss://, http:// or https://) [default: where
    /// EXAI_WS_HOST and EXAI_WS_PORT put the daemon, ws://127.0.0.1:8079/mcp]
    #[arg(long, env = "EXAI_URL")]
    url: Option<String>,
    #[command(flatten)]
    credential: CredentialArgs,
    /// A tool argument: text when the tool declares it a string, else JSON
    /// when it parses as JSON (5, true, {"a":1}), else text
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = commands::parse_arg)]
    args: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
struct ConnectArgs {
    /// The daemon's /mcp URL (ws://, wss://, http:// or https://) [default: where
    /// EXAI_WS_HOST and EXAI_WS_PORT put the daemon, ws://127.0.0.1:8079/mcp]
    #[arg(long, env = "EXAI_URL")]
    url: Option<String>,
    /// How long a message waits for the daemon while the bridge reconnects,
    /// before a request is answered with an error
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
    #[command(flatten)]
    credential: CredentialArgs,
}

/// Who the client acts for: a token, an API key, or the stored sign-in.
#[derive(Debug, clap::Args)]
struct CredentialArgs {
    /// Access token or API key [env: EXAI_TOKEN, else EXAI_API_KEY, else the stored sign-in]
    #[arg(long, env = "EXAI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An API key; set it through the environment (EXAI_API_KEY)
    #[arg(
        long = "api-key",
        env = "EXAI_API_KEY",
        hide = true,
        hide_env_values = true
    )]
    api_key: Option<String>,
    #[command(flatten)]
    project: ProjectArgs,
    #[command(flatten)]
    config: ConfigDir,
}

impl CredentialArgs {
    /// The token or key given, and where it came from.
    fn given(&self) -> Option<(String, &'static str)> {
        match (&self.token, &self.api_key) {
            (Some(token), _) => Some((token.clone(), "--token (or EXAI_TOKEN)")),
            (None, Some(key)) => Some((key.clone(), "EXAI_API_KEY")),
            (None, None) => None,
        }
    }

    /// The token or key given, else the stored sign-in (refreshed).
    async fn token(&self) -> Result<String, CommandError> {
        match self.token.as_ref().or(self.api_key.as_ref()) {
            Some(token) => Ok(token.clone()),
            None => Ok(signed_in(&self.project, &self.config).await?.access_token),
        }
    }

    fn into_bridge_credential(self) -> Result<bridge::Credential, CommandError> {
        if let Some(token) = self.token.or(self.api_key) {
            return Ok(bridge::Credential::Fixed(token));
        }
        Ok(bridge::Credential::SignedIn {
            config_dir: self.config.path()?,
            project: self.project.supabase_url.zip(self.project.anon_key),
        })
    }
}

/// The stored sign-in, refreshed if need be.
async fn signed_in(
    project: &ProjectArgs,
    config: &ConfigDir,
) -> Result<signin::Stored, CommandError> {
    signin::current(project.project().as_ref(), &config.path()?)
        .await?
        .ok_or_else(|| {
            CommandError::SignIn("not signed in: run exai login, or pass --token".into())
        })
}

fn prompt_line(prompt: &str) -> Result<String, CommandError> {
    use std::io::Write as _;
    let mut stderr = std::io::stderr();
    write!(stderr, "{prompt}").map_err(CommandError::Output)?;
    stderr.flush().map_err(CommandError::Output)?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(CommandError::Output)?;
    Ok(line.trim().to_owned())
}

/// The daemon's URL: as given (`--url`, `EXAI_URL`), else where the daemon
/// of the same environment listens (`EXAI_WS_HOST`, `EXAI_WS_PORT`, from
/// the environment or the env file, as the daemon reads them); a daemon
/// listening on every address is reached on loopback.
fn daemon_url(given: Option<String>, env: &dyn Strings) -> String {
    if let Some(url) = given {
        return url;
    }
    let host = env
        .get("EXAI_WS_HOST")
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let host = match host.trim() {
        "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" | "[::]" => "[::1]".to_owned(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_owned(),
    };
    let port = env
        .get("EXAI_WS_PORT")
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "8079".to_owned());
    format!("ws://{host}:{}/mcp", port.trim())
}

/// `error` and its sources, as one line: `outer: cause: root cause`. A
/// cause an error already quotes at its end is not repeated (an IO error
/// inside a WebSocket error: "IO error: Connection refused").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Runs the parsed command, writing its output to standard output.
pub async fn run(cli: Cli, env: &dyn Strings) -> Result<(), CommandError> {
    let output = match cli.command {
        Command::Token(TokenCommand::Mint(args)) => {
            commands::mint(&args.email, args.user_id, args.ttl, &args.auth)?
        }
        Command::Call(args) => {
            let token = args.credential.token().await?;
            let url = daemon_url(args.url, env);
            commands::call(&url, &token, &args.tool, args.args).await?
        }
        Command::Connect(args) => {
            let options = bridge::Options {
                url: client::websocket_url(&daemon_url(args.url, env))?,
                wait: args.wait,
            };
            return bridge::run(options, args.credential.into_bridge_credential()?).await;
        }
        Command::Login {
            email,
            password_stdin,
            project,
            config,
        } => {
            let project_ref = project.project().ok_or_else(|| {
                CommandError::Usage("signing in needs SUPABASE_URL and SUPABASE_ANON_KEY".into())
            })?;
            let email = match email {
                Some(email) => email,
                None if password_stdin => {
                    return Err(CommandError::Usage("--password-stdin needs --email".into()));
                }
                None => prompt_line("Email: ")?,
            };
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(CommandError::Output)?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                rpassword::prompt_password("Password: ").map_err(CommandError::Output)?
            };
            let session = signin::login(&project_ref, &email, &password, &config.path()?).await?;
            format!(
                "signed in as {} (user {}); token valid until {}",
                session.email.as_deref().unwrap_or(&email),
                session.user_id,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(session.expires_at)
                )
            )
        }
        Command::Doctor(args) => {
            let (report, healthy) = doctor::run(*args, env).await;
            if !healthy {
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{report}").map_err(CommandError::Output)?;
                return Err(CommandError::Unhealthy);
            }
            report
        }
        Command::Logout { config } => {
            if signin::logout(&config.path()?)? {
                "signed out".to_owned()
            } else {
                "not signed in".to_owned()
            }
        }
        Command::Whoami { url, credential } => {
            let (local, token) = match credential.given() {
                Some((token, from)) => (format!("using the credential from {from}"), token),
                None => {
                    let session = signed_in(&credential.project, &credential.config).await?;
                    let local = format!(
                        "signed in as {} (user {}) at {}; token valid until {}",
                        session.email.as_deref().unwrap_or("?"),
                        session.user_id,
                        session.supabase_url,
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_secs(session.expires_at)
                        )
                    );
                    (local, session.access_token)
                }
            };
            let url = daemon_url(url, env);
            let daemon = commands::call(&url, &token, "whoami", Vec::new()).await?;
            let daemon: serde_json::Value = serde_json::from_str(&daemon).unwrap_or_default();
            format!("{local}\ndaemon: {}", daemon["structuredContent"])
        }
        Command::Keys(KeysCommand::Create {
            user,
            name,
            expires,
            db,
        }) => admin::keys_create(&db.database_url, &user, name, expires).await?,
        Command::Keys(KeysCommand::List { user, json, db }) => {
            admin::keys_list(&db.database_url, user.as_deref(), json).await?
        }
        Command::Keys(KeysCommand::Revoke { key_id, db }) => {
            admin::keys_revoke(&db.database_url, &key_id).await?
        }
        Command::Sessions(SessionsCommand::List {
            user,
            status,
            limit,
            offset,
            json,
            db,
        }) => {
            let page = exai_sessions::Page::new(usize::from(limit), offset);
            let filter = (user.as_deref(), status.as_deref());
            admin::sessions_list(&db.database_url, filter, page, json).await?
        }
        Command::Sessions(SessionsCommand::Kill { session_id, db }) => {
            admin::sessions_kill(&db.database_url, &session_id).await?
        }
        Command::Migrate(args) => {
            if args.print {
                commands::migration_sql()
            } else if args.supabase {
                let project = args
                    .supabase_url
                    .ok_or_else(|| CommandError::Usage("--supabase needs SUPABASE_URL".into()))?;
                let password = args.supabase_db_password.ok_or_else(|| {
                    CommandError::Usage(
                        "--supabase needs the database password in SUPABASE_DB_PASSWORD \
                         (Supabase dashboard: Project Settings, Database)"
                            .into(),
                    )
                })?;
                let url = commands::supabase_database_url(&project, &password)?;
                commands::migrate(&url).await?
            } else {
                let url = args.database_url.ok_or_else(|| {
                    CommandError::Usage(
                        "--database-url (or DATABASE_URL) is required, or --supabase, or --print"
                            .into(),
                    )
                })?;
                commands::migrate(&url).await?
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{output}").map_err(CommandError::Output)
}
