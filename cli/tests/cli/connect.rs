//! `exai connect`, the stdio bridge, as a real process: driven by the
//! official MCP Python SDK's stdio client against a real daemon that
//! restarts, and by hand against a scripted WebSocket server for the cases
//! a real daemon does not produce on demand (a socket dropped mid-call).

use std::process::Stdio;
use std::time::Duration;

use exai_tests::{TestDaemon, TestPostgres};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::exai;

/// How long a test waits for any one line from the bridge.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// `exai connect` running as a child process, its stdio piped.
struct Bridge {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: tempfile::NamedTempFile,
}

impl Bridge {
    fn spawn(mut command: std::process::Command) -> Bridge {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap());
        let mut child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Bridge {
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            stderr,
        }
    }

    async fn send(&mut self, message: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next line on standard output, which must be one JSON message.
    async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(LINE_TIMEOUT, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line from the bridge; stderr: {}", self.stderr_text()))
            .unwrap()
            .unwrap_or_else(|| panic!("the bridge ended; stderr: {}", self.stderr_text()));
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON on stdout: {line}"))
    }

    async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let answer = self.recv().await;
        assert_eq!(answer["id"], id, "{answer}");
        answer
    }

    async fn initialize(&mut self) -> Value {
        let answer = self
            .request(
                1,
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "bridge-test", "version": "1"},
                }),
            )
            .await;
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        answer
    }

    async fn whoami(&mut self, id: u64) -> Value {
        let answer = self
            .request(id, "tools/call", json!({"name": "whoami", "arguments": {}}))
            .await;
        answer["result"]["structuredContent"].clone()
    }

    /// Waits for the process to end on its own.
    async fn exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(LINE_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the bridge did not exit; stderr: {}", self.stderr_text()))
            .unwrap()
    }

    /// Waits until standard error contains `text`.
    async fn wait_for_log(&self, text: &str) {
        let seen = async {
            while !self.stderr_text().contains(text) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(LINE_TIMEOUT, seen)
            .await
            .unwrap_or_else(|_| panic!("no '{text}' in: {}", self.stderr_text()));
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap()
    }
}

fn connect(url: &str, token: &str) -> std::process::Command {
    let mut command = exai(&["connect", "--url", url]);
    command.env("EXAI_TOKEN", token);
    command
}

fn port(daemon: &TestDaemon) -> u16 {
    daemon.http.rsplit(':').next().unwrap().parse().unwrap()
}

/// The acceptance test of the issue: an editor's MCP client (the official
/// Python SDK's stdio client) launches `exai connect`; the daemon restarts
/// mid-session; the bridge reconnects, resumes the session, and the next
/// call succeeds without the client noticing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_stdio_client_survives_a_daemon_restart() {
    let email = "jazeel@example.com";
    let (postgres, _db) = TestPostgres::migrated(&[email]).await;
    let store = postgres.store_config(Duration::from_secs(5));
    let daemon = TestDaemon::start_with(|c| c.store = store.clone()).await;
    let port = port(&daemon);
    let token = exai_tests::token(email);

    let mut python = std::process::Command::new(exai_tests::python());
    python
        .arg(exai_tests::python_script("mcp_stdio_bridge.py"))
        .arg(env!("CARGO_BIN_EXE_exai"))
        .arg(&daemon.url);
    // The same clean environment `exai` gets in every test, plus the token.
    for (name, value) in exai(&[]).get_envs() {
        match value {
            Some(value) => python.env(name, value),
            None => python.env_remove(name),
        };
    }
    python.env("EXAI_TOKEN", &token);
    let mut client = Bridge::spawn(python);

    let before = client.recv().await;
    assert_eq!(before["phase"], "before");
    assert_eq!(before["tools"], json!(exai_tests::TOOLS_SORTED), "{before}");
    assert_eq!(before["whoami"]["email"], email);
    assert_eq!(before["chat_is_error"], false);
    assert!(
        before["chat"]
            .as_str()
            .unwrap()
            .contains("hello through the bridge"),
        "{before}"
    );
    let session = before["whoami"]["session_id"].clone();
    assert!(session.is_string(), "{before}");

    daemon.stop().await;
    client.wait_for_log("connection to the daemon lost").await;
    let daemon = TestDaemon::start_with(|c| {
        c.port = port;
        c.store = store;
    })
    .await;
    client.send(json!("go")).await;
    let after = client.recv().await;
    assert_eq!(after["phase"], "after");
    assert_eq!(after["is_error"], false, "{after}");
    assert_eq!(after["whoami"]["email"], email);
    assert_eq!(
        after["whoami"]["session_id"], session,
        "the same session was resumed"
    );
    assert!(client.exit().await.success(), "{}", client.stderr_text());

    // The bridge logged to stderr (the Python client passes it through),
    // and never the token.
    let log = client.stderr_text();
    assert!(log.contains("session resumed"), "{log}");
    assert!(!log.contains(&token));
    daemon.stop().await;
}

