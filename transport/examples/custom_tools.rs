//! `custom_tools`: your own MCP server behind exai's edge.
//!
//! ```text
//! SUPABASE_JWT_SECRET=… cargo run -p exai-transport --example custom_tools [ADDR]
//! ```
//!
//! Serves one tool, `add` (the sum of two integers), from a plain `rmcp`
//! [`ServerHandler`] of this file, on `/mcp` over WebSocket and Streamable
//! HTTP, with everything exai's edge does around it: every connection and
//! request authenticated (Supabase access tokens signed with
//! `SUPABASE_JWT_SECRET`, HS256), a session per connection in the memory
//! store within the per-user limit, Origin and Host checks, idle expiry.
//! A request without a valid token is answered 401 with a challenge.
//!
//! `ADDR` defaults to `127.0.0.1:0`; the first line on stdout is
//! `listening on ADDR`, for scripts.

#![allow(clippy::print_stdout, reason = "an example says where it listens")]

use std::sync::Arc;

use exai_auth::{Authenticator, JwtConfig, JwtVerifier, Secret};
use exai_sessions::MemoryStore;
use exai_transport::{ConnectionContext, Edge, EdgeConfig, Registry};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The handler: one per connection, built by the edge once the
/// connection's user is known. It must be `Clone`: an idle WebSocket is
/// served by a clone when it wakes.
#[derive(Clone)]
struct Calculator {
    connection: ConnectionContext,
}

impl ServerHandler for Calculator {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("calculator", "1.0.0"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": { "type": "integer" },
                "b": { "type": "integer" }
            },
            "required": ["a", "b"]
        });
        let serde_json::Value::Object(schema) = schema else {
            unreachable!("an object")
        };
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "add",
            "The sum of two integers",
            schema,
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != "add" {
            return Err(ErrorData::invalid_params("unknown tool", None));
        }
        let arguments = request.arguments.unwrap_or_default();
        let number = |name: &str| arguments.get(name).and_then(serde_json::Value::as_i64);
        let (Some(a), Some(b)) = (number("a"), number("b")) else {
            return Err(ErrorData::invalid_params(
                "add needs integers a and b",
                None,
            ));
        };
        let Some(sum) = a.checked_add(b) else {
            return Ok(CallToolResult::error(vec![ContentBlock::text("the sum overflows")]).into());
        };
        tracing::info!(user = %self.connection.principal.user_id, a, b, "add");
        Ok(CallToolResult::success(vec![ContentBlock::text(sum.to_string())]).into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let secret = std::env::var("SUPABASE_JWT_SECRET")
        .map_err(|_| "set SUPABASE_JWT_SECRET to the secret tokens are signed with")?;

    // Who may connect: Supabase access tokens signed with the secret.
    let jwt = JwtConfig::new().with_hs256(Secret::new(secret.into_bytes()));
    let auth = Arc::new(Authenticator::multi_user(
        JwtVerifier::start(jwt).await?,
        None,
    ));
    // Where sessions are kept: in memory (the postgres and supabase stores
    // work the same way).
    let store = Arc::new(MemoryStore::new());
    // The edge: a handler per connection, built from what the edge knows.
    let factory = |connection: &ConnectionContext| Calculator {
        connection: connection.clone(),
    };
    let mut config = EdgeConfig::default();
    // The loopback names only, against DNS rebinding (as the daemon does
    // on a loopback listener).
    config.allowed_hosts = Some(vec!["127.0.0.1".into(), "localhost".into(), "::1".into()]);
    // The edge's metrics; a service would register its own beside them.
    let mut metrics = Registry::default();
    let edge =
        Edge::new(auth, store, factory, config, &mut metrics).expose_metrics(Arc::new(metrics));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    exai_transport::serve(listener, None, edge, shutdown).await?;
    Ok(())
}
