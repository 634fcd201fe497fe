//! The integration-test harness: the real daemon started in-process on
//! `127.0.0.1:0`, access tokens minted at run time, and a raw WebSocket
//! client (tokio-tungstenite) that speaks JSON-RPC frame by frame, so tests
//! see exactly what goes over the wire.
//!
//! The tests themselves are in `it/` (one test binary).

mod model_api;
mod pg;
mod postgrest;
mod process;

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

pub use model_api::ModelApi;
pub use pg::TestPostgres;
pub use postgrest::TestPostgrest;
pub use process::DaemonProcess;

impl TestPostgres {
    /// A fresh server with exai's migrations applied and these users in
    /// `auth.users` (as Supabase Auth would have them), and a plain
    /// connection to it.
    pub async fn migrated(users: &[&str]) -> (TestPostgres, tokio_postgres::Client) {
        let server = TestPostgres::start();
        exai_sessions::PostgresStore::new(&server.url, exai_sessions::PostgresConfig::default())
            .expect("a pool")
            .migrate()
            .await
            .expect("migrations apply");
        let db = pg_client(&server.url).await;
        for email in users {
            db.execute(
                "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
                &[&UserId::from_email(email).as_uuid(), email],
            )
            .await
            .expect("a user row");
        }
        (server, db)
    }

    /// The `postgres` store configuration for this server, with `timeout`
    /// on every call.
    pub fn store_config(&self, timeout: Duration) -> exai_daemon::StoreConfig {
        let mut config = exai_sessions::PostgresConfig::default();
        config.timeout = timeout;
        exai_daemon::StoreConfig::Postgres {
            url: Secret::new(self.url.as_bytes().to_vec()),
            config,
        }
    }
}

/// A plain connection to `url`, for checking and arranging rows directly.
pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

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
    /// `http://127.0.0.1:PORT` of the admin listener, when there is one.
    pub admin: Option<String>,
}

impl TestDaemon {
    /// A daemon with the default configuration.
    pub async fn start() -> TestDaemon {
        TestDaemon::start_with(|_| {}).await
    }

    /// A daemon whose configuration `adjust` may change first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestDaemon {
        TestDaemon::try_start_with(adjust)
            .await
            .expect("daemon starts")
    }

    /// Like [`TestDaemon::start_with`], returning a start-up failure.
    pub async fn try_start_with(
        adjust: impl FnOnce(&mut Config),
    ) -> Result<TestDaemon, exai_daemon::StartError> {
        let mut config = Config::new("127.0.0.1", 0, Secret::new(TEST_SECRET.to_vec()));
        // Tests make calls far faster than people do: the per-user limits
        // are off unless a test sets them (tests/it/fairness.rs does).
        config.tools.per_user.rpm = None;
        config.tools.per_user.max_in_flight = 10_000;
        // Idle WebSocket services are suspended far sooner than in
        // production, so every test that pauses also resumes them.
        config.edge.service_idle = Duration::from_millis(200);
        adjust(&mut config);
        let daemon = exai_daemon::start(config).await?;
        Ok(TestDaemon {
            url: daemon.url(),
            http: format!("http://{}", daemon.local_addr()),
            admin: daemon.admin_addr().map(|a| format!("http://{a}")),
            daemon: Some(daemon),
        })
    }

    /// Where the daemon keeps API keys.
    pub fn api_keys(&self) -> std::sync::Arc<dyn exai_auth::ApiKeyStore> {
        self.daemon.as_ref().expect("running").api_keys()
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
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    try_connect_with(url, &headers).await
}

