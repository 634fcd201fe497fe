//! The original EXAI socket protocol (`{"op": "hello"}` …), spoken by the
//! old shims: authenticated in the hello, isolated per connection, one
//! result per request, and never a way around authentication.

use std::time::Duration;

use exai_auth::{NewApiKey, Secret, UserId};
use exai_daemon::AuthMode;
use exai_tests::{FRAME_TIMEOUT, TestDaemon, token};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects as the old shims do: no header, no subprotocol.
async fn shim(daemon: &TestDaemon) -> Socket {
    tokio_tungstenite::connect_async(daemon.url.as_str())
        .await
        .expect("upgraded without a credential, to wait for hello")
        .0
}

async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// The next frame: a JSON object, or the close frame as `Err`.
async fn next(socket: &mut Socket) -> Result<Value, Option<CloseFrame>> {
    loop {
        let frame = tokio::time::timeout(FRAME_TIMEOUT, socket.next())
            .await
            .expect("a frame in time");
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

async fn hello(socket: &mut Socket, fields: Value) -> Value {
    let mut frame = json!({"op": "hello"});
    for (k, v) in fields.as_object().unwrap() {
        frame[k] = v.clone();
    }
    send(socket, frame).await;
    next(socket).await.expect("hello_ack")
}

async fn refused_with_4003(mut socket: Socket) {
    let ack = next(&mut socket).await.expect("hello_ack");
    assert_eq!(ack["op"], "hello_ack");
    assert_eq!(ack["ok"], false);
    let close = next(&mut socket).await.expect_err("then the close");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4003));
}

async fn call(socket: &mut Socket, request_id: &str, name: &str, arguments: Value) -> Value {
    send(
        socket,
        json!({"op": "call_tool", "request_id": request_id, "name": name, "arguments": arguments}),
    )
    .await;
    // Progress first (the model's answer as it streams), then the result.
    loop {
        let frame = next(socket).await.expect("call_tool_res");
        if frame["op"] != "progress" {
            return frame;
        }
        assert_eq!(frame["request_id"], request_id, "{frame}");
    }
}

fn identity(result: &Value) -> Value {
    let text = result["outputs"][0]["text"]
        .as_str()
        .expect("a text output");
    serde_json::from_str(text).expect("whoami's JSON")
}

#[tokio::test]
async fn a_shim_signs_in_with_hello_and_uses_the_tools() {
    let daemon = TestDaemon::start().await;
    let mut socket = shim(&daemon).await;
    let ack = hello(&mut socket, json!({"jwt": token("shim@example.com")})).await;
    assert_eq!(ack["op"], "hello_ack");
    assert_eq!(ack["ok"], true);
    assert!(ack["session_id"].as_str().is_some_and(|s| !s.is_empty()));

    send(&mut socket, json!({"op": "list_tools"})).await;
    let tools = next(&mut socket).await.unwrap();
    assert_eq!(tools["op"], "list_tools_res");
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, exai_tests::TOOLS);
    assert!(tools["tools"][0]["inputSchema"].is_object());

    let who = call(&mut socket, "r1", "whoami", json!({})).await;
    assert_eq!(who["op"], "call_tool_res");
    assert_eq!(who["request_id"], "r1");
    assert!(who["error"].is_null(), "{who}");
    let me = identity(&who);
    assert_eq!(me["email"], "shim@example.com");
    assert_eq!(me["session_id"], ack["session_id"]);

    let chat = call(&mut socket, "r2", "chat", json!({"prompt": "hello"})).await;
    assert!(
        chat["outputs"][0]["text"]
            .as_str()
            .unwrap()
            .contains("hello")
    );
    let bad = call(
        &mut socket,
        "r3",
        "chat",
        json!({"prompt": "x", "model": "gpt-9"}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "TOOL_ERROR");
    let unknown = call(&mut socket, "r4", "nosuch", json!({})).await;
    assert_eq!(unknown["request_id"], "r4");
    assert_eq!(unknown["error"]["code"], "INVALID_PARAMS");

    send(&mut socket, json!({"op": "ping"})).await;
    assert_eq!(next(&mut socket).await.unwrap(), json!({"op": "pong"}));
    send(&mut socket, json!({"op": "dance"})).await;
    assert_eq!(
        next(&mut socket).await.unwrap()["error"]["code"],
        "UNKNOWN_OP"
    );
    socket
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut socket).await.unwrap()["error"]["code"],
        "INVALID_JSON"
    );
    // Still usable after bad frames.
    let again = call(&mut socket, "r5", "whoami", json!({})).await;
    assert_eq!(identity(&again)["email"], "shim@example.com");
    daemon.stop().await;
}

