//! The daemon's configuration, parsed once by the binary from flags and
//! environment into the typed [`Config`] that [`crate::start`] takes.
//!
//! The signing-secret rules live here too ([`SecretArgs`]) because the `exai`
//! CLI must sign development tokens with exactly the secret the daemon uses.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use exai_auth::{JwtConfig, Secret};
use exai_transport::EdgeConfig;

use crate::secret_file;

/// A configuration the daemon cannot run with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `MCP_ENABLE_MULTI_USER=false` asked for the shared-token mode.
    #[error(
        "MCP_ENABLE_MULTI_USER=false (single-user mode with EXAI_WS_TOKEN) is not supported by this version; unset it"
    )]
    SingleUserUnsupported,
    /// `SUPABASE_JWT_SECRET` is set but empty.
    #[error("SUPABASE_JWT_SECRET is set but empty")]
    EmptySecret,
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

/// Where the signing secret comes from. Shared by `exai-daemon` and `exai`.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretArgs {
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

/// Which secret signs and verifies tokens.
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
}

impl SecretArgs {
    /// `SUPABASE_JWT_SECRET` if set; otherwise the development secret in the
    /// data directory, created on first use with mode 0600.
    pub fn resolve(&self) -> Result<(Secret, SecretSource), ConfigError> {
        if let Some(secret) = &self.jwt_secret {
            if secret.is_empty() {
                return Err(ConfigError::EmptySecret);
            }
            return Ok((
                Secret::new(secret.as_bytes().to_vec()),
                SecretSource::Environment,
            ));
        }
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => dirs::data_dir().ok_or(ConfigError::NoDataDir)?.join("exai"),
        };
        let path = dir.join("dev-jwt-secret");
        let (secret, created) = secret_file::load_or_create(&path)?;
        Ok((secret, SecretSource::DevelopmentFile { path, created }))
    }
}

/// Command-line flags and environment of `exai-daemon`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "exai-daemon",
    version,
    about = "Multi-user MCP daemon: authenticated MCP over WebSocket at /mcp",
    after_help = "The signing secret comes from SUPABASE_JWT_SECRET; without it a development \
                  secret is created in the data directory (for development only)."
)]
pub struct DaemonArgs {
    /// Address to listen on; overrides --host and --port
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,

    /// Host or IP address to listen on
    #[arg(long, env = "EXAI_WS_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on
    #[arg(long, env = "EXAI_WS_PORT", default_value_t = 8079)]
    pub port: u16,

    /// Concurrent connections one user may hold
    #[arg(
        long,
        env = "MCP_MAX_CONNECTIONS_PER_USER",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections_per_user: u32,

    /// Multi-user mode: every connection authenticates as a Supabase user
    #[arg(
        long,
        env = "MCP_ENABLE_MULTI_USER",
        default_value = "true",
        value_parser = BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    pub multi_user: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub secret: SecretArgs,
}

impl DaemonArgs {
    /// Checks the arguments and resolves the signing secret.
    pub fn into_config(self) -> Result<(Config, SecretSource), ConfigError> {
        if !self.multi_user {
            return Err(ConfigError::SingleUserUnsupported);
        }
        let (secret, source) = self.secret.resolve()?;
        let (host, port) = match self.listen {
            Some(addr) => (addr.ip().to_string(), addr.port()),
            None => (self.host, self.port),
        };
        let mut config = Config::new(host, port, secret);
        config.edge.max_connections_per_user = self.max_connections_per_user;
        Ok((config, source))
    }
}

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Host or address to bind.
    pub host: String,
    /// Port to bind (0: any free port).
    pub port: u16,
    /// What a valid access token is.
    pub jwt: JwtConfig,
    /// Limits at the network edge.
    pub edge: EdgeConfig,
}

impl Config {
    /// Defaults for everything but the listen address and the secret.
    pub fn new(host: impl Into<String>, port: u16, jwt_secret: Secret) -> Self {
        Config {
            host: host.into(),
            port,
            jwt: JwtConfig::new(jwt_secret),
            edge: EdgeConfig::default(),
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
            SecretSource::DevelopmentFile { created: true, .. }
        ));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--max-connections-per-user", "0"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["--multi-user", "maybe"]).is_err());
        let args = parse(&["--multi-user", "false"]).unwrap();
        assert!(matches!(
            args.into_config(),
            Err(ConfigError::SingleUserUnsupported)
        ));
    }
}
