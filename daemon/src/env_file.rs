//! Settings from an env file (`--env-file`, else `.env`, else `.env.docker`
//! in the working directory), for `exai-daemon` and `exai` alike.
//!
//! Precedence: flags, then the environment, then the env file, then the
//! built-in defaults. The file's values become the defaults of the
//! arguments bound to those variables, so the process environment is never
//! modified. Secret values stay hidden in `--help`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, Command};

use crate::config::ConfigError;

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

/// `command` with the values of `file` as defaults for the arguments bound
/// to its variables, except those `is_set` in the environment.
pub fn apply(
    command: Command,
    file: &Path,
    is_set: impl Fn(&str) -> bool,
) -> Result<Command, ConfigError> {
    let error = |reason: String| ConfigError::EnvFile {
        path: file.to_owned(),
        reason,
    };
    let mut values = Vec::new();
    for item in dotenvy::from_path_iter(file).map_err(|e| error(e.to_string()))? {
        let (name, value) = item.map_err(|e| error(e.to_string()))?;
        if !is_set(&name) {
            values.push((name, value));
        }
    }
    Ok(with_defaults(command, &values))
}

fn with_defaults(command: Command, values: &[(String, String)]) -> Command {
    let set = |arg: Arg| {
        let Some(name) = arg.get_env().map(|n| n.to_string_lossy().into_owned()) else {
            return arg;
        };
        match values.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => {
                let secret = arg.is_hide_env_values_set();
                arg.default_value(value.clone()).hide_default_value(secret)
            }
            None => arg,
        }
    };
    command
        .mut_args(set)
        .mut_subcommands(|sub| with_defaults(sub, values))
}

#[cfg(test)]
mod tests {
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
}
