//! `exai`: parse arguments, run the command, map failure to an exit code.

use std::process::ExitCode;

/// Flags over the environment over the env file over the defaults, as for
/// the daemon.
fn parse_args() -> Result<(exai_cli::Cli, Environment), exai_daemon::config::ConfigError> {
    use exai_daemon::config;
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cwd = std::env::current_dir().unwrap_or_default();
    let env = config::env_file::environment(&raw, &cwd)?;
    let cli = config::parse(raw, &env).unwrap_or_else(|usage| usage.exit());
    Ok((cli, env))
}

/// The process environment over the env file.
type Environment = exai_daemon::config::Layered<
    exai_daemon::config::ProcessEnv,
    std::collections::HashMap<String, String>,
>;

#[tokio::main]
async fn main() -> ExitCode {
    let (cli, env) = match parse_args() {
        Ok(parsed) => parsed,
        Err(problem) => {
            eprintln!("exai: {problem}");
            return ExitCode::FAILURE;
        }
    };
    exai_daemon::init_logging(
        std::env::var("RUST_LOG").ok().as_deref(),
        cli.default_log_level(),
        exai_daemon::config::LogFormat::Text,
    );
    match exai_cli::run(cli, &env).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("exai: {}", exai_cli::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}
