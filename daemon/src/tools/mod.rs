//! The MCP tools a connection sees, served through `rmcp`.
//!
//! One [`ExaiServer`] is built per connection (or HTTP session, or
//! stateless request) and knows its principal and session, so every answer
//! is about the caller and nobody else. What all connections share — the
//! providers, the store, the per-user quota — is one [`Tools`].
//!
//! Around every `tools/call` it keeps the [`ToolLimits`]: at most so many
//! calls in flight per session (more is a JSON-RPC error at once, never a
//! wait), the caller's own per-user limits (calls per minute, calls
//! running; a JSON-RPC error saying when to retry), a deadline (a tool
//! error when it passes), progress notifications while a call runs when the
//! client asked for them (with the model's answer as it streams in), and
//! cancellation (`notifications/cancelled` drops the call, and with it the
//! provider's request).
//!
//! - `catalog`: the tools, their schemas and prompts;
//! - `ask`: calls to models — conversations, usage, the per-call budget,
//!   `consensus`.

mod ask;
mod catalog;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use exai_providers::Providers;
use exai_sessions::{ConversationLimits, Page, SessionStatus, SessionStore, StoreError};
use exai_transport::ConnectionContext;

use crate::jsonrpc;
use crate::metrics::DaemonMetrics;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    Implementation, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::quota::{UserLimits, UserQuota};
use catalog::{Kind, TOOLS, ToolSpec, spec};

pub(crate) use catalog::tool_names;

/// What bounds tool calls, and which tools are offered.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ToolLimits {
    /// Calls one session may have running at once
    /// (`EXAI_SESSION_MAX_INFLIGHT`).
    pub max_in_flight: usize,
    /// Each user's limits over all their sessions (`EXAI_USER_RPM`,
    /// `EXAI_USER_MAX_INFLIGHT`).
    pub per_user: UserLimits,
    /// How long a call may run before it is stopped with a tool error
    /// (`EXAI_TOOL_TIMEOUT_SECS`).
    pub timeout: Duration,
    /// How often a running call reports progress, when the client sent a
    /// progress token (`EXAI_WS_PROGRESS_INTERVAL_SECS`).
    pub progress_interval: Duration,
    /// The most provider calls one tool call may make
    /// (`EXAI_MAX_PROVIDER_CALLS_PER_TOOL`).
    pub max_provider_calls: usize,
    /// The largest one argument of a tool call may be, in bytes
    /// (`EXAI_MAX_ARGUMENT_BYTES`): a larger one is a tool error.
    pub max_argument_bytes: usize,
    /// How long and how far conversations go (`MAX_CONVERSATION_TURNS`,
    /// `CONVERSATION_TIMEOUT_HOURS`).
    pub conversations: ConversationLimits,
    /// Tools per `tools/list` page.
    pub page_size: usize,
    /// Which tools are offered.
    pub selection: ToolSelection,
}

impl Default for ToolLimits {
    fn default() -> Self {
        ToolLimits {
            max_in_flight: 8,
            per_user: UserLimits::default(),
            timeout: Duration::from_secs(300),
            progress_interval: Duration::from_secs(8),
            max_provider_calls: 8,
            max_argument_bytes: 1024 * 1024,
            conversations: ConversationLimits::default(),
            page_size: 50,
            selection: ToolSelection::default(),
        }
    }
}

/// Which tools `tools/list` shows and `tools/call` serves
/// (`ENABLED_TOOLS`, `DISABLED_TOOLS`).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ToolSelection {
    /// Only these, when set.
    pub enabled: Option<Vec<String>>,
    /// Never these.
    pub disabled: Vec<String>,
}

impl ToolSelection {
    fn allows(&self, name: &str) -> bool {
        self.enabled
            .as_ref()
            .is_none_or(|enabled| enabled.iter().any(|e| e == name))
            && !self.disabled.iter().any(|d| d == name)
    }
}

/// What every connection's tools share.
#[derive(Debug)]
pub(crate) struct Tools {
    providers: Arc<Providers>,
    store: Arc<dyn SessionStore>,
    metrics: Arc<DaemonMetrics>,
    limits: ToolLimits,
    quota: Arc<UserQuota>,
    started: Instant,
}

