//! How connections authenticate: multi-user mode's token rules (shared with
//! `exai token mint` through [`AuthArgs`], so tokens are signed exactly as
//! they are verified) or single-user mode's shared token.
//!
//! Reading the settings has no side effect: where the HS256 secret is to be
//! the development secret, the configuration says so ([`SecretSource`]) and
//! [`DevSecret::load_or_create`] is what `start()` and `exai token mint`
//! call to carry it out.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use exai_auth::{JwksConfig, JwtConfig, Secret};

use super::args::{AuthArgs, DaemonArgs};
use super::listen::is_loopback;
use super::problems::{ConfigError, Problems, check_url, parse, parse_bool};

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

/// Random bytes in a new development secret (256 bits, as HS256 wants).
const SECRET_BYTES: usize = 32;

/// Which shared secret signs and verifies HS256 tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `SUPABASE_JWT_SECRET`.
    Environment,
    /// The development secret file, read (or created) when the daemon
    /// starts.
    DevelopmentFile(DevSecret),
    /// No shared secret: asymmetric keys (JWKS) only.
    None,
}

/// The development signing secret: a file of the data directory, created
/// once with mode 0600, then reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSecret {
    /// The file.
    pub path: PathBuf,
}

impl DevSecret {
    /// Reads the secret, creating it first if it does not exist. Returns
    /// the secret and whether it was created now.
    pub fn load_or_create(&self) -> Result<(Secret, bool), ConfigError> {
        let path = self.path.as_path();
        let error = |source| ConfigError::DevSecret {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(error)?;
        }
        if let Some(created) = create(path).map_err(error)? {
            return Ok((created, true));
        }
        let mode = fs::metadata(path).map_err(error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ConfigError::DevSecretPermissions {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
        let text = fs::read_to_string(path).map_err(error)?;
        let text = text.trim();
        if text.len() < SECRET_BYTES {
            return Err(ConfigError::DevSecretTooShort {
                path: path.to_owned(),
            });
        }
        Ok((Secret::new(text.as_bytes().to_vec()), false))
    }
}

/// A new secret at `path`, unless a file is there already.
fn create(path: &Path) -> std::io::Result<Option<Secret>> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(hex.as_bytes())?;
            file.sync_all()?;
            Ok(Some(Secret::new(hex.into_bytes())))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
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

    /// The audience tokens must name (`aud`).
    pub fn audience(&self) -> &str {
        &self.jwt_audience
    }

    /// The issuer tokens must name, if any.
    pub fn issuer(&self) -> Result<Option<String>, ConfigError> {
        if let Some(issuer) = &self.jwt_issuer {
            return Ok(Some(issuer.clone()));
        }
        Ok(self.supabase_url()?.map(|base| format!("{base}/auth/v1")))
    }

    /// Where the HS256 secret comes from: `SUPABASE_JWT_SECRET`; else,
    /// when no asymmetric keys are configured either, the development
    /// secret in the data directory. Nothing is read or created.
    pub fn secret_source(&self) -> Result<SecretSource, ConfigError> {
        if let Some(secret) = &self.jwt_secret {
            if secret.is_empty() {
                return Err(ConfigError::EmptySecret);
            }
            return Ok(SecretSource::Environment);
        }
        if self.jwks_url()?.is_some() {
            return Ok(SecretSource::None);
        }
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => dirs::data_dir().ok_or(ConfigError::NoDataDir)?.join("exai"),
        };
        Ok(SecretSource::DevelopmentFile(DevSecret {
            path: dir.join("dev-jwt-secret"),
        }))
    }

    /// The secret `exai token mint` signs with (the development secret is
    /// created if it is the one and does not exist yet).
    pub fn signing_secret(&self) -> Result<Secret, ConfigError> {
        match self.secret_source()? {
            SecretSource::Environment => Ok(self.environment_secret()),
            SecretSource::DevelopmentFile(dev) => Ok(dev.load_or_create()?.0),
            SecretSource::None => Err(ConfigError::NoSigningSecret),
        }
    }

