//! The MCP tools a connection sees, served through `rmcp`.
//!
//! One [`ExaiServer`] is built per connection (or HTTP session, or
//! stateless request) and knows its principal and session, so every answer
//! is about the caller and nobody else. Around every `tools/call` it keeps
//! the [`ToolLimits`]: at most so many calls in flight per session (more is
//! a JSON-RPC error at once, never a wait), a deadline (a tool error when
//! it passes), progress notifications while a call runs when the client
//! asked for them, and cancellation (`notifications/cancelled` drops the
//! call, and with it the provider's request).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use exai_providers::{ChatMessage, ChatRequest, Providers, Role};
use exai_transport::{ConnectionContext, Metrics, jsonrpc};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    Implementation, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

/// What bounds a session's tool calls, and which tools it is offered.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ToolLimits {
    /// Calls one session may have running at once
    /// (`EXAI_SESSION_MAX_INFLIGHT`).
    pub max_in_flight: usize,
    /// How long a call may run before it is stopped with a tool error
    /// (`EXAI_TOOL_TIMEOUT_SECS`).
    pub timeout: Duration,
    /// How often a running call reports progress, when the client sent a
    /// progress token (`EXAI_WS_PROGRESS_INTERVAL_SECS`).
    pub progress_interval: Duration,
    /// Tools per `tools/list` page.
    pub page_size: usize,
    /// Which tools are offered.
    pub selection: ToolSelection,
}

impl Default for ToolLimits {
    fn default() -> Self {
        ToolLimits {
            max_in_flight: 8,
            timeout: Duration::from_secs(300),
            progress_interval: Duration::from_secs(8),
            page_size: 50,
            selection: ToolSelection::default(),
        }
    }
}

/// A tool's public description and what it does.
struct ToolSpec {
    name: &'static str,
    description: &'static str,
    input_schema: fn() -> Value,
    kind: Kind,
}

/// What a tool does when called.
#[derive(Clone, Copy)]
enum Kind {
    /// The caller's identity and session.
    Whoami,
    /// The models the daemon can ask, and the default.
    ListModels,
    /// The daemon's name and version.
    Version,
    /// Asks a model, with this system prompt (none for `chat`).
    Ask(Option<&'static str>),
}

fn no_arguments() -> Value {
    json!({ "type": "object", "properties": {} })
}

fn prompt_and_model() -> Value {
    json!({
        "type": "object",
        "properties": {
            "prompt": { "type": "string", "description": "The question, code or plan to work on." },
            "model": {
                "type": "string",
                "description": "Model to ask (default: the daemon's DEFAULT_MODEL; see listmodels)."
            }
        },
        "required": ["prompt"]
    })
}

/// The tools, in the order `tools/list` shows them.
const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "chat",
        description: "Ask a model a question and get its answer.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(None),
    },
    ToolSpec {
        name: "thinkdeep",
        description: "Think a hard problem through step by step: assumptions, alternatives, risks, a conclusion.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You are a careful senior engineer thinking a hard problem through. State the \
             assumptions you make, weigh at least two alternatives, name the risks of each, and \
             end with a clear recommendation and what would change your mind. Be concrete; do not pad.",
        )),
    },
    ToolSpec {
        name: "analyze",
        description: "Analyze code or a design: structure, dependencies, strengths, weaknesses.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You analyze code and designs. Describe the structure and the main flows, the \
             dependencies, what is done well, and what is weak or risky, ordered by impact. Quote \
             the parts you refer to. Say what you could not judge from what you were given.",
        )),
    },
    ToolSpec {
        name: "codereview",
        description: "Review code like a demanding colleague: bugs, security, clarity, tests.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You are doing a code review. List real problems first, most severe first: bugs, \
             security issues, data loss, races, missing error handling, then clarity and tests. \
             For each, point at the code, say why it matters and how to fix it. Do not praise \
             what is merely ordinary; say so plainly if the code is fine.",
        )),
    },
    ToolSpec {
        name: "debug",
        description: "Find the cause of a bug from symptoms, logs and code.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You help find the root cause of a bug. From the symptoms, logs and code given, list \
             the likely causes ranked by likelihood, the evidence for each, and the quickest \
             experiment that would confirm or rule it out. Do not guess beyond the evidence.",
        )),
    },
    ToolSpec {
        name: "planner",
        description: "Break a goal into an ordered plan of small, checkable steps.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You turn a goal into a plan: small ordered steps, each with what it produces and how \
             to check it is done, the dependencies between steps, and the open questions to settle \
             first. Keep it as short as the goal allows.",
        )),
    },
    ToolSpec {
        name: "challenge",
        description: "Challenge a statement or decision: the strongest case against it.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You are asked to challenge what follows, not to agree with it. Give the strongest \
             honest case against it: wrong assumptions, overlooked costs, better alternatives. Then \
             say whether it survives the challenge.",
        )),
    },
    ToolSpec {
        name: "listmodels",
        description: "The models this daemon can ask, by provider, and the default one.",
        input_schema: no_arguments,
        kind: Kind::ListModels,
    },
    ToolSpec {
        name: "version",
        description: "This daemon's name and version.",
        input_schema: no_arguments,
        kind: Kind::Version,
    },
    ToolSpec {
        name: "whoami",
        description: "Who this connection acts for: user id, email and MCP session id.",
        input_schema: no_arguments,
        kind: Kind::Whoami,
    },
];