impl Tools {
    /// The tools of a daemon asking `providers`, keeping conversations and
    /// usage in `store`.
    pub(crate) fn new(
        providers: Arc<Providers>,
        store: Arc<dyn SessionStore>,
        metrics: Arc<DaemonMetrics>,
        limits: ToolLimits,
    ) -> Self {
        Tools {
            providers,
            store: store.clone(),
            metrics,
            quota: Arc::new(UserQuota::new(limits.per_user, store.clone())),
            limits,
            started: Instant::now(),
        }
    }

    /// Gives the user budgets' unused slots back to the store until
    /// `shutdown` (a task the daemon runs).
    pub(crate) fn give_back_slots(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.quota.clone().give_back_slots(shutdown)
    }
}

/// The MCP server of one connection.
#[derive(Debug, Clone)]
pub(crate) struct ExaiServer {
    connection: ConnectionContext,
    tools: Arc<Tools>,
    in_flight: Arc<Semaphore>,
    /// The least severe log level the client wants (`logging/setLevel`),
    /// as a [`Level::severity`]; nothing is sent until it asks.
    log_level: Arc<AtomicU8>,
}

/// The error a cancelled call ends with. It never reaches the client:
/// `rmcp` drops responses to cancelled requests, as the protocol asks; it
/// marks the outcome.
const REQUEST_CANCELLED: i32 = -32800;

/// The most sessions the `sessions` and `status` tools read: the newest.
const SESSIONS_LISTED: usize = 100;

/// No `logging/setLevel` yet: no log messages.
const LOGGING_OFF: u8 = u8::MAX;

/// One `tools/call` while it runs.
struct Call<'a> {
    tool: &'static str,
    context: &'a RequestContext<RoleServer>,
    /// Provider calls this call may still make.
    budget: AtomicUsize,
    /// Where a streamed answer goes, as it comes, when the client asked
    /// for progress.
    deltas: Option<mpsc::UnboundedSender<String>>,
}

/// A tool error: a result the model reads, not a protocol failure.
fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// What a tool says when the store fails it.
fn store_trouble(error: &StoreError) -> CallToolResult {
    tracing::warn!(error = %error, "a tool could not use the session store");
    tool_error("the session store is unavailable right now; try again shortly")
}

/// A progress report carrying `text`, the answer's next piece; progress
/// counts the characters streamed so far.
fn streamed_progress(
    token: rmcp::model::ProgressToken,
    received: &mut usize,
    text: String,
) -> ProgressNotificationParam {
    *received += text.chars().count();
    ProgressNotificationParam::new(token, *received as f64).with_message(text)
}

