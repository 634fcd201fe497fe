//! `exai-daemon`: parse configuration, set up logging, run until a signal.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use exai_daemon::config::{self, DaemonArgs, SecretSource};

/// sysexits' EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    // Flags over the environment over the env file over the defaults.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cwd = std::env::current_dir().unwrap_or_default();
    let env = match config::env_file::environment(&raw, &cwd) {
        Ok(env) => env,
        Err(problem) => {
            eprintln!("exai-daemon: invalid configuration:\n  {problem}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let args: DaemonArgs = config::parse(raw, &env).unwrap_or_else(|usage| usage.exit());
    let check_only = args.check_only();
    // Every problem at once, before anything binds (logging is not set up
    // yet: its format is part of what is being checked).
    let config = match args.into_config(&env) {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("exai-daemon: invalid configuration:");
            for problem in &problems.0 {
                eprintln!("  {problem}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check_only {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "configuration ok");
        return ExitCode::SUCCESS;
    }
    exai_daemon::init_logging(
        std::env::var("RUST_LOG").ok().as_deref(),
        "info,rmcp=warn",
        config.log_format,
    );
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("exai-daemon: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: exai_daemon::Config) -> anyhow::Result<()> {
    match &config.secret {
        None => tracing::warn!("single-user mode: every connection is the one local user"),
        Some(SecretSource::Environment) => {
            tracing::info!("verifying HS256 tokens with SUPABASE_JWT_SECRET");
        }
        Some(SecretSource::None) => tracing::info!("verifying tokens with the project's JWKS only"),
        // `start` says so when it loads it.
        Some(SecretSource::DevelopmentFile(_)) => {}
    }
    let daemon = exai_daemon::start(config).await?;
    tracing::info!(
        url = %daemon.url(),
        http = %format!("http://{}/mcp", daemon.local_addr()),
        "listening"
    );
    if let Some(admin) = daemon.admin_addr() {
        tracing::info!(address = %admin, "serving /metrics, /healthz and /readyz");
    }
    shutdown_signal().await?;
    tracing::info!("shutting down");
    daemon.stop().await.context("shutting down")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
