//! The daemon's configuration, parsed once by the binary from flags and
//! environment into the typed [`Config`] that [`crate::start`] takes.
//!
//! One file per section, each a function of the arguments that returns its
//! part of the configuration and notes its problems: `listen` (addresses,
//! origins, hosts), `limits` (the edge's and the tools'), `providers` (and
//! `EXAI_PROVIDERS_FILE`), `auth` (token rules, shared with `exai token
//! mint` through [`AuthArgs`], and the development secret), `store`.
//! `args` is what clap reads ([`DaemonArgs`]), `env` the seam through
//! which it reads the environment ([`Strings`]), `problems` what can be
//! wrong ([`ConfigError`]). This module composes [`Config`] from the
//! sections, reporting every problem at once.
//!
//! Reading a configuration has no side effect: the development secret, if
//! it is the one to use, is only named ([`SecretSource::DevelopmentFile`])
//! and is created by `start()` or `exai token mint`.

mod args;
mod auth;
mod env;
pub mod env_file;
mod limits;
mod listen;
mod problems;
mod providers;
mod store;

use std::net::SocketAddr;
use std::time::Duration;

use exai_auth::{JwtConfig, Secret};
use exai_providers::OpenAiConfig;
use exai_transport::EdgeConfig;

use crate::tools::ToolLimits;

pub use args::{AuthArgs, DaemonArgs};
pub use auth::{AuthMode, DevSecret, SecretSource};
pub use env::{Layered, NoEnv, ProcessEnv, Strings, bind, parse};
pub use limits::activity_flush;
use problems::Problems;
pub use problems::{ConfigError, ConfigErrors};
pub use store::StoreConfig;

impl DaemonArgs {
    /// Whether only to check the configuration (`--check-config`).
    pub fn check_only(&self) -> bool {
        self.check_config
    }

    /// Checks every setting and names where the HS256 secret comes from.
    /// All problems are returned together. `env` resolves the variables a
    /// providers file names for its keys.
    pub fn into_config(self, env: &dyn Strings) -> Result<Config, ConfigErrors> {
        let mut problems = Problems::default();
        let listen = listen::section(&self, &mut problems);
        let edge = limits::edge(&self, &mut problems);
        let tools = limits::tools(&self, &mut problems);
        let (providers, default_model) = providers::section(&self, env, &mut problems);
        let log_format = problems.check(match self.log_format.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::Invalid {
                variable: "EXAI_LOG_FORMAT",
                value: other.to_owned(),
                expected: "text or json",
            }),
        });
        let supabase_url = problems.check(self.auth.supabase_url()).flatten();
        let auth = auth::section(&self, &listen.host, &mut problems);
        let store = store::section(&self, supabase_url.clone(), &mut problems);
        let (
            Some(mut edge),
            Some((tools, echo_delay)),
            Some(log_format),
            Some((auth, secret)),
            Some(store),
            true,
        ) = (edge, tools, log_format, auth, store, problems.0.is_empty())
        else {
            return Err(ConfigErrors(problems.0));
        };
        edge.public_url = listen.public_url;
        edge.allowed_origins = listen.allowed_origins;
        edge.allowed_hosts = listen.allowed_hosts;
        edge.authorization_servers = supabase_url
            .map(|base| format!("{base}/auth/v1"))
            .into_iter()
            .collect();
        Ok(Config {
            host: listen.host,
            port: listen.port,
            admin_listen: listen.admin,
            log_format,
            auth,
            secret,
            store,
            edge,
            tools,
            echo_delay,
            providers,
            default_model,
        })
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
    /// In multi-user mode, where the HS256 secret comes from: a
    /// development secret is loaded (or created) by [`crate::start`].
    pub secret: Option<SecretSource>,
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
            secret: Some(SecretSource::Environment),
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
    use super::*;

    /// Flags alone: the tests never read the process environment.
    fn parse(args: &[&str]) -> Result<DaemonArgs, clap::Error> {
        env::parse(
            std::iter::once("exai-daemon").chain(args.iter().copied()),
            &NoEnv,
        )
    }

    #[test]
    fn listen_overrides_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let config = parse(&["--listen", "[::1]:9000", "--data-dir", data])
            .unwrap()
            .into_config(&NoEnv)
            .unwrap();
        assert_eq!(config.listen_addr(), "[::1]:9000");
        assert_eq!(
            config.secret,
            Some(SecretSource::DevelopmentFile(DevSecret {
                path: dir.path().join("dev-jwt-secret")
            }))
        );
        assert!(
            !dir.path().join("dev-jwt-secret").exists(),
            "checking a configuration creates no secret"
        );
    }

    #[test]
    fn websocket_settings_reach_the_edge() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let config = parse(&[
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
        .into_config(&NoEnv)
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
            parse(&all).unwrap().into_config(&NoEnv).unwrap().edge
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
            parse(&all).unwrap().into_config(&NoEnv).unwrap()
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
        let config = parse(&["--data-dir", data, "--disabled-tools", "chat, debug"])
            .unwrap()
            .into_config(&NoEnv)
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
        match parse(&all).unwrap().into_config(&NoEnv) {
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

    #[test]
    fn settings_come_through_the_environment_seam() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_owned();
        let env = [
            ("EXAI_WS_PORT", "9123"),
            ("EXAI_DATA_DIR", data.as_str()),
            ("EXAI_PROVIDERS_FILE", "/nonexistent/providers.toml"),
        ];
        let args: DaemonArgs = env::parse(["exai-daemon"], &env).unwrap();
        assert_eq!(args.port, "9123");
        let problems = match args.into_config(&env) {
            Ok(_) => Vec::new(),
            Err(ConfigErrors(problems)) => problems.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .starts_with("EXAI_PROVIDERS_FILE /nonexistent/providers.toml: cannot read it"),
            "{problems:?}"
        );
        let flag: DaemonArgs = env::parse(["exai-daemon", "--port", "1"], &env).unwrap();
        assert_eq!(flag.port, "1", "a flag wins over the environment");
    }

    #[test]
    fn a_providers_file_takes_its_keys_from_the_seam() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("providers.toml");
        std::fs::write(
            &file,
            "[[providers]]\nname = \"router\"\nbase_url = \"https://r.example/v1\"\napi_key_env = \"ROUTER_KEY\"\nmodels = [\"m\"]\n",
        )
        .unwrap();
        let file = file.to_str().unwrap().to_owned();
        let data = dir.path().to_str().unwrap().to_owned();
        let env = [
            ("EXAI_PROVIDERS_FILE", file.as_str()),
            ("EXAI_DATA_DIR", data.as_str()),
            ("ROUTER_KEY", "k-from-the-seam"),
        ];
        let args: DaemonArgs = env::parse(["exai-daemon"], &env).unwrap();
        let config = args.into_config(&env).unwrap();
        assert_eq!(config.providers.len(), 1);
        assert_eq!(
            config.providers[0]
                .api_key
                .as_ref()
                .map(|k| k.expose().to_vec()),
            Some(b"k-from-the-seam".to_vec())
        );
    }
}