/// Seconds since the epoch, RFC 3339.
fn timestamp(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl ExaiServer {
    /// A server for `connection`, sharing `tools`.
    pub(crate) fn new(connection: ConnectionContext, tools: Arc<Tools>) -> Self {
        ExaiServer {
            connection,
            in_flight: Arc::new(Semaphore::new(tools.limits.max_in_flight)),
            tools,
            log_level: Arc::new(AtomicU8::new(LOGGING_OFF)),
        }
    }

    fn limits(&self) -> &ToolLimits {
        &self.tools.limits
    }

    /// Runs tool `name` within the limits: the session's slot, the user's
    /// quota, the deadline, progress reports, and cancellation.
    async fn run(
        &self,
        tool: &'static ToolSpec,
        arguments: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let name = tool.name;
        let max = self.limits().max_argument_bytes;
        if let Some((argument, size)) = oversized(arguments, max) {
            return Ok(tool_error(format!(
                "argument '{argument}' is {size} bytes; a tool call's arguments may be at most \
                 {max} bytes each (EXAI_MAX_ARGUMENT_BYTES)"
            )));
        }
        let _slot = self.in_flight.try_acquire().map_err(|_| {
            McpError::new(
                ErrorCode(jsonrpc::TOO_MANY_IN_FLIGHT),
                format!(
                    "this session already has {} tool calls running; retry when one finishes",
                    self.limits().max_in_flight
                ),
                None,
            )
        })?;
        let _admitted = self
            .tools
            .quota
            .admit(self.connection.principal.user_id)
            .await
            .map_err(|refusal| {
                let retry_ms = refusal.retry_after().as_millis().max(1) as u64;
                McpError::new(
                    ErrorCode(jsonrpc::USER_LIMIT),
                    refusal.message(),
                    Some(json!({ "retry_after_ms": retry_ms })),
                )
            })?;
        let token = context.meta.get_progress_token();
        let (deltas, mut streamed) = match token {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let call = Call {
            tool: name,
            context,
            budget: AtomicUsize::new(self.limits().max_provider_calls),
            deltas,
        };
        let work = async {
            match tool.kind {
                Kind::Whoami => Ok(self.whoami()),
                Kind::ListModels => Ok(self.list_models()),
                Kind::Version => Ok(CallToolResult::structured(json!({
                    "name": "exai",
                    "version": env!("CARGO_PKG_VERSION"),
                }))),
                Kind::Status => Ok(self.status().await),
                Kind::Sessions => Ok(self.sessions().await),
                Kind::Ask(system) => self.ask(&call, system, arguments).await,
                Kind::Consensus => self.consensus(&call, arguments).await,
            }
        };
        let work = tokio::time::timeout(self.limits().timeout, work);
        tokio::pin!(work);
        let start = tokio::time::Instant::now();
        let interval = self.limits().progress_interval;
        let mut ticks = tokio::time::interval_at(start + interval, interval);
        let mut received = 0usize;
        let mut pieces = Vec::new();
        loop {
            tokio::select! {
                outcome = &mut work => {
                    // What the model streamed in the work's last step is
                    // still queued: it goes out before the answer.
                    if let (Some(queued), Some(token)) = (streamed.as_mut(), token.clone()) {
                        while let Ok(piece) = queued.try_recv() {
                            pieces.push(piece);
                        }
                        if !pieces.is_empty() {
                            let text: String = pieces.drain(..).collect();
                            let progress = streamed_progress(token, &mut received, text);
                            let _ = context.peer.notify_progress(progress).await;
                        }
                    }
                    return match outcome {
                        Ok(result) => result,
                        Err(_) => Ok(tool_error(format!(
                            "{name} did not finish within {} s (EXAI_TOOL_TIMEOUT_SECS) and was stopped",
                            self.limits().timeout.as_secs()
                        ))),
                    };
                },
                () = context.ct.cancelled() => {
                    return Err(McpError::new(
                        ErrorCode(REQUEST_CANCELLED),
                        "request cancelled",
                        None,
                    ));
                }
                // The answer so far, as the model streams it: what came
                // since the last report, in one notification.
                Some(n) = async { Some(streamed.as_mut()?.recv_many(&mut pieces, 64).await) },
                    if streamed.is_some() => {
                    if n == 0 {
                        streamed = None;
                        continue;
                    }
                    let Some(token) = token.clone() else { continue };
                    let text: String = pieces.drain(..).collect();
                    let progress = streamed_progress(token, &mut received, text);
                    let _ = context.peer.notify_progress(progress).await;
                }
                _ = ticks.tick(), if token.is_some() => {
                    let Some(token) = token.clone() else { continue };
                    let elapsed = start.elapsed().as_secs();
                    // Progress must increase: a tick counts one, like a
                    // streamed character.
                    received += 1;
                    let progress = ProgressNotificationParam::new(token, received as f64)
                        .with_message(format!("{name}: still working ({elapsed} s)"));
                    // A client that went away ends the call through `ct`.
                    let _ = context.peer.notify_progress(progress).await;
                }
            }
        }
    }

    /// Sends a log message at `level` if the client asked for that level:
    /// in the request's own `_meta` (`io.modelcontextprotocol/logLevel`,
    /// how 2026-07-28 clients ask, with no session to set it in), else
    /// with `logging/setLevel`.
    async fn log(&self, context: &RequestContext<RoleServer>, level: Level, data: Value) {
        let wanted = match context.meta.log_level() {
            Some(asked) => Level::from_mcp(asked).severity(),
            None => self.log_level.load(Ordering::Relaxed),
        };
        if level.severity() < wanted {
            return;
        }
        let _ = level.send(&context.peer, data).await;
    }

    fn whoami(&self) -> CallToolResult {
        let principal = &self.connection.principal;
        CallToolResult::structured(json!({
            "user_id": principal.user_id,
            "email": principal.email,
            "session_id": self.connection.session_id,
        }))
    }

    fn list_models(&self) -> CallToolResult {
        let providers = &self.tools.providers;
        let listed: Vec<Value> = providers
            .all()
            .iter()
            .map(|p| json!({"provider": p.name(), "models": p.models()}))
            .collect();
        CallToolResult::structured(json!({
            "default": providers.default_model(),
            "providers": listed,
        }))
    }

    /// The caller's own sessions, newest first: the newest
    /// [`SESSIONS_LISTED`], and whether there are more.
    async fn sessions(&self) -> CallToolResult {
        let principal = &self.connection.principal;
        let page = Page::new(SESSIONS_LISTED + 1, 0);
        let mut records = match self.tools.store.list(principal, page).await {
            Ok(records) => records,
            Err(error) => return store_trouble(&error),
        };
        let more = records.len() > SESSIONS_LISTED;
        records.truncate(SESSIONS_LISTED);
        let sessions: Vec<Value> = records
            .iter()
            .map(|s| {
                json!({
                    "session_id": s.session_id,
                    "status": s.status,
                    "this_connection": self.connection.session_id.as_ref() == Some(&s.session_id),
                    "transport": s.metadata.transport,
                    "client": s.metadata.client_name,
                    "client_version": s.metadata.client_version,
                    "node": s.node_id,
                    "created_at": timestamp(s.created_at),
                    "last_active": timestamp(s.last_active),
                    // An HTTP session unused past the grace: the first to
                    // go when the user is at the cap.
                    "idle_since": s.idle_since.map(timestamp),
                })
            })
            .collect();
        CallToolResult::structured(json!({ "sessions": sessions, "more": more }))
    }

    /// The daemon's state, and the caller's: sessions, usage, limits.
    async fn status(&self) -> CallToolResult {
        let principal = &self.connection.principal;
        let store = &self.tools.store;
        let (sessions, usage) = match tokio::try_join!(
            store.list(principal, Page::new(SESSIONS_LISTED, 0)),
            store.usage(principal)
        ) {
            Ok(both) => both,
            Err(error) => return store_trouble(&error),
        };
        let live = sessions
            .iter()
            .filter(|s| s.status == SessionStatus::Connected)
            .count();
        let sum = |f: fn(&exai_sessions::ModelUsage) -> u64| usage.iter().map(f).sum::<u64>();
        let limits = self.limits();
        let per_user = self.tools.quota.limits();
        CallToolResult::structured(json!({
            "daemon": {
                "name": "exai",
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_secs": self.tools.started.elapsed().as_secs(),
                "providers": self.tools.providers.all().iter().map(|p| p.name()).collect::<Vec<_>>(),
                "default_model": self.tools.providers.default_model(),
            },
            "you": {
                "user_id": principal.user_id,
                "email": principal.email,
                "session_id": self.connection.session_id,
                "sessions": { "connected": live, "listed": sessions.len() },
                "usage": {
                    "calls": sum(|u| u.calls),
                    "errors": sum(|u| u.errors),
                    "prompt_tokens": sum(|u| u.prompt_tokens),
                    "completion_tokens": sum(|u| u.completion_tokens),
                    "by_model": usage,
                },
                "limits": {
                    "calls_per_minute": per_user.rpm.map(|r| r.get()),
                    "calls_running": self.tools.quota.running(&principal.user_id),
                    "max_calls_running": per_user.max_in_flight,
                    "max_calls_running_per_session": limits.max_in_flight,
                    "max_provider_calls_per_tool": limits.max_provider_calls,
                    "max_conversation_turns": limits.conversations.max_turns,
                    "conversation_timeout_secs": limits.conversations.timeout.as_secs(),
                    "tool_timeout_secs": limits.timeout.as_secs(),
                },
            },
        }))
    }
}

impl ServerHandler for ExaiServer {
    #[allow(deprecated, reason = "logging/setLevel serves handshake-era clients")]
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("exai", env!("CARGO_PKG_VERSION")))
        .with_instructions("exai: AI tools for signed-in users. Call `whoami` to see who you are.")
    }

    /// Pages of `page_size` tools; the cursor is the index of the next
    /// page's first tool.
    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let offered: Vec<&ToolSpec> = TOOLS
            .iter()
            .filter(|t| self.limits().selection.allows(t.name))
            .collect();
        let start = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .ok()
                .filter(|&i| i > 0 && i < offered.len())
                .ok_or_else(|| McpError::invalid_params("unknown cursor", None))?,
        };
        let end = (start + self.limits().page_size.max(1)).min(offered.len());
        let tools = offered[start..end]
            .iter()
            .map(|spec| {
                let Value::Object(schema) = (spec.input_schema)() else {
                    unreachable!("tool schemas are objects")
                };
                Tool::new(spec.name, spec.description, schema)
            })
            .collect();
        let mut page = ListToolsResult::with_all_items(tools);
        page.next_cursor = (end < offered.len()).then(|| end.to_string());
        Ok(page)
    }

    #[allow(deprecated, reason = "logging/setLevel serves handshake-era clients")]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.log_level
            .store(Level::from_mcp(request.level).severity(), Ordering::Relaxed);
        Ok(())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let arguments = request.arguments.unwrap_or_default();
        let start = Instant::now();
        let offered =
            spec(request.name.as_ref()).filter(|tool| self.limits().selection.allows(tool.name));
        let result = match offered {
            Some(tool) => self.run(tool, &arguments, &context).await,
            None => {
                let other = request.name.as_ref();
                self.tools
                    .metrics
                    .tool_call("unknown", "unknown_tool", start.elapsed());
                return Err(McpError::invalid_params(
                    format!(
                        "unknown tool '{}'",
                        other.chars().take(64).collect::<String>()
                    ),
                    None,
                ));
            }
        };
        let outcome = match &result {
            Ok(r) if r.is_error == Some(true) => "tool_error",
            Ok(_) => "ok",
            Err(e) if e.code.0 == jsonrpc::TOO_MANY_IN_FLIGHT => "refused",
            Err(e) if e.code.0 == jsonrpc::USER_LIMIT => "user_limit",
            Err(e) if e.code.0 == REQUEST_CANCELLED => "cancelled",
            Err(_) => "invalid_params",
        };
        // A connection whose calls keep being refused is read more slowly.
        match outcome {
            "refused" | "user_limit" => self.connection.pace.refused(),
            _ => self.connection.pace.served(),
        }
        self.tools
            .metrics
            .tool_call(&request.name, outcome, start.elapsed());
        Ok(result?.into())
    }
}