    fn environment_secret(&self) -> Secret {
        Secret::new(self.jwt_secret.clone().unwrap_or_default().into_bytes())
    }

    /// What a valid access token is. A development secret is not in the
    /// returned configuration yet: the source says where to load it from.
    pub fn jwt_config(&self) -> Result<(JwtConfig, SecretSource), ConfigError> {
        let source = self.secret_source()?;
        let mut config = JwtConfig::new();
        if source == SecretSource::Environment {
            config.hs256_secret = Some(self.environment_secret());
        }
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

/// The authentication section: the mode, and in multi-user mode where the
/// HS256 secret comes from. `host` is the listen host (single-user mode
/// without a token must stay on loopback).
pub(super) fn section(
    args: &DaemonArgs,
    host: &str,
    problems: &mut Problems,
) -> Option<(AuthMode, Option<SecretSource>)> {
    match problems.check(parse_bool("MCP_ENABLE_MULTI_USER", &args.multi_user))? {
        true => {
            let (jwt, source) = problems.check(args.auth.jwt_config())?;
            Some((AuthMode::MultiUser(jwt), Some(source)))
        }
        false => {
            let token = args.ws_token.clone().filter(|t| !t.is_empty());
            if token.is_none() && !is_loopback(host) {
                problems.push(ConfigError::SingleUserNeedsToken {
                    host: host.to_owned(),
                });
            }
            let token = token.map(|t| Secret::new(t.into_bytes()));
            Some((AuthMode::SingleUser { token }, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(supabase_url: Option<&str>, secret: Option<&str>, data_dir: &Path) -> AuthArgs {
        AuthArgs {
            supabase_url: supabase_url.map(str::to_owned),
            jwks_url: None,
            jwt_issuer: None,
            jwt_audience: "authenticated".into(),
            jwt_leeway_secs: "30".into(),
            data_dir: Some(data_dir.to_owned()),
            jwt_secret: secret.map(str::to_owned),
        }
    }

    #[test]
    fn supabase_url_sets_jwks_issuer_and_drops_the_dev_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (config, source) = args(Some("https://abc.supabase.co/"), None, dir.path())
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
            args(Some("https://abc.supabase.co"), None, dir.path()).signing_secret(),
            Err(ConfigError::NoSigningSecret)
        ));
    }

    #[test]
    fn both_systems_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (config, source) = args(Some("https://abc.supabase.co"), Some("s3cret"), dir.path())
            .jwt_config()
            .unwrap();
        assert_eq!(source, SecretSource::Environment);
        assert!(config.hs256_secret.is_some() && config.jwks.is_some());
    }

    #[test]
    fn reading_the_settings_creates_nothing_and_minting_creates_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let auth = args(None, None, &data);
        let (config, source) = auth.jwt_config().unwrap();
        assert!(config.hs256_secret.is_none());
        let SecretSource::DevelopmentFile(dev) = source else {
            panic!("the development secret: {source:?}");
        };
        assert_eq!(dev.path, data.join("dev-jwt-secret"));
        assert!(
            !data.exists(),
            "nothing was created by reading the settings"
        );
        let minted_with = auth.signing_secret().unwrap();
        assert!(dev.path.exists());
        assert_eq!(dev.load_or_create().unwrap(), (minted_with, false));
    }

    #[test]
    fn the_dev_secret_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevSecret {
            path: dir.path().join("nested/dev-jwt-secret"),
        };
        let (first, created) = dev.load_or_create().unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&dev.path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (second, created) = dev.load_or_create().unwrap();
        assert!(!created);
        assert_eq!(first, second);
    }

    #[test]
    fn a_readable_or_short_dev_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevSecret {
            path: dir.path().join("secret"),
        };
        fs::write(&dev.path, "x".repeat(64)).unwrap();
        fs::set_permissions(&dev.path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = dev.load_or_create().unwrap_err().to_string();
        assert!(err.contains("0644"), "{err}");
        fs::set_permissions(&dev.path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&dev.path, "short").unwrap();
        let err = dev.load_or_create().unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
    }
}