/// Tries to connect to `url` sending `headers` on the upgrade request.
pub async fn try_connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name = header::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).unwrap());
    }
    if !request
        .headers()
        .contains_key(header::SEC_WEBSOCKET_PROTOCOL)
    {
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mcp"),
        );
    }
    // Nagle off, as the daemon has it: small frames go at once.
    match tokio_tungstenite::connect_async_with_config(request, None, true).await {
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

/// Runs `tests/tools/jwt_tool.py` (PyJWT, an independent JWT
/// implementation) with `request`; see that file for the format.
///
/// The Python comes from `EXAI_TEST_PYTHON`, which `cargo xtask test` sets
/// after installing the pinned packages; without it, the virtual environment
/// xtask makes under `target/` is used if it is there.
pub fn jwt_tool(request: &Value) -> Value {
    let answer = python_tool("jwt_tool.py", request.to_string().as_bytes());
    serde_json::from_slice(&answer).expect("jwt_tool.py answers JSON")
}

/// Prometheus text parsed by the official Python client's parser, as
/// `(name, labels, value)` samples. Panics if it does not parse.
pub fn parse_metrics(text: &str) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    let answer = python_tool("parse_metrics.py", text.as_bytes());
    let samples: Vec<Value> =
        serde_json::from_slice(&answer).expect("parse_metrics.py answers JSON");
    samples
        .into_iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                serde_json::from_value(s["labels"].clone()).unwrap(),
                s["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The Python with the test tools and the MCP Python SDK 1.x
/// (`EXAI_TEST_PYTHON`, or the virtual environment `cargo xtask test`
/// makes).
pub fn python() -> std::path::PathBuf {
    tool_python("EXAI_TEST_PYTHON", "venv")
}

/// The Python with the MCP Python SDK 2.x (`EXAI_TEST_PYTHON_MCP2`, or the
/// virtual environment `cargo xtask test` makes): 1.x and 2.x cannot share
/// one environment.
pub fn python_mcp2() -> std::path::PathBuf {
    tool_python("EXAI_TEST_PYTHON_MCP2", "venv-mcp2")
}

/// The Python with the MCP Python SDK 1.12 (`EXAI_TEST_PYTHON_MCP112`, or
/// the virtual environment `cargo xtask test` makes), an older client
/// still in use.
pub fn python_mcp112() -> std::path::PathBuf {
    tool_python("EXAI_TEST_PYTHON_MCP112", "venv-mcp112")
}

fn tool_python(variable: &str, venv: &str) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os(variable)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(format!("../target/test-tools/{venv}/bin/python")));
    assert!(
        python.exists(),
        "the Python test tools are not installed ({}): run `cargo xtask test`, which installs them",
        python.display()
    );
    python
}

/// Runs `tests/tools/<script>` with the MCP Python SDK 2.x, `args` and
/// `env`, for at most a minute; it must succeed, and print one JSON
/// document, which is returned.
pub async fn run_python_mcp2(script: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let output = tokio::process::Command::new(python_mcp2())
        .arg(python_script(script))
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the client finished in time")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} {args:?}: {stderr}");
    assert!(!stderr.contains("failed"), "{script} {args:?}: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stderr}"))
}

/// `tests/tools/<script>`.
pub fn python_script(script: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(script)
}

fn python_tool(script: &str, input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(python())
        .arg(python_script(script))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{script} failed");
    output.stdout
}

/// Asymmetric keys made by PyJWT/cryptography, usable from Rust too.
pub struct TestKeys {
    keys: Value,
}

impl TestKeys {
    /// Fresh keys: `(kid, alg)` pairs, alg one of ES256, RS256, EdDSA.
    pub fn generate(specs: &[(&str, &str)]) -> TestKeys {
        TestKeys::generate_signing(specs, &[]).0
    }

    /// Fresh keys, and `tokens` (`(kid, claims)`) signed with them by PyJWT.
    pub fn generate_signing(
        specs: &[(&str, &str)],
        tokens: &[(&str, Value)],
    ) -> (TestKeys, Vec<String>) {
        let keys: Vec<Value> = specs
            .iter()
            .map(|(kid, alg)| json!({"kid": kid, "alg": alg}))
            .collect();
        let tokens: Vec<Value> = tokens
            .iter()
            .map(|(kid, claims)| json!({"kid": kid, "claims": claims}))
            .collect();
        let answer = jwt_tool(&json!({ "keys": keys, "tokens": tokens }));
        let tokens = answer["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        (
            TestKeys {
                keys: answer["keys"].clone(),
            },
            tokens,
        )
    }

    /// A JWKS document publishing the public halves of `kids`.
    pub fn jwks(&self, kids: &[&str]) -> Value {
        let keys: Vec<Value> = kids
            .iter()
            .map(|kid| self.keys[kid]["jwk"].clone())
            .collect();
        json!({ "keys": keys })
    }

    /// The private key `kid` as PKCS#8 PEM.
    pub fn private_pem(&self, kid: &str) -> &str {
        self.keys[kid]["private_pem"].as_str().unwrap()
    }

    /// `claims` signed with key `kid` by this project's JWT library
    /// (jsonwebtoken), with `kid` in the header.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        self.sign_as(kid, kid, claims)
    }

    /// `claims` signed with key `key`, but naming `header_kid` in the header.
    pub fn sign_as(&self, key: &str, header_kid: &str, claims: &Value) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let kid = key;
        let pem = self.private_pem(kid).as_bytes();
        let (alg, key) = match self.keys[kid]["alg"].as_str().unwrap() {
            "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(pem)),
            "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem)),
            "EdDSA" => (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem)),
            other => panic!("unknown alg {other}"),
        };
        let mut header = Header::new(alg);
        header.kid = Some(header_kid.to_owned());
        jsonwebtoken::encode(&header, claims, &key.unwrap()).unwrap()
    }
}

/// A local JWKS endpoint whose document and health the test controls, and
/// which counts the fetches it serves.
pub struct JwksServer {
    /// The JWKS URL.
    pub url: String,
    state: std::sync::Arc<JwksState>,
    _task: tokio::task::JoinHandle<()>,
}

