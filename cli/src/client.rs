//! A small MCP client over WebSocket: `rmcp`'s client on a tokio-tungstenite
//! socket, authenticated with a bearer token.

use std::sync::Arc;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use rmcp::ServiceExt as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientJsonRpcMessage, ServerJsonRpcMessage,
};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::Transport;
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket to the daemon.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not the daemon's `/mcp` URL in a scheme it serves.
    #[error(
        "invalid daemon URL '{0}': give the daemon's /mcp URL, ws://HOST:PORT/mcp \
         (http://, wss:// and https:// work too)"
    )]
    InvalidUrl(String),
    /// The token cannot be sent in a header.
    #[error("the token contains characters that cannot be sent in a header")]
    InvalidToken,
    /// The daemon answered the upgrade with an HTTP error.
    #[error("the daemon refused the connection: HTTP {status}: {reason}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The daemon's one-line reason.
        reason: String,
    },
    /// The connection could not be made.
    #[error("could not connect to {url}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The MCP handshake failed.
    #[error("MCP initialization failed")]
    Initialize(#[source] Box<rmcp::service::ClientInitializeError>),
    /// The call failed at the protocol level.
    #[error("the call failed")]
    Call(#[source] Box<rmcp::ServiceError>),
}

/// An initialized MCP session with the daemon.
pub struct Connection {
    service: RunningService<RoleClient, ()>,
}

/// Connects to `url` with `token`, and runs the MCP handshake.
pub async fn connect(url: &str, token: &str) -> Result<Connection, ClientError> {
    let (socket, _) = open(url, token, None).await?;
    let (sink, stream) = socket.split();
    let transport = WsClientTransport {
        sink: Arc::new(Mutex::new(sink)),
        stream,
    };
    let service = ().serve(transport).await.map_err(|e| ClientError::Initialize(Box::new(e)))?;
    Ok(Connection { service })
}

/// The WebSocket URL for the daemon URL a user gave: the `/mcp` URL in
/// either scheme the daemon serves there (`http://…/mcp` is the same
/// endpoint as `ws://…/mcp`), `/mcp` added when there is no path.
pub fn websocket_url(url: &str) -> Result<String, ClientError> {
    let invalid = || ClientError::InvalidUrl(url.to_owned());
    let (scheme, rest) = url.trim().split_once("://").ok_or_else(invalid)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return Err(invalid()),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(invalid());
    }
    let path = if path.is_empty() { "mcp" } else { path };
    Ok(format!("{scheme}://{authority}/{path}"))
}

/// Opens an authenticated WebSocket to `url` offering the `mcp` subprotocol,
/// resuming `session` when given. Returns the socket and the id of the
/// session the daemon opened or resumed (its `Mcp-Session-Id` header).
pub async fn open(
    url: &str,
    token: &str,
    session: Option<&str>,
) -> Result<(Socket, Option<String>), ClientError> {
    let url = &websocket_url(url)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|_| ClientError::InvalidUrl(url.to_owned()))?;
    let bearer =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::InvalidToken)?;
    let headers = request.headers_mut();
    headers.insert(header::AUTHORIZATION, bearer);
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("mcp"),
    );
    if let Some(session) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert("mcp-session-id", session);
    }
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|error| match error {
            tungstenite::Error::Http(response) => ClientError::Refused {
                status: response.status().as_u16(),
                reason: response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .and_then(|body| body.lines().next().map(str::to_owned))
                    .unwrap_or_default(),
            },
            tungstenite::Error::Url(_) => ClientError::InvalidUrl(url.to_owned()),
            other => ClientError::Connect {
                url: url.to_owned(),
                source: Box::new(other),
            },
        })?;
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((socket, session))
}

impl Connection {
    /// The input schema of `tool`, when the daemon offers it.
    pub async fn input_schema(
        &self,
        tool: &str,
    ) -> Result<Option<Map<String, Value>>, ClientError> {
        let tools = self
            .service
            .list_all_tools()
            .await
            .map_err(|e| ClientError::Call(Box::new(e)))?;
        Ok(tools
            .into_iter()
            .find(|t| t.name == tool)
            .map(|t| (*t.input_schema).clone()))
    }

    /// Calls `tool` with `arguments`.
    pub async fn call_tool(
        &self,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<CallToolResult, ClientError> {
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        self.service
            .call_tool(params)
            .await
            .map_err(|e| ClientError::Call(Box::new(e)))
    }

    /// Ends the session and closes the socket.
    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// The socket as `rmcp` sees it: one JSON-RPC message per text frame; closing
/// the transport sends a WebSocket close frame.
struct WsClientTransport {
    sink: Arc<Mutex<SplitSink<Socket, Message>>>,
    stream: SplitStream<Socket>,
}

impl Transport<RoleClient> for WsClientTransport {
    type Error = tungstenite::Error;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let sink = self.sink.clone();
        async move {
            let text = serde_json::to_string(&item)
                .map_err(|e| tungstenite::Error::Io(std::io::Error::other(e)))?;
            sink.lock().await.send(Message::Text(text.into())).await
        }
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        while let Some(frame) = self.stream.next().await {
            match frame {
                Ok(Message::Text(text)) => match serde_json::from_str(&text) {
                    Ok(message) => return Some(message),
                    Err(error) => tracing::warn!(%error, "ignored a frame that is not MCP"),
                },
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.sink.lock().await.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mcp_url_in_either_scheme() {
        let ok = |given: &str, expected: &str| {
            assert_eq!(websocket_url(given).unwrap(), expected, "{given}");
        };
        ok("ws://127.0.0.1:8079/mcp", "ws://127.0.0.1:8079/mcp");
        ok("http://127.0.0.1:8079/mcp", "ws://127.0.0.1:8079/mcp");
        ok("HTTPS://exai.example.com/mcp", "wss://exai.example.com/mcp");
        ok("wss://exai.example.com", "wss://exai.example.com/mcp");
        ok("http://localhost:8079/", "ws://localhost:8079/mcp");
        for bad in ["127.0.0.1:8079", "ftp://x/mcp", "http:///mcp", ""] {
            let message = websocket_url(bad).unwrap_err().to_string();
            assert!(message.contains("ws://HOST:PORT/mcp"), "{bad}: {message}");
        }
    }
}
