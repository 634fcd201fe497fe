//! Logging set-up shared by `exai-daemon` and `exai`: `tracing` to stderr,
//! filtered by `RUST_LOG`, with two guarantees whatever the filter says.
//!
//! - Credentials stay out: tungstenite logs whole messages (and, as a
//!   client, the handshake request with its `Authorization` header) at
//!   trace level, and a message may carry a token (`auth/refresh`); its
//!   trace events are always dropped. Its debug events (close frames,
//!   handshake outcomes) follow `RUST_LOG` as usual.
//! - Logging never takes a task down: tracing-subscriber reports a failed
//!   write with `eprintln!`, which panics when stderr is gone; that report
//!   is off.

use std::io::IsTerminal as _;

use tracing::{Level, Metadata};

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

/// Targets whose trace events may carry message payloads or request headers.
const PAYLOAD_LOGGERS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// Installs the global subscriber. `rust_log` is the `RUST_LOG` value, if
/// any (the binary reads the environment, not this library); `default` is
/// used when it is unset or invalid. In JSON, each line is one object whose
/// `span` holds the fields of the span it was logged in (a connection's
/// `user_id` and `session_id`).
pub fn init(rust_log: Option<&str>, default: &str, format: LogFormat) {
    let filter = env_filter(rust_log, default).and(filter_fn(allowed));
    let text = || {
        fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
    };
    match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(text().with_filter(filter))
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                text()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(filter),
            )
            .init(),
    }
}

fn env_filter(rust_log: Option<&str>, default: &str) -> EnvFilter {
    rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// The ceiling: never a trace event of a payload logger.
fn allowed(metadata: &Metadata<'_>) -> bool {
    *metadata.level() < Level::TRACE
        || !PAYLOAD_LOGGERS
            .iter()
            .any(|target| metadata.target().starts_with(target))
}

#[cfg(test)]
mod tests {
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;

    use super::*;

    struct Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!()
        }
    }
    static SITE: Site = Site;

    fn metadata(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&SITE)),
            Kind::EVENT,
        )
    }

    #[test]
    fn payload_loggers_never_trace() {
        assert!(!allowed(&metadata("tungstenite::protocol", Level::TRACE)));
        assert!(!allowed(&metadata("tokio_tungstenite", Level::TRACE)));
        assert!(allowed(&metadata("tungstenite::protocol", Level::DEBUG)));
        assert!(allowed(&metadata("exai_transport::ws", Level::TRACE)));
    }
}