fn spec(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The names of every tool there is.
pub fn tool_names() -> impl Iterator<Item = &'static str> {
    TOOLS.iter().map(|t| t.name)
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

/// The MCP server of one connection.
#[derive(Debug, Clone)]
pub struct ExaiServer {
    connection: ConnectionContext,
    providers: Arc<Providers>,
    metrics: Arc<Metrics>,
    limits: ToolLimits,
    in_flight: Arc<Semaphore>,
    /// The least severe log level the client wants (`logging/setLevel`),
    /// as a [`severity`]; nothing is sent until it asks.
    log_level: Arc<AtomicU8>,
}

/// The error a cancelled call ends with. It never reaches the client:
/// `rmcp` drops responses to cancelled requests, as the protocol asks; it
/// marks the outcome.
const REQUEST_CANCELLED: i32 = -32800;

/// No `logging/setLevel` yet: no log messages.
const LOGGING_OFF: u8 = u8::MAX;

impl ExaiServer {
    /// A server for `connection`, answering `chat` with `providers`.
    pub fn new(
        connection: ConnectionContext,
        providers: Arc<Providers>,
        metrics: Arc<Metrics>,
        limits: ToolLimits,
    ) -> Self {
        ExaiServer {
            connection,
            providers,
            metrics,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            limits,
            log_level: Arc::new(AtomicU8::new(LOGGING_OFF)),
        }
    }

    /// Runs tool `name` within the session's limits: its own slot, the
    /// deadline, progress reports, and cancellation.
    async fn run(
        &self,
        tool: &'static ToolSpec,
        arguments: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let name = tool.name;
        let _slot = self.in_flight.try_acquire().map_err(|_| {
            McpError::new(
                ErrorCode(jsonrpc::TOO_MANY_IN_FLIGHT),
                format!(
                    "this session already has {} tool calls running; retry when one finishes",
                    self.limits.max_in_flight
                ),
                None,
            )
        })?;
        let call = async {
            match tool.kind {
                Kind::Whoami => Ok(self.whoami()),
                Kind::ListModels => Ok(self.list_models()),
                Kind::Version => Ok(CallToolResult::structured(json!({
                    "name": "exai",
                    "version": env!("CARGO_PKG_VERSION"),
                }))),
                Kind::Ask(system) => self.ask(name, system, arguments, context).await,
            }
        };
        let call = tokio::time::timeout(self.limits.timeout, call);
        tokio::pin!(call);
        let token = context.meta.get_progress_token();
        let start = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval_at(
            start + self.limits.progress_interval,
            self.limits.progress_interval,
        );
        loop {
            tokio::select! {
                outcome = &mut call => return match outcome {
                    Ok(result) => result,
                    Err(_) => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                        "{name} did not finish within {} s (EXAI_TOOL_TIMEOUT_SECS) and was stopped",
                        self.limits.timeout.as_secs()
                    ))])),
                },
                () = context.ct.cancelled() => {
                    return Err(McpError::new(
                        ErrorCode(REQUEST_CANCELLED),
                        "request cancelled",
                        None,
                    ));
                }
                _ = ticks.tick(), if token.is_some() => {
                    let Some(token) = token.clone() else { continue };
                    let elapsed = start.elapsed().as_secs();
                    let progress = ProgressNotificationParam::new(token, elapsed as f64)
                        .with_message(format!("{name}: still working ({elapsed} s)"));
                    // A client that went away ends the call through `ct`.
                    let _ = context.peer.notify_progress(progress).await;
                }
            }
        }
    }

    /// Sends a log message at `level` if the client asked for that level.
    async fn log(&self, context: &RequestContext<RoleServer>, level: Level, data: Value) {
        if level.severity() < self.log_level.load(Ordering::Relaxed) {
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
        let providers: Vec<Value> = self
            .providers
            .all()
            .iter()
            .map(|p| json!({"provider": p.name(), "models": p.models()}))
            .collect();
        CallToolResult::structured(json!({
            "default": self.providers.default_model(),
            "providers": providers,
        }))
    }

    /// Asks a model `prompt`, after `system` when the tool has one.
    async fn ask(
        &self,
        tool: &str,
        system: Option<&'static str>,
        arguments: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let prompt = arguments
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                McpError::invalid_params(format!("{tool} needs a string argument 'prompt'"), None)
            })?;
        let model = match arguments.get("model") {
            None => self.providers.default_model(),
            Some(Value::String(model)) => model.as_str(),
            Some(_) => return Err(McpError::invalid_params("'model' must be a string", None)),
        };
        let Some(provider) = self.providers.route(model) else {
            // No provider call: a tool error naming what can be asked.
            let models: Vec<String> = self
                .providers
                .all()
                .iter()
                .flat_map(|p| p.models())
                .collect();
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "unknown model '{}' (available: {})",
                model.chars().take(64).collect::<String>(),
                models.join(", ")
            ))]));
        };
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(ChatMessage::new(Role::System, system));
        }
        messages.push(ChatMessage::new(Role::User, prompt));
        let request = ChatRequest::new(model, messages);
        // A routed model is one of the provider's own: a bounded label.
        let label = model;
        let start = Instant::now();
        let answer = provider.chat(request).await;
        let (outcome, tokens) = match &answer {
            Ok(a) => (
                "ok",
                a.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            ),
            Err(_) => ("error", None),
        };
        let took = start.elapsed();
        self.metrics
            .provider_call(provider.name(), label, outcome, took, tokens);
        self.log(
            context,
            Level::Info,
            json!({"tool": tool, "model": label, "outcome": outcome, "ms": took.as_millis() as u64}),
        )
        .await;
        Ok(match answer {
            Ok(answer) => CallToolResult::success(vec![ContentBlock::text(answer.content)]),
            Err(error) => CallToolResult::error(vec![ContentBlock::text(error.to_string())]),
        })
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
            .filter(|t| self.limits.selection.allows(t.name))
            .collect();
        let start = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .ok()
                .filter(|&i| i > 0 && i < offered.len())
                .ok_or_else(|| McpError::invalid_params("unknown cursor", None))?,
        };
        let end = (start + self.limits.page_size.max(1)).min(offered.len());
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
            spec(request.name.as_ref()).filter(|tool| self.limits.selection.allows(tool.name));
        let result = match offered {
            Some(tool) => self.run(tool, &arguments, &context).await,
            None => {
                let other = request.name.as_ref();
                self.metrics
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
            Err(e) if e.code.0 == REQUEST_CANCELLED => "cancelled",
            Err(_) => "invalid_params",
        };
        self.metrics
            .tool_call(&request.name, outcome, start.elapsed());
        Ok(result?.into())
    }
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