/// The faults of the original daemon, each as a test: its result cache and
/// de-duplication were keyed by tool and arguments alone, so a second user
/// (or a second window) sending the identical request got the first one's
/// answer, or nothing. Here two users send byte-identical calls with the
/// same request id, at the same time, and each gets exactly one answer: its
/// own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_from_two_users_each_get_their_own_single_answer() {
    let daemon = TestDaemon::start().await;
    let mut a = shim(&daemon).await;
    let mut b = shim(&daemon).await;
    hello(&mut a, json!({"jwt": token("jazeel@example.com")})).await;
    hello(&mut b, json!({"token": token("michelle@example.com")})).await;
    let request =
        json!({"op": "call_tool", "request_id": "same", "name": "whoami", "arguments": {}});
    for _ in 0..5 {
        let (sa, sb) = tokio::join!(send(&mut a, request.clone()), send(&mut b, request.clone()));
        let ((), ()) = (sa, sb);
        let ra = next(&mut a).await.unwrap();
        let rb = next(&mut b).await.unwrap();
        assert_eq!(identity(&ra)["email"], "jazeel@example.com");
        assert_eq!(identity(&rb)["email"], "michelle@example.com");
    }
    // Exactly one result each: the next frame on each socket is the pong.
    for socket in [&mut a, &mut b] {
        send(socket, json!({"op": "ping"})).await;
        assert_eq!(next(socket).await.unwrap()["op"], "pong");
    }
    daemon.stop().await;
}

/// A call and its cancel raced: whichever wins, the request id gets exactly
/// one `call_tool_res`.
#[tokio::test]
async fn a_cancelled_call_gets_exactly_one_result() {
    let daemon = TestDaemon::start().await;
    let mut socket = shim(&daemon).await;
    hello(&mut socket, json!({"jwt": token("a@example.com")})).await;
    for i in 0..20 {
        let id = format!("c{i}");
        send(
            &mut socket,
            json!({"op": "call_tool", "request_id": id, "name": "chat", "arguments": {"prompt": "x"}}),
        )
        .await;
        send(&mut socket, json!({"op": "cancel", "request_id": id})).await;
    }
    send(&mut socket, json!({"op": "ping"})).await;
    let mut results = std::collections::HashMap::new();
    loop {
        let frame = next(&mut socket).await.unwrap();
        match frame["op"].as_str().unwrap() {
            "pong" => break,
            "call_tool_res" => {
                *results
                    .entry(frame["request_id"].as_str().unwrap().to_owned())
                    .or_insert(0) += 1;
            }
            // A cancel that arrived after the answer: nothing to cancel.
            "error" => assert_eq!(frame["error"]["code"], "NOT_FOUND", "{frame}"),
            // The answer as it streamed, before its result.
            "progress" => {}
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    assert_eq!(results.len(), 20, "{results:?}");
    assert!(results.values().all(|n| *n == 1), "{results:?}");
    daemon.stop().await;
}

/// Without a valid credential in the hello there is no session and no MCP:
/// a missing or bad token, a revoked API key, a first frame that is not a
/// hello (the old daemon's unauthenticated JSON-RPC path), and silence all
/// end with 4003 (silence after `hello_timeout`).
#[tokio::test]
async fn no_way_in_without_a_valid_hello() {
    let daemon =
        TestDaemon::start_with(|c| c.edge.hello_timeout = Duration::from_millis(300)).await;
    let mut socket = shim(&daemon).await;
    send(&mut socket, json!({"op": "hello"})).await;
    refused_with_4003(socket).await;

    let mut socket = shim(&daemon).await;
    send(&mut socket, json!({"op": "hello", "jwt": "not-a-token"})).await;
    refused_with_4003(socket).await;

    let user = UserId::from_email("keys@example.com");
    let mut revoked = NewApiKey::generate(user, None, None).unwrap();
    revoked.record.revoked_at = Some(std::time::SystemTime::now());
    daemon
        .api_keys()
        .insert_api_key(revoked.record.clone())
        .await
        .unwrap();
    let mut socket = shim(&daemon).await;
    send(&mut socket, json!({"op": "hello", "token": revoked.key})).await;
    refused_with_4003(socket).await;

    let mut socket = shim(&daemon).await;
    send(
        &mut socket,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "sneaky", "version": "1"}}}),
    )
    .await;
    refused_with_4003(socket).await;

    let socket = shim(&daemon).await;
    refused_with_4003(socket).await;

    // An MCP client (it offers the `mcp` subprotocol) without a credential
    // is still refused before any upgrade.
    let refused = daemon.try_connect(None).await.err().expect("refused");
    assert_eq!(refused.status, 401);

    // A live API key works in the hello.
    let live = NewApiKey::generate(user, None, None).unwrap();
    daemon
        .api_keys()
        .insert_api_key(live.record.clone())
        .await
        .unwrap();
    let mut socket = shim(&daemon).await;
    let ack = hello(&mut socket, json!({"token": live.key})).await;
    assert_eq!(ack["ok"], true);
    let who = call(&mut socket, "k", "whoami", json!({})).await;
    assert_eq!(identity(&who)["user_id"], user.to_string());
    daemon.stop().await;
}

