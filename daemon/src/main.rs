//! `exai-daemon`: parse configuration, set up logging, run until a signal.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use exai_daemon::config::{DaemonArgs, SecretSource};

#[tokio::main]
async fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    exai_daemon::logging::init(std::env::var("RUST_LOG").ok().as_deref(), "info,rmcp=warn");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("exai-daemon: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let (config, secret) = args.into_config().context("invalid configuration")?;
    match secret {
        None => tracing::warn!("single-user mode: every connection is the one local user"),
        Some(SecretSource::Environment) => {
            tracing::info!("verifying HS256 tokens with SUPABASE_JWT_SECRET");
        }
        Some(SecretSource::None) => tracing::info!("verifying tokens with the project's JWKS only"),
        Some(SecretSource::DevelopmentFile { path, created }) => tracing::warn!(
            path = %path.display(),
            created,
            "verifying tokens with a DEVELOPMENT secret; for development only: \
             set SUPABASE_JWT_SECRET or SUPABASE_URL in production"
        ),
    }
    let daemon = exai_daemon::start(config).await?;
    tracing::info!(url = %daemon.url(), "listening");
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
