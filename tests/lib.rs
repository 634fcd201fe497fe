//! The integration-test harness: the real daemon started in-process on
//! `127.0.0.1:0`, access tokens minted at run time, and a raw WebSocket
//! client (tokio-tungstenite) that speaks JSON-RPC frame by frame, so tests
//! see exactly what goes over the wire.
//!
//! The tests themselves are in `it/` (one test binary).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exai_auth::{Secret, UserId, mint_hs256};
use exai_daemon::{Config, Daemon};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The secret test daemons verify with (tests mint their tokens with it).
pub const TEST_SECRET: &[u8] = b"exai-integration-tests-secret-0123456789";

/// A daemon running in this process. Dropping it shuts it down.
pub struct TestDaemon {
    daemon: Option<Daemon>,
    /// `ws://127.0.0.1:PORT/mcp`
    pub url: String,
    /// `http://127.0.0.1:PORT`
    pub http: String,
}

impl TestDaemon {
    /// A daemon with the default configuration.
    pub async fn start() -> TestDaemon {
        TestDaemon::start_with(|_| {}).await
    }

    /// A daemon whose configuration `adjust` may change first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestDaemon {
        let mut config = Config::new("127.0.0.1", 0, Secret::new(TEST_SECRET.to_vec()));
        adjust(&mut config);
        let daemon = exai_daemon::start(config).await.expect("daemon starts");
        TestDaemon {
            url: daemon.url(),
            http: format!("http://{}", daemon.local_addr()),
            daemon: Some(daemon),
        }
    }

    /// Shuts the daemon down and waits for it.
    pub async fn stop(mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().await.expect("daemon stops cleanly");
        }
    }

    /// Connects with `token`, expecting the upgrade to succeed.
    pub async fn connect(&self, token: &str) -> Client {
        connect(&self.url, token).await
    }

    /// Connects and runs the MCP handshake.
    pub async fn connect_initialized(&self, token: &str) -> Client {
        let mut client = self.connect(token).await;
        client.initialize().await;
        client
    }

    /// Tries to connect; a refusal comes back as [`Refused`].
    pub async fn try_connect(&self, token: Option<&str>) -> Result<Client, Refused> {
        try_connect(&self.url, token).await
    }
}

/// Connects to the daemon at `url` with `token`, expecting success.
pub async fn connect(url: &str, token: &str) -> Client {
    match try_connect(url, Some(token)).await {
        Ok(client) => client,
        Err(refused) => panic!("connection refused: {refused:?}"),
    }
}

/// Tries to connect to `url`; a refusal comes back as [`Refused`].
pub async fn try_connect(url: &str, token: Option<&str>) -> Result<Client, Refused> {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("mcp"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, response)) => {
            let protocol = response.headers().get(header::SEC_WEBSOCKET_PROTOCOL);
            assert_eq!(protocol.map(|p| p.to_str().unwrap()), Some("mcp"));
            Ok(Client { socket })
        }
        Err(tungstenite::Error::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned(),
        }),
        Err(other) => panic!("connection failed: {other}"),
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // Dropping the daemon cancels it; `stop` is the orderly way.
        self.daemon.take();
    }
}

/// An HTTP refusal of the upgrade.
#[derive(Debug)]
pub struct Refused {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: String,
}

impl Refused {
    /// The `WWW-Authenticate` header, if any.
    pub fn challenge(&self) -> Option<&str> {
        self.headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap())
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid Supabase access token for the user with `email`.
pub fn claims(email: &str) -> Value {
    json!({
        "sub": UserId::from_email(email).to_string(),
        "aud": "authenticated",
        "role": "authenticated",
        "exp": now() + 3600,
        "iat": now(),
        "email": email,
        "session_id": "00000000-0000-4000-8000-000000000001",
    })
}

/// Signs `claims` with the test daemons' secret.
pub fn sign(claims: &Value) -> String {
    mint_hs256(claims, &Secret::new(TEST_SECRET.to_vec())).unwrap()
}

/// A valid token for the user with `email`.
pub fn token(email: &str) -> String {
    sign(&claims(email))
}

/// A raw MCP-over-WebSocket client.
pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Sends one text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.socket
            .send(Message::Text(text.into().into()))
            .await
            .expect("send");
    }

    /// Sends one frame.
    pub async fn send_frame(&mut self, message: Message) {
        self.socket.send(message).await.expect("send");
    }

    /// The next frame that is not a ping or pong.
    pub async fn next_frame(&mut self) -> Option<Message> {
        loop {
            let frame = tokio::time::timeout(FRAME_TIMEOUT, self.socket.next())
                .await
                .expect("a frame within the timeout");
            match frame {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next JSON-RPC message.
    pub async fn recv_json(&mut self) -> Value {
        match self.next_frame().await {
            Some(Message::Text(text)) => serde_json::from_str(&text).expect("JSON frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Waits for the close frame and returns it.
    pub async fn recv_close(&mut self) -> Option<CloseFrame> {
        loop {
            match self.next_frame().await {
                Some(Message::Close(frame)) => return frame,
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// Sends a request and returns the response with the same id, skipping
    /// notifications.
    pub async fn request(&mut self, id: Value, method: &str, params: Value) -> Value {
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_text(request.to_string()).await;
        self.response_to(&id).await
    }

    /// The next message answering `id`.
    pub async fn response_to(&mut self, id: &Value) -> Value {
        loop {
            let message = self.recv_json().await;
            if message.get("id") == Some(id) {
                return message;
            }
        }
    }

    /// The MCP handshake.
    pub async fn initialize(&mut self) {
        let response = self
            .request(
                json!(0),
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "exai-tests", "version": "0"}
                }),
            )
            .await;
        assert!(
            response.get("result").is_some(),
            "initialize failed: {response}"
        );
        self.send_text(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
        )
        .await;
    }

    /// Calls a tool; returns the JSON-RPC response.
    pub async fn call_tool(&mut self, id: u64, name: &str, arguments: Value) -> Value {
        self.request(
            json!(id),
            "tools/call",
            json!({"name": name, "arguments": arguments}),
        )
        .await
    }

    /// `whoami`'s structured answer.
    pub async fn whoami(&mut self, id: u64) -> Value {
        let response = self.call_tool(id, "whoami", json!({})).await;
        response["result"]["structuredContent"].clone()
    }

    /// Closes the socket with a normal close handshake.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        // Drain until the server's close arrives, so the server side is done.
        while let Some(Ok(_)) = self.socket.next().await {}
    }
}
