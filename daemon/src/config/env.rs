//! The environment as the configuration sees it: a seam ([`Strings`]), so
//! settings can come from the process, an env file, or a test's map, and
//! nothing below the binaries' `main` reads the process environment.
//!
//! [`bind`] turns a clap command's `env = "NAME"` attributes into defaults
//! looked up in a [`Strings`]: clap itself never reads the environment,
//! and `--help` still names each variable (`[env: NAME]`). Precedence is
//! flags, then the strings (the environment over the env file, with
//! [`Layered`]), then the built-in defaults.

use std::collections::HashMap;
use std::ffi::OsString;

use clap::{Arg, Command, CommandFactory, FromArgMatches};

/// Named settings, as text.
pub trait Strings {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment. Only the binaries use it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Strings for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
    }
}

/// No settings at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Strings for NoEnv {
    fn get(&self, _: &str) -> Option<String> {
        None
    }
}

impl Strings for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Strings for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

impl<const N: usize> Strings for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        Strings::get(self.as_slice(), name)
    }
}

/// `first`, then `then` for what `first` does not set (the environment
/// over an env file).
#[derive(Debug, Clone, Copy)]
pub struct Layered<A, B>(pub A, pub B);

impl<A: Strings, B: Strings> Strings for Layered<A, B> {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).or_else(|| self.1.get(name))
    }
}

/// `command` with every `env = "NAME"` argument (in subcommands too)
/// defaulting to `strings`' value of `NAME`, and clap's own reading of the
/// environment turned off. Secret values never show in `--help`.
pub fn bind(command: Command, strings: &dyn Strings) -> Command {
    let set = |arg: Arg| {
        let Some(name) = arg.get_env().map(|n| n.to_string_lossy().into_owned()) else {
            return arg;
        };
        let secret = arg.is_hide_env_values_set();
        let help = arg.get_help().map(ToString::to_string);
        let long_help = arg.get_long_help().map(ToString::to_string);
        let mut arg = arg.env(None::<&'static str>);
        if let Some(help) = help {
            arg = arg.help(format!("{help} [env: {name}]"));
        }
        if let Some(long_help) = long_help {
            arg = arg.long_help(format!("{long_help} [env: {name}]"));
        }
        match strings.get(&name) {
            // A default does not satisfy `required` in clap, as its own
            // reading of the environment does.
            Some(value) => arg
                .default_value(value)
                .hide_default_value(secret)
                .required(false),
            None => arg,
        }
    };
    command
        .mut_args(set)
        .mut_subcommands(|sub| bind(sub, strings))
}

/// Parses `args` (the program name first) as `P`, over `strings`.
pub fn parse<P: CommandFactory + FromArgMatches>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    strings: &dyn Strings,
) -> Result<P, clap::Error> {
    let matches = bind(P::command(), strings).try_get_matches_from(args)?;
    P::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Args {
        /// The port
        #[arg(long, env = "T_PORT", default_value = "1")]
        port: String,
        /// A key
        #[arg(long, env = "T_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Required, unless its variable is set
        #[arg(long, env = "T_NEEDED")]
        needed: String,
    }

    #[test]
    fn flags_over_strings_over_defaults() {
        let none: Args = parse(["t", "--needed", "n"], &NoEnv).unwrap();
        assert_eq!((none.port.as_str(), none.key), ("1", None));
        let env: Args =
            parse(["t"], &[("T_PORT", "2"), ("T_KEY", "k"), ("T_NEEDED", "n")]).unwrap();
        assert_eq!((env.port.as_str(), env.key.as_deref()), ("2", Some("k")));
        assert_eq!(env.needed, "n", "a variable satisfies a required flag");
        let flag: Args =
            parse(["t", "--port", "3"], &[("T_PORT", "2"), ("T_NEEDED", "n")]).unwrap();
        assert_eq!(flag.port, "3");
        assert!(parse::<Args>(["t"], &NoEnv).is_err(), "still required");
    }

    #[test]
    fn layers_read_the_first_that_sets_a_name() {
        let layered = Layered([("A", "env")], [("A", "file"), ("B", "file")]);
        assert_eq!(layered.get("A").as_deref(), Some("env"));
        assert_eq!(layered.get("B").as_deref(), Some("file"));
        assert_eq!(layered.get("C"), None);
    }

    #[test]
    fn help_names_the_variables_and_hides_secret_values() {
        let mut command = bind(Args::command(), &[("T_KEY", "s3cret"), ("T_PORT", "9")]);
        let help = command.render_help().to_string();
        assert!(help.contains("[env: T_PORT]"), "{help}");
        assert!(help.contains("[env: T_KEY]"), "{help}");
        assert!(help.contains("[default: 9]"), "{help}");
        assert!(!help.contains("s3cret"), "{help}");
    }
}