/// A daemon restart with the memory store: the session is gone, so the
/// bridge opens a new one and replays the handshake; a request sent while
/// the daemon is down waits and is answered once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_while_the_daemon_is_down_waits_for_it() {
    let daemon = TestDaemon::start().await;
    let port = port(&daemon);
    let mut bridge = Bridge::spawn(connect(&daemon.url, &exai_tests::token("a@example.com")));
    let init = bridge.initialize().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "exai", "{init}");
    let first = bridge.whoami(2).await;
    assert_eq!(first["email"], "a@example.com");

    daemon.stop().await;
    // Once the bridge has seen the close (a request sent before that could
    // be lost with the socket, and answered with an error), requests wait.
    bridge.wait_for_log("connection to the daemon lost").await;
    bridge
        .send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                     "params": {"name": "whoami", "arguments": {}}}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let daemon = TestDaemon::start_with(|c| c.port = port).await;
    let answer = bridge.recv().await;
    assert_eq!(answer["id"], 3, "{answer}");
    let second = &answer["result"]["structuredContent"];
    assert_eq!(second["email"], "a@example.com");
    assert_ne!(second["session_id"], first["session_id"], "a new session");
    assert!(bridge.stderr_text().contains("opening a new one"));

    // End of input ends the bridge cleanly.
    bridge.stdin.take();
    assert!(bridge.exit().await.success());
    daemon.stop().await;
}

/// What the scripted server saw of one connection.
#[derive(Debug, Default)]
struct Seen {
    session_header: Option<String>,
    frames: Vec<Value>,
}

// The callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
/// Accepts one WebSocket connection as a daemon would (subprotocol `mcp`,
/// `Mcp-Session-Id: s-1`), recording the resume header it was offered.
async fn accept(
    listener: &tokio::net::TcpListener,
    seen: &mut Seen,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut header = None;
    let socket =
        tokio_tungstenite::accept_hdr_async(tcp, |request: &Request, mut response: Response| {
            header = request
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let headers = response.headers_mut();
            headers.insert("sec-websocket-protocol", "mcp".parse().unwrap());
            headers.insert("mcp-session-id", "s-1".parse().unwrap());
            Ok(response)
        })
        .await
        .unwrap();
    seen.session_header = header;
    socket
}

async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    seen: &mut Seen,
) -> Value {
    loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                seen.frames.push(value.clone());
                return value;
            }
            _ => continue,
        }
    }
}

async fn answer(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    id: &Value,
    result: Value,
) {
    let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
    socket
        .send(Message::Text(reply.to_string().into()))
        .await
        .unwrap();
}

fn initialize_result() -> Value {
    json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
           "serverInfo": {"name": "scripted", "version": "1"}})
}

/// A socket dropped mid-call: that call is answered with a JSON-RPC error
/// at once; the bridge reconnects asking for its session, replays the
/// client's `initialize` under its own id (its answer never reaches the
/// client), and the next call goes through. A close with 4410 (killed by an
/// administrator) then ends the bridge with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_lost_with_the_socket_is_answered_with_an_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/mcp", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut first = Seen::default();
        let mut socket = accept(&listener, &mut first).await;
        let init = next_json(&mut socket, &mut first).await;
        answer(&mut socket, &init["id"], initialize_result()).await;
        next_json(&mut socket, &mut first).await; // notifications/initialized
        next_json(&mut socket, &mut first).await; // tools/call id 2: dropped
        drop(socket);

        let mut second = Seen::default();
        let mut socket = accept(&listener, &mut second).await;
        let replayed = next_json(&mut socket, &mut second).await;
        answer(&mut socket, &replayed["id"], initialize_result()).await;
        next_json(&mut socket, &mut second).await; // notifications/initialized
        let call = next_json(&mut socket, &mut second).await;
        answer(
            &mut socket,
            &call["id"],
            json!({"content": [], "isError": false}),
        )
        .await;
        socket
            .close(Some(CloseFrame {
                code: CloseCode::from(4410),
                reason: "session killed by an administrator".into(),
            }))
            .await
            .unwrap();
        (first, second)
    });

    let mut bridge = Bridge::spawn(connect(&url, "exai_key_secret"));
    let init = bridge.initialize().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "scripted");
    let lost = bridge
        .request(2, "tools/call", json!({"name": "chat", "arguments": {}}))
        .await;
    assert_eq!(lost["error"]["code"], exai_cli::jsonrpc::CONNECTION_LOST);
    assert!(
        lost["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may or may not have run"),
        "{lost}"
    );
    let next = bridge
        .request(3, "tools/call", json!({"name": "chat", "arguments": {}}))
        .await;
    assert_eq!(next["result"]["isError"], false, "{next}");

    let status = bridge.exit().await;
    assert_eq!(status.code(), Some(1));
    assert!(
        bridge
            .stderr_text()
            .contains("exai: an administrator ended this session"),
        "{}",
        bridge.stderr_text()
    );

    let (first, second) = server.await.unwrap();
    assert_eq!(first.session_header, None);
    assert_eq!(first.frames[0]["id"], 1);
    assert_eq!(second.session_header.as_deref(), Some("s-1"), "resumed");
    let replayed = &second.frames[0];
    assert_eq!(replayed["method"], "initialize");
    assert_eq!(replayed["id"], "exai-connect:initialize");
    assert_eq!(replayed["params"]["clientInfo"]["name"], "bridge-test");
    assert_eq!(second.frames[1]["method"], "notifications/initialized");
    assert_eq!(second.frames[2]["id"], 3);
}

