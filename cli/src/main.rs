//! `exai`: parse arguments, run the command, map failure to an exit code.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = exai_cli::Cli::parse();
    exai_daemon::logging::init(
        std::env::var("RUST_LOG").ok().as_deref(),
        "warn",
        exai_daemon::config::LogFormat::Text,
    );
    match exai_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            eprintln!("exai: {message}");
            ExitCode::FAILURE
        }
    }
}
