//! The MCP tools a connection sees, served through `rmcp`.
//!
//! One [`ExaiServer`] is built per connection and knows that connection's
//! principal and session, so every answer is about the caller and nobody
//! else.

use std::sync::Arc;
use std::time::Instant;

use exai_providers::{ChatMessage, ChatRequest, EchoProvider, Provider, Role};
use exai_transport::{ConnectionContext, Metrics};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};

/// A tool's public description.
struct ToolSpec {
    name: &'static str,
    description: &'static str,
    input_schema: fn() -> Value,
}

const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "chat",
        description: "Ask a model a question and get its answer.",
        input_schema: || {
            json!({
                "type": "object",
                "properties": {
                    "prompt": { "type": "string", "description": "What to ask." },
                    "model": {
                        "type": "string",
                        "description": "Model to ask (default: echo)."
                    }
                },
                "required": ["prompt"]
            })
        },
    },
    ToolSpec {
        name: "whoami",
        description: "Who this connection acts for: user id, email and MCP session id.",
        input_schema: || json!({ "type": "object", "properties": {} }),
    },
];

/// The MCP server of one connection.
#[derive(Debug, Clone)]
pub struct ExaiServer {
    connection: ConnectionContext,
    provider: Arc<dyn Provider>,
    metrics: Arc<Metrics>,
}

impl ExaiServer {
    /// A server for `connection`, answering `chat` with `provider`.
    pub fn new(
        connection: ConnectionContext,
        provider: Arc<dyn Provider>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ExaiServer {
            connection,
            provider,
            metrics,
        }
    }

    fn whoami(&self) -> CallToolResult {
        let principal = &self.connection.principal;
        CallToolResult::structured(json!({
            "user_id": principal.user_id,
            "email": principal.email,
            "session_id": self.connection.session_id,
        }))
    }

    async fn chat(&self, arguments: &Map<String, Value>) -> Result<CallToolResult, McpError> {
        let prompt = arguments
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                McpError::invalid_params("chat needs a string argument 'prompt'", None)
            })?;
        let model = match arguments.get("model") {
            None => EchoProvider::MODEL,
            Some(Value::String(model)) => model.as_str(),
            Some(_) => return Err(McpError::invalid_params("'model' must be a string", None)),
        };
        let request = ChatRequest::new(model, vec![ChatMessage::new(Role::User, prompt)]);
        // Model names come from clients: only the provider's own go into a label.
        let known = self.provider.models().iter().any(|m| m == model);
        let label = if known { model } else { "other" };
        let start = Instant::now();
        let answer = self.provider.chat(request).await;
        let (outcome, tokens) = match &answer {
            Ok(a) => (
                "ok",
                a.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            ),
            Err(_) => ("error", None),
        };
        self.metrics.provider_call(
            self.provider.name(),
            label,
            outcome,
            start.elapsed(),
            tokens,
        );
        Ok(match answer {
            Ok(answer) => CallToolResult::success(vec![ContentBlock::text(answer.content)]),
            Err(error) => CallToolResult::error(vec![ContentBlock::text(error.to_string())]),
        })
    }
}

impl ServerHandler for ExaiServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("exai", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "exai: AI tools for signed-in users. Call `whoami` to see who you are.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = TOOLS
            .iter()
            .map(|spec| {
                let Value::Object(schema) = (spec.input_schema)() else {
                    unreachable!("tool schemas are objects")
                };
                Tool::new(spec.name, spec.description, schema)
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let arguments = request.arguments.unwrap_or_default();
        let start = Instant::now();
        let result = match request.name.as_ref() {
            "whoami" => Ok(self.whoami()),
            "chat" => self.chat(&arguments).await,
            other => {
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
            Err(_) => "invalid_params",
        };
        self.metrics
            .tool_call(&request.name, outcome, start.elapsed());
        Ok(result?.into())
    }
}