struct JwksState {
    document: std::sync::Mutex<Value>,
    failing: std::sync::atomic::AtomicBool,
    fetches: std::sync::atomic::AtomicUsize,
}

impl JwksServer {
    /// Serves `document` at `http://127.0.0.1:PORT/jwks.json`.
    pub async fn start(document: Value) -> JwksServer {
        use std::sync::atomic::Ordering;
        let state = std::sync::Arc::new(JwksState {
            document: std::sync::Mutex::new(document),
            failing: false.into(),
            fetches: 0.into(),
        });
        let served = state.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let state = served.clone();
                async move {
                    state.fetches.fetch_add(1, Ordering::SeqCst);
                    if state.failing.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    Ok(axum::Json(state.document.lock().unwrap().clone()))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer {
            url,
            state,
            _task: task,
        }
    }

    /// Publishes a new document.
    pub fn set(&self, document: Value) {
        *self.state.document.lock().unwrap() = document;
    }

    /// Makes every fetch fail with 500 (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.state
            .failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fetches served so far.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A minimal HTTP/1.1 GET over a raw socket (no HTTP client dependency).
pub async fn http_get(daemon: &TestDaemon, path: &str, token: Option<&str>) -> (u16, String) {
    http_get_at(&daemon.http, path, token).await
}

/// Waits (up to 5 s) until the daemon's `/metrics` has the line `line`;
/// panics with the metrics it had otherwise.
pub async fn wait_for_metric(daemon: &TestDaemon, line: &str) {
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(daemon, "/metrics", None).await.1;
        if metrics.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected {line} in /metrics:\n{metrics}");
}

/// The same, against the server at `base` (`http://HOST:PORT`).
pub async fn http_get_at(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .iter()
        .map(|auth| ("authorization", auth.as_str()))
        .collect();
    raw_get(base, path, &headers).await
}

/// A `GET` of `path` on `daemon` with extra `headers`: status and body.
pub async fn http_get_with(
    daemon: &TestDaemon,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    raw_get(&daemon.http, path, headers).await
}

async fn raw_get(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// The daemon's tools, in the order `tools/list` shows them.
pub const TOOLS: [&str; 13] = [
    "chat",
    "thinkdeep",
    "analyze",
    "codereview",
    "debug",
    "planner",
    "challenge",
    "consensus",
    "listmodels",
    "version",
    "status",
    "whoami",
    "sessions",
];

/// The same, sorted (as the SDK test clients report them).
pub const TOOLS_SORTED: [&str; 13] = [
    "analyze",
    "challenge",
    "chat",
    "codereview",
    "consensus",
    "debug",
    "listmodels",
    "planner",
    "sessions",
    "status",
    "thinkdeep",
    "version",
    "whoami",
];

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

/// The project's `service_role` key, as Supabase issues it: a JWT with role
/// `service_role`, signed with the project's secret.
pub fn service_role_key() -> Secret {
    let claims =
        json!({"iss": "supabase", "role": "service_role", "iat": now(), "exp": now() + 3600});
    Secret::new(sign(&claims).into_bytes())
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
        self.initialize_as("2025-06-18").await;
    }

    /// The MCP handshake asking for protocol `version`, which the daemon
    /// must accept.
    pub async fn initialize_as(&mut self, version: &str) {
        let response = self
            .request(
                json!(0),
                "initialize",
                json!({
                    "protocolVersion": version,
                    "capabilities": {},
                    "clientInfo": {"name": "exai-tests", "version": "0"}
                }),
            )
            .await;
        assert_eq!(
            response["result"]["protocolVersion"], version,
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

/// One user flooding a daemon: `connections` WebSockets, each sending
/// `chat` calls eight at a time, the next eight as soon as the last are
/// answered, until stopped. Counts what was sent and what was refused for
/// a per-user limit (-32005).
pub struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    /// Starts flooding `daemon` as `email`.
    pub async fn start(daemon: &TestDaemon, email: &str, connections: usize) -> Flood {
        use std::sync::atomic::Ordering;
        let flood = Flood {
            stop: Default::default(),
            sent: Default::default(),
            refused: Default::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut client = daemon.connect_initialized(&token(email)).await;
            let (stop, sent, refused) = (
                flood.stop.clone(),
                flood.sent.clone(),
                flood.refused.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut id = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    for n in id..id + 8 {
                        let call = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                          "params": {"name": "chat", "arguments": {"prompt": "a"}}});
                        client.send_text(call.to_string()).await;
                    }
                    // Answers come in any order.
                    for _ in 0..8 {
                        let answer = client.recv_json().await;
                        if answer["error"]["code"] == -32005 {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sent.fetch_add(8, Ordering::Relaxed);
                    id += 8;
                }
            }));
        }
        Flood { tasks, ..flood }
    }

    /// Calls sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops, once every connection's last calls are answered; returns the
    /// calls sent and how many were refused.
    pub async fn stop(self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a flooding connection");
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}