/// The first argument larger than `max` bytes (a string's own bytes, any
/// other value's JSON), with its size. Its name is clipped: it came from
/// the client.
fn oversized(arguments: &Map<String, Value>, max: usize) -> Option<(String, usize)> {
    arguments.iter().find_map(|(name, value)| {
        let size = match value {
            Value::String(text) => text.len(),
            other => serde_json::to_vec(other).map_or(usize::MAX, |json| json.len()),
        };
        (size > max).then(|| (name.chars().take(64).collect(), size))
    })
}

/// MCP's log levels, ranked; a local copy of `rmcp`'s, which the 2026-07-28
/// protocol deprecates (logging is then asked for per request).
#[derive(Clone, Copy, Debug)]
enum Level {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

#[allow(deprecated, reason = "logging/setLevel serves handshake-era clients")]
impl Level {
    fn from_mcp(level: rmcp::model::LoggingLevel) -> Level {
        use rmcp::model::LoggingLevel as L;
        match level {
            L::Debug => Level::Debug,
            L::Info => Level::Info,
            L::Notice => Level::Notice,
            L::Warning => Level::Warning,
            L::Error => Level::Error,
            L::Critical => Level::Critical,
            L::Alert => Level::Alert,
            L::Emergency => Level::Emergency,
        }
    }

    fn severity(self) -> u8 {
        self as u8
    }

    async fn send(
        self,
        peer: &rmcp::Peer<RoleServer>,
        data: Value,
    ) -> Result<(), rmcp::ServiceError> {
        use rmcp::model::LoggingLevel as L;
        let level = match self {
            Level::Debug => L::Debug,
            Level::Info => L::Info,
            Level::Notice => L::Notice,
            Level::Warning => L::Warning,
            Level::Error => L::Error,
            Level::Critical => L::Critical,
            Level::Alert => L::Alert,
            Level::Emergency => L::Emergency,
        };
        let message =
            rmcp::model::LoggingMessageNotificationParam::new(level, data).with_logger("exai");
        peer.notify_logging_message(message).await
    }
}
