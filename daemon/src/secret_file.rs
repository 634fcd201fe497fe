//! The development signing secret: created once with mode 0600, then reused.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use exai_auth::Secret;

use crate::config::ConfigError;

/// Random bytes in a new secret (256 bits, as HS256 wants).
const SECRET_BYTES: usize = 32;

/// Reads the secret at `path`, creating it first if it does not exist.
/// Returns the secret and whether it was created now.
pub(crate) fn load_or_create(path: &Path) -> Result<(Secret, bool), ConfigError> {
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
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| error(std::io::Error::other(e)))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(hex.as_bytes()).map_err(error)?;
            file.sync_all().map_err(error)?;
            return Ok((Secret::new(hex.into_bytes()), true));
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(error(e)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dev-jwt-secret");
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (second, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first, second);
    }

    #[test]
    fn refuses_a_readable_or_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, "x".repeat(64)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("0644"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "short").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
    }
}
