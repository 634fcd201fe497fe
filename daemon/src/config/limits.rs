//! Limits: what one connection, one user and one tool call may have or
//! do ([`tools`]), and the edge's sizes and timers ([`edge`]).

use std::num::NonZeroU32;
use std::time::Duration;

use exai_sessions::ConversationLimits;
use exai_transport::EdgeConfig;

use super::args::DaemonArgs;
use super::problems::{ConfigError, Problems, list, parse};
use crate::quota::UserLimits;
use crate::tools::{ToolLimits, ToolSelection};

/// The tool call limits, and the echo model's delay.
pub(super) fn tools(args: &DaemonArgs, problems: &mut Problems) -> Option<(ToolLimits, Duration)> {
    let seconds = "a whole number of seconds, at least 1";
    let timeout = problems.check(parse(
        "EXAI_TOOL_TIMEOUT_SECS",
        &args.tool_timeout,
        seconds,
        |v: &u64| *v >= 1,
    ));
    let progress = problems.check(parse(
        "EXAI_WS_PROGRESS_INTERVAL_SECS",
        &args.progress_interval,
        seconds,
        |v: &u64| *v >= 1,
    ));
    let in_flight = problems.check(parse(
        "EXAI_SESSION_MAX_INFLIGHT",
        &args.session_max_inflight,
        "a whole number from 1 to 1000",
        |v: &usize| (1..=1000).contains(v),
    ));
    let user_rpm = problems.check(parse(
        "EXAI_USER_RPM",
        &args.user_rpm,
        "a whole number of calls per minute (0: no limit)",
        |_: &u32| true,
    ));
    let user_in_flight = problems.check(parse(
        "EXAI_USER_MAX_INFLIGHT",
        &args.user_max_inflight,
        "a whole number from 1 to 10000",
        |v: &usize| (1..=10_000).contains(v),
    ));
    let provider_calls = problems.check(parse(
        "EXAI_MAX_PROVIDER_CALLS_PER_TOOL",
        &args.max_provider_calls,
        "a whole number from 1 to 100",
        |v: &usize| (1..=100).contains(v),
    ));
    let argument_bytes = problems.check(parse(
        "EXAI_MAX_ARGUMENT_BYTES",
        &args.max_argument_bytes,
        "a whole number of bytes from 1024 to 1073741824",
        |v: &usize| (1024..=1 << 30).contains(v),
    ));
    let turns = problems.check(parse(
        "MAX_CONVERSATION_TURNS",
        &args.max_conversation_turns,
        "a whole number from 2 to 10000",
        |v: &usize| (2..=10_000).contains(v),
    ));
    let user_bytes = problems.check(parse(
        "EXAI_USER_CONVERSATION_BYTES",
        &args.user_conversation_bytes,
        "a whole number of bytes, at least 65536",
        |v: &usize| *v >= 65_536,
    ));
    let memory_bytes = problems.check(parse(
        "EXAI_CONVERSATION_MEMORY_BYTES",
        &args.conversation_memory_bytes,
        "a whole number of bytes, at least 65536",
        |v: &usize| *v >= 65_536,
    ));
    let hours = problems.check(parse(
        "CONVERSATION_TIMEOUT_HOURS",
        &args.conversation_timeout_hours,
        "a number of hours above 0, at most 8760",
        |v: &f64| *v > 0.0 && *v <= 8760.0,
    ));
    let echo_delay = problems.check(parse(
        "EXAI_ECHO_DELAY_MS",
        &args.echo_delay_ms,
        "a whole number of milliseconds",
        |_: &u64| true,
    ));
    let mut selection = ToolSelection::default();
    let enabled = list(&args.enabled_tools);
    let disabled = list(&args.disabled_tools);
    for (variable, names) in [("ENABLED_TOOLS", &enabled), ("DISABLED_TOOLS", &disabled)] {
        for name in names {
            if !crate::tools::tool_names().any(|t| t == name) {
                problems.push(ConfigError::UnknownTool {
                    variable,
                    name: name.clone(),
                    known: crate::tools::tool_names().collect::<Vec<_>>().join(", "),
                });
            }
        }
    }
    selection.enabled = (!enabled.is_empty()).then_some(enabled);
    selection.disabled = disabled;
    let per_user = UserLimits {
        rpm: NonZeroU32::new(user_rpm?),
        max_in_flight: user_in_flight?,
    };
    let mut conversations = ConversationLimits::default();
    conversations.max_turns = turns?;
    conversations.timeout = Duration::from_secs_f64(hours? * 3600.0);
    conversations.max_bytes_per_user = user_bytes?;
    conversations.max_bytes_total = memory_bytes?;
    let limits = ToolLimits {
        timeout: Duration::from_secs(timeout?),
        progress_interval: Duration::from_secs(progress?),
        max_in_flight: in_flight?,
        per_user,
        max_provider_calls: provider_calls?,
        max_argument_bytes: argument_bytes?,
        conversations,
        selection,
        ..ToolLimits::default()
    };
    Some((limits, Duration::from_millis(echo_delay?)))
}