/// Single-user mode: the hello's `token` is `EXAI_WS_TOKEN`, as with the
/// original daemon; a wrong one is refused.
#[tokio::test]
async fn single_user_mode_takes_the_shared_token_in_hello() {
    let daemon = TestDaemon::start_with(|config| {
        config.auth = AuthMode::SingleUser {
            token: Some(Secret::new(b"the-shared-token".to_vec())),
        };
    })
    .await;
    let mut socket = shim(&daemon).await;
    let ack = hello(
        &mut socket,
        json!({"token": "the-shared-token", "session_id": "vscode-1"}),
    )
    .await;
    assert_eq!(ack["ok"], true);
    let who = call(&mut socket, "1", "whoami", json!({})).await;
    assert_eq!(
        identity(&who)["user_id"],
        "00000000-0000-0000-0000-000000000001"
    );
    let mut socket = shim(&daemon).await;
    send(
        &mut socket,
        json!({"op": "hello", "token": "the-shared-tokeN"}),
    )
    .await;
    refused_with_4003(socket).await;
    daemon.stop().await;
}

/// A client that authenticated with a header may speak the legacy protocol
/// too; a hello naming another user is refused.
#[tokio::test]
async fn a_header_authenticated_connection_may_say_hello() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon.connect(&token("a@example.com")).await;
    client.send_text(json!({"op": "hello"}).to_string()).await;
    let ack = client.recv_json().await;
    assert_eq!(ack["ok"], true, "{ack}");
    client
        .send_text(json!({"op": "call_tool", "request_id": 7, "name": "whoami"}).to_string())
        .await;
    let who = client.recv_json().await;
    assert_eq!(who["request_id"], 7);
    assert_eq!(identity(&who)["email"], "a@example.com");

    let mut other = daemon.connect(&token("a@example.com")).await;
    other
        .send_text(json!({"op": "hello", "jwt": token("b@example.com")}).to_string())
        .await;
    assert_eq!(other.recv_json().await["ok"], false);
    let close = other.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4003);
    daemon.stop().await;
}

/// A shim that sat idle long enough for its connection's MCP service to be
/// suspended is served as before, and sees nothing of the handshake the
/// resumed service is given.
#[tokio::test]
async fn an_idle_shim_is_served_as_before() {
    let daemon = TestDaemon::start_with(|c| c.edge.service_idle = Duration::from_millis(100)).await;
    let mut socket = shim(&daemon).await;
    let ack = hello(&mut socket, json!({"jwt": token("shim@example.com")})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    for round in 1..=2 {
        exai_tests::wait_for_metric(&daemon, "exai_mcp_services_running 0").await;
        let who = call(&mut socket, &format!("r{round}"), "whoami", json!({})).await;
        assert_eq!(who["op"], "call_tool_res", "{who}");
        assert_eq!(identity(&who)["session_id"], ack["session_id"]);
        send(&mut socket, json!({"op": "ping"})).await;
        assert_eq!(next(&mut socket).await.unwrap(), json!({"op": "pong"}));
    }
    exai_tests::wait_for_metric(&daemon, "exai_mcp_services_started_total 3").await;
    daemon.stop().await;
}

/// Attack 2: strangers open legacy sockets and send a frame of many MiB
/// before any `hello`. The message cap before authentication is
/// `max_hello_bytes` (16 KiB), read and no more: each is refused with
/// `hello too large` and 1009 (which it receives: the daemon reads what
/// it is still sending before closing), nothing else is kept of it, and a
/// real shim is served meanwhile. A shim whose hello authenticated may
/// then send messages up to the usual cap.
#[tokio::test]
async fn a_stranger_cannot_send_more_than_a_hello_before_authenticating() {
    let daemon = TestDaemon::start().await;
    let huge = format!(r#"{{"op": "hello", "jwt": "{}"}}"#, "x".repeat(4 << 20));
    let mut strangers = Vec::new();
    for _ in 0..8 {
        let mut socket = shim(&daemon).await;
        let frame = huge.clone();
        strangers.push(tokio::spawn(async move {
            socket
                .send(Message::Text(frame.into()))
                .await
                .expect("the whole frame is read (and discarded)");
            let ack = next(&mut socket).await.expect("hello_ack");
            let close = next(&mut socket).await.expect_err("then the close");
            (ack, close.map(|f| u16::from(f.code)))
        }));
    }
    let mut real = shim(&daemon).await;
    let ack = hello(&mut real, json!({"jwt": token("shim@example.com")})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    // Past the hello, the usual cap (32 MiB) applies.
    let big = "y".repeat(64 << 10);
    let echoed = call(
        &mut real,
        "big",
        "chat",
        json!({"prompt": big, "model": "echo"}),
    )
    .await;
    assert_eq!(echoed["op"], "call_tool_res", "{echoed}");
    assert!(echoed.to_string().contains(&big[..1024]), "{echoed}");
    for stranger in strangers {
        let (ack, close) = stranger.await.unwrap();
        assert_eq!(ack["ok"], false);
        assert_eq!(ack["error"], "hello too large");
        assert_eq!(close, Some(1009));
    }
    daemon.stop().await;
}
