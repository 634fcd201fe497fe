//! Settings from an env file (`--env-file`, else `.env`, else `.env.docker`
//! in the working directory), for `exai-daemon` and `exai` alike.
//!
//! Precedence: flags, then the environment, then the env file, then the
//! built-in defaults ([`environment`] layers the process environment over
//! the file). The process environment is never modified.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::env::{Layered, ProcessEnv};
use super::problems::ConfigError;

/// Which env file applies: the one `--env-file` names (it must exist), else
/// `.env`, else `.env.docker` in `cwd`, else none.
pub fn locate(args: &[OsString], cwd: &Path) -> Result<Option<PathBuf>, ConfigError> {
    let mut named = None;
    let mut iter = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = iter.next() {
        if arg == "--env-file" {
            named = iter.next();
        } else if let Some(path) = arg.strip_prefix("--env-file=") {
            named = Some(path.to_owned());
        }
    }
    if let Some(path) = named {
        let path = cwd.join(path);
        if !path.is_file() {
            return Err(ConfigError::EnvFile {
                path,
                reason: "no such file".into(),
            });
        }
        return Ok(Some(path));
    }
    Ok([".env", ".env.docker"]
        .iter()
        .map(|name| cwd.join(name))
        .find(|path| path.is_file()))
}

/// The `NAME=value` lines of `file`.
pub fn read(file: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let error = |reason: String| ConfigError::EnvFile {
        path: file.to_owned(),
        reason,
    };
    let text = std::fs::read(file).map_err(|e| error(e.to_string()))?;
    parse(&text).map_err(error)
}

/// The `NAME=value` lines of an env file's `text` (dotenv syntax: quotes,
/// escapes, `export`, comments), or why they are not.
pub fn parse(text: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut values = HashMap::new();
    for item in dotenvy::from_read_iter(text) {
        let (name, value) = item.map_err(|e| e.to_string())?;
        values.insert(name, value);
    }
    Ok(values)
}

/// What a binary's settings are read from: the process environment over
/// the env file that `args` (the command line) and `cwd` select. Only the
/// binaries call this.
pub fn environment(
    args: &[OsString],
    cwd: &Path,
) -> Result<Layered<ProcessEnv, HashMap<String, String>>, ConfigError> {
    let file = match locate(args, cwd)? {
        Some(path) => read(&path)?,
        None => HashMap::new(),
    };
    Ok(Layered(ProcessEnv, file))
}

#[cfg(test)]
mod tests {
    use super::super::env::Strings as _;
    use super::*;

    #[test]
    fn named_file_must_exist_and_defaults_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(locate(&args(&["x"]), dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join(".env.docker"), "A=1\n").unwrap();
        assert_eq!(
            locate(&args(&["x"]), dir.path()).unwrap(),
            Some(dir.path().join(".env.docker"))
        );
        std::fs::write(dir.path().join(".env"), "A=1\n").unwrap();
        assert_eq!(
            locate(&args(&["x"]), dir.path()).unwrap(),
            Some(dir.path().join(".env"))
        );
        assert!(matches!(
            locate(&args(&["x", "--env-file", "missing"]), dir.path()),
            Err(ConfigError::EnvFile { .. })
        ));
    }

    #[test]
    fn the_file_is_read_whole_and_layered_under_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("settings.env");
        std::fs::write(&file, "# comment\nEXAI_T_ONE=1\nEXAI_T_TWO=\"two words\"\n").unwrap();
        let values = read(&file).unwrap();
        assert_eq!(values.len(), 2);
        assert_eq!(values["EXAI_T_TWO"], "two words");
        let layered = Layered([("EXAI_T_ONE", "env")], values);
        assert_eq!(layered.get("EXAI_T_ONE").as_deref(), Some("env"));
        assert_eq!(layered.get("EXAI_T_TWO").as_deref(), Some("two words"));
        std::fs::write(&file, "NOT A LINE\n").unwrap();
        assert!(matches!(read(&file), Err(ConfigError::EnvFile { .. })));
    }
}