/// The edge's limits, sizes and timers: an [`EdgeConfig`] whose listener
/// fields the caller fills in.
pub(super) fn edge(args: &DaemonArgs, problems: &mut Problems) -> Option<EdgeConfig> {
    let seconds = "a whole number of seconds, at least 1";
    let open_connections = problems.check(parse(
        "EXAI_MAX_CONNECTIONS",
        &args.max_connections,
        "a whole number from 1 to 1000000",
        |v: &usize| (1..=1_000_000).contains(v),
    ));
    let strangers = problems.check(parse(
        "EXAI_MAX_UNAUTHENTICATED_PER_ADDRESS",
        &args.max_unauthenticated_per_address,
        "a whole number from 1 to 1000000",
        |v: &usize| (1..=1_000_000).contains(v),
    ));
    let header_read = problems.check(parse(
        "EXAI_HEADER_READ_TIMEOUT_SECS",
        &args.header_read_timeout,
        "a whole number of seconds from 1 to 3600",
        |v: &u64| (1..=3600).contains(v),
    ));
    let max_connections = problems.check(parse(
        "MCP_MAX_CONNECTIONS_PER_USER",
        &args.max_connections_per_user,
        "a whole number of at least 1",
        |v: &u32| *v >= 1,
    ));
    let timeout = problems.check(parse(
        "MCP_SESSION_TIMEOUT",
        &args.session_timeout,
        seconds,
        |v: &u64| *v >= 1,
    ));
    let node_timeout = problems.check(parse(
        "EXAI_NODE_TIMEOUT",
        &args.node_timeout,
        "a whole number of seconds from 3 to 3600",
        |v: &u64| (3..=3600).contains(v),
    ));
    let max_bytes = problems.check(parse(
        "EXAI_WS_MAX_BYTES",
        &args.ws_max_bytes,
        "a whole number of bytes, at least 1024",
        |v: &usize| *v >= 1024,
    ));
    let max_batch = problems.check(parse(
        "EXAI_MAX_BATCH_MESSAGES",
        &args.max_batch_messages,
        "a whole number from 1 to 10000",
        |v: &usize| (1..=10_000).contains(v),
    ));
    let ping_interval = problems.check(parse(
        "EXAI_WS_PING_INTERVAL",
        &args.ws_ping_interval,
        seconds,
        |v: &u64| *v >= 1,
    ));
    let ping_timeout = problems.check(parse(
        "EXAI_WS_PING_TIMEOUT",
        &args.ws_ping_timeout,
        seconds,
        |v: &u64| *v >= 1,
    ));
    let shutdown_grace = problems.check(parse(
        "EXAI_SHUTDOWN_GRACE_SECS",
        &args.shutdown_grace,
        "a whole number of seconds",
        |_: &u64| true,
    ));
    let mut edge = EdgeConfig::default();
    edge.max_connections = open_connections?;
    edge.header_read_timeout = Duration::from_secs(header_read?);
    edge.max_unauthenticated_per_address = strangers?;
    edge.max_connections_per_user = max_connections?;
    edge.max_message_bytes = max_bytes?;
    edge.max_batch_members = max_batch?;
    edge.ping_interval = Duration::from_secs(ping_interval?);
    edge.ping_timeout = Duration::from_secs(ping_timeout?);
    edge.session_timeout = Duration::from_secs(timeout?);
    edge.node_timeout = Duration::from_secs(node_timeout?);
    edge.shutdown_grace = Duration::from_secs(shutdown_grace?);
    edge.activity_flush = activity_flush(edge.session_timeout);
    Some(edge)
}

/// How often activity is written: every 30 s at most, and often enough that
/// an active session never looks idle for its timeout.
pub fn activity_flush(session_timeout: Duration) -> Duration {
    (session_timeout / 4).min(Duration::from_secs(30))
}