/// Nobody listening: a request waits `--wait`, then gets an error; and a
/// credential the daemon refuses ends the bridge with the daemon's reason,
/// writing nothing to stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_refused() {
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/mcp", unused.local_addr().unwrap());
    drop(unused);
    let mut command = connect(&url, &exai_tests::token("a@example.com"));
    command.args(["--wait", "1s"]);
    let mut bridge = Bridge::spawn(command);
    let refused = bridge.request(1, "tools/list", json!({})).await;
    assert_eq!(refused["error"]["code"], exai_cli::jsonrpc::NOT_CONNECTED);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable for 1s"),
        "{refused}"
    );
    assert!(bridge.stderr_text().contains("cannot reach the daemon"));
    bridge.stdin.take();
    assert!(bridge.exit().await.success());

    let daemon = TestDaemon::start().await;
    let mut bridge = Bridge::spawn(connect(&daemon.url, "not-a-token"));
    let status = bridge.exit().await;
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        bridge.stderr_text().lines().last().unwrap(),
        "exai: the daemon refused the credential (HTTP 401): malformed token"
    );
    assert_eq!(
        bridge.stdout.next_line().await.unwrap(),
        None,
        "nothing on stdout"
    );
    daemon.stop().await;
}

/// A stored sign-in whose access token is short-lived: the bridge refreshes
/// it through Supabase Auth before it expires and hands the new token to the
/// daemon in band, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_sign_in_is_refreshed_in_band() {
    let daemon = TestDaemon::start().await;
    let (auth_url, issued) = super::fake_supabase_auth().await;
    let config = tempfile::tempdir().unwrap();
    let with_project = |mut command: std::process::Command| {
        command
            .env("SUPABASE_URL", &auth_url)
            .env("SUPABASE_ANON_KEY", "test-anon-key")
            .env("EXAI_CONFIG_DIR", config.path());
        command
    };
    let mut login = with_project(exai(&[
        "login",
        "--email",
        "jazeel@example.com",
        "--password-stdin",
    ]));
    login.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = tokio::process::Command::from(login).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"correct horse battery staple\n")
        .await
        .unwrap();
    drop(stdin);
    assert!(child.wait().await.unwrap().success());

    let mut bridge = Bridge::spawn(with_project(exai(&["connect", "--url", &daemon.url])));
    bridge.initialize().await;
    assert_eq!(bridge.whoami(2).await["email"], "jazeel@example.com");
    // Tokens live 30 s here: the bridge refreshes halfway, in band.
    let refreshed = async {
        loop {
            let (_, text) = exai_tests::http_get(&daemon, "/metrics", None).await;
            if text.contains("exai_credential_refreshes_total{outcome=\"ok\"}") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let metrics = tokio::time::timeout(Duration::from_secs(40), refreshed)
        .await
        .unwrap_or_else(|_| panic!("no in-band refresh; stderr: {}", bridge.stderr_text()));
    assert!(
        !metrics.contains("exai_credential_refreshes_total{outcome=\"refused\"}"),
        "{metrics}"
    );
    // The same connection goes on: no reconnection happened.
    assert_eq!(bridge.whoami(3).await["email"], "jazeel@example.com");
    let log = bridge.stderr_text();
    assert!(log.contains("token refreshed"), "{log}");
    assert_eq!(log.matches("connected").count(), 1, "{log}");
    let tokens = issued.lock().unwrap().clone();
    assert!(
        tokens.len() >= 3,
        "login, refresh at connect, refresh in band: {tokens:?}"
    );
    daemon.stop().await;
}

/// The daemon pings every connection; an idle bridge answers (its socket
/// library does), so the daemon does not close it as dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_bridge_answers_the_daemons_pings() {
    let daemon = TestDaemon::start_with(|c| {
        c.edge.ping_interval = Duration::from_millis(100);
        c.edge.ping_timeout = Duration::from_millis(300);
    })
    .await;
    let mut bridge = Bridge::spawn(connect(&daemon.url, &exai_tests::token("a@example.com")));
    bridge.initialize().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bridge.whoami(2).await["email"], "a@example.com");
    let log = bridge.stderr_text();
    assert!(!log.contains("lost"), "{log}");
    daemon.stop().await;
}
