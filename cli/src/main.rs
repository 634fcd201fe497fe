//! `exai`: parse arguments, run the command, map failure to an exit code.

use std::process::ExitCode;

/// Flags over the environment over the env file over the defaults, as for
/// the daemon.
fn parse_args() -> Result<exai_cli::Cli, exai_daemon::config::ConfigError> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut command = exai_cli::Cli::command();
    if let Some(file) = exai_daemon::env_file::locate(&raw, &cwd)? {
        command =
            exai_daemon::env_file::apply(command, &file, |name| std::env::var_os(name).is_some())?;
    }
    let matches = command.get_matches_from(raw);
    Ok(exai_cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(problem) => {
            eprintln!("exai: {problem}");
            return ExitCode::FAILURE;
        }
    };
    exai_daemon::logging::init(
        std::env::var("RUST_LOG").ok().as_deref(),
        cli.default_log_level(),
        exai_daemon::config::LogFormat::Text,
    );
    match exai_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("exai: {}", exai_cli::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}
