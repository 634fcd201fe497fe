//! Attacks on the daemon's resources, reproduced against the real daemon
//! (issue "hold under abuse"; each test names its attack), and what holds:
//! batches are bounded and their ids checked, a page from another origin
//! cannot open a WebSocket, `auth/refresh` in any form never reaches the
//! MCP server, and an absurd claim cannot take a connection down.
//! The HTTP side of the same attacks is in `streamable.rs`.

use std::time::Duration;

use exai_tests::{TestDaemon, claims, sign, token, try_connect_with};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

fn pings(ids: impl IntoIterator<Item = u64>) -> Value {
    Value::Array(
        ids.into_iter()
            .map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "ping"}))
            .collect(),
    )
}

/// Attacks 3, 4 and 6: a batch of many members is refused whole (-32600,
/// naming the limit) before any member becomes a request; a batch whose
/// members repeat an id is answered, the repeat with -32600, and the
/// connection's service is then free to be suspended.
#[tokio::test]
async fn batches_are_bounded_and_repeated_ids_are_answered() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon.connect(&token("batcher@example.com")).await;
    client.initialize_as("2025-03-26").await;

    client.send_text(pings(1..=65).to_string()).await;
    let refused = client.recv_json().await;
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("at most 64"), "{message}");
    client.send_text(pings(1..=64).to_string()).await;
    let all = client.recv_json().await;
    assert_eq!(all.as_array().map(Vec::len), Some(64), "64 are served");

    client
        .send_text(
            json!([
                {"jsonrpc": "2.0", "id": 7, "method": "ping"},
                {"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
                {"jsonrpc": "2.0", "id": 8, "method": "ping"}
            ])
            .to_string(),
        )
        .await;
    let answer = client.recv_json().await;
    let answers = answer.as_array().unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(answers.len(), 3, "{answer}");
    let sevens: Vec<&Value> = answers.iter().filter(|a| a["id"] == 7).collect();
    assert_eq!(sevens.len(), 2, "{answer}");
    assert!(sevens.iter().any(|a| a.get("result").is_some()), "{answer}");
    assert!(
        sevens.iter().any(|a| a["error"]["code"] == -32600),
        "{answer}"
    );
    // Nothing is left open: the service idles as usual (the harness
    // suspends after 200 ms).
    exai_tests::wait_for_metric(&daemon, "exai_mcp_services_running 0").await;
    assert_eq!(client.whoami(9).await["email"], "batcher@example.com");
    daemon.stop().await;
}

/// Attack 7: a web page on another origin opens a WebSocket to the daemon
/// (browsers let any page do that, loopback or not). Refused with 403
/// before authentication, on the MCP upgrade and on the legacy one; the
/// daemon's own origin on loopback, and a listed one, still work.
#[tokio::test]
async fn websockets_from_other_origins_are_refused() {
    let daemon = TestDaemon::start_with(|c| {
        c.auth = exai_daemon::AuthMode::SingleUser { token: None };
        c.secret = None;
        c.edge.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let port = daemon.http.rsplit(':').next().unwrap().to_owned();
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://localhost:{port}"),
    ] {
        let refused = try_connect_with(&daemon.url, &[("origin", origin)])
            .await
            .err()
            .unwrap_or_else(|| panic!("{origin} was let in"));
        assert_eq!(refused.status, 403, "{origin}: {}", refused.body);
    }
    // The legacy upgrade (no subprotocol, no credential) too.
    let mut legacy = daemon.url.as_str().into_client_request().unwrap();
    legacy
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(legacy).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!(
            "the legacy upgrade from another origin: {:?}",
            other.map(|_| ())
        ),
    }
    // Same origin on loopback, a listed origin, and no origin at all.
    for origin in [
        Some(format!("http://127.0.0.1:{port}")),
        Some("https://app.example".to_owned()),
        None,
    ] {
        let headers: Vec<(&str, &str)> = origin.iter().map(|o| ("origin", o.as_str())).collect();
        let mut client = try_connect_with(&daemon.url, &headers)
            .await
            .unwrap_or_else(|r| panic!("{origin:?} refused: {} {}", r.status, r.body));
        client.initialize().await;
        assert!(client.whoami(1).await["user_id"].is_string());
        client.close().await;
    }
    daemon.stop().await;
}

/// Attack 9: `auth/refresh` sent as a notification carries a token and
/// has no answer; it is dropped at the edge (so `rmcp`, which logs
/// notifications with their parameters, never sees it), and the
/// connection goes on. The log side is `daemon/tests/process.rs`.
#[tokio::test]
async fn a_refresh_notification_is_dropped_at_the_edge() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon.connect_initialized(&token("n@example.com")).await;
    client
        .send_text(
            json!({"jsonrpc": "2.0", "method": "auth/refresh",
                   "params": {"token": token("n@example.com")}})
            .to_string(),
        )
        .await;
    assert_eq!(client.whoami(1).await["email"], "n@example.com");
    daemon.stop().await;
}

/// Attack 10: a token whose `exp` is absurdly far (1e300) used to panic
/// the connection's task (an `Instant` overflow). It is clamped: the
/// connection is served, and so is a refresh with such a token.
#[tokio::test]
async fn an_absurd_expiry_cannot_take_a_connection_down() {
    let daemon = TestDaemon::start().await;
    let mut absurd = claims("far@example.com");
    absurd["exp"] = json!(1e300);
    let far = sign(&absurd);
    let mut client = daemon.connect_initialized(&far).await;
    let me = client.whoami(1).await;
    assert_eq!(me["email"], "far@example.com", "{me}");
    let refreshed = client
        .request(json!(2), "auth/refresh", json!({"token": far}))
        .await;
    assert_eq!(
        refreshed["result"]["expires_at"],
        exai_auth::LATEST_EXPIRY,
        "{refreshed}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(client.whoami(3).await["email"], "far@example.com");
    client.close().await;
    daemon.stop().await;
}

/// Attack 1: no credential, many TCP connections that send half a request
/// line and stop. Each is closed after the header-read timeout, at most
/// `max_connections` are held at once (the rest wait in the backlog), and
/// a real client is served within a couple of timeouts meanwhile. An idle
/// keep-alive connection is closed the same way.
#[tokio::test]
async fn half_open_requests_are_closed_and_bounded() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let daemon = TestDaemon::start_with(|c| {
        c.edge.max_connections = 32;
        c.edge.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = daemon.http.trim_start_matches("http://").to_owned();
    let mut attackers = Vec::new();
    for _ in 0..64 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /mcp HT").await.unwrap();
        attackers.push(tcp);
    }
    let started = std::time::Instant::now();
    let mut client = tokio::time::timeout(
        Duration::from_secs(10),
        daemon.connect_initialized(&token("real@example.com")),
    )
    .await
    .expect("a real client is served while the half-open ones time out");
    assert_eq!(client.whoami(1).await["email"], "real@example.com");
    eprintln!("served after {:?}", started.elapsed());
    // Every half-open socket is closed by the daemon.
    for (i, mut tcp) in attackers.into_iter().enumerate() {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("half-open socket {i} still open"));
        // EOF, a reset, or hyper's 408 before the close.
        if let Ok(n) = read {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{i}: {text}");
        }
    }
    let (_, metrics) = exai_tests::http_get(&daemon, "/metrics", None).await;
    let open: f64 = exai_tests::parse_metrics(&metrics)
        .iter()
        .find(|(name, _, _)| name == "exai_tcp_connections_open")
        .map(|(_, _, v)| *v)
        .expect("the gauge");
    assert!(open <= 32.0, "{open} TCP connections open");

    // Idle keep-alive: a request answered, then nothing.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection stays open");
    client.close().await;
    daemon.stop().await;
}

/// Attack 5: one user sends `chat` prompts of many MiB to the `echo`
/// model, which the memory store used to keep (question and answer) for
/// hours, bounded by count only. A prompt over `EXAI_MAX_ARGUMENT_BYTES`
/// is a tool error naming the limit (no model asked, nothing stored); what
/// a user's conversations hold is bounded in bytes, the oldest dropped
/// first; an exchange larger than that bound alone is answered, not saved,
/// and the answer says so.
#[tokio::test]
async fn what_one_user_can_make_the_store_hold_is_bounded_in_bytes() {
    let daemon = TestDaemon::start_with(|c| {
        c.tools.max_argument_bytes = 100_000;
        c.tools.conversations.max_bytes_per_user = 500_000;
    })
    .await;
    let mut client = daemon.connect_initialized(&token("big@example.com")).await;
    let huge = "x".repeat(8 << 20);
    let refused = client.call_tool(1, "chat", json!({"prompt": huge})).await;
    assert_eq!(refused["result"]["isError"], true, "{refused:.300}");
    let text = refused["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("'prompt'") && text.contains("EXAI_MAX_ARGUMENT_BYTES"),
        "{text}"
    );

    // Exchanges of ~180 KB (the echo model repeats the prompt): the third
    // passes 500 KB, and the first conversation is dropped for it.
    let prompt = "y".repeat(90_000);
    let mut ids = Vec::new();
    for id in 2..5 {
        let answer = client
            .call_tool(id, "chat", json!({"prompt": prompt}))
            .await;
        let continuation = answer["result"]["structuredContent"]["continuation_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer:.300}"))
            .to_owned();
        ids.push(continuation);
    }
    let first = client
        .call_tool(
            5,
            "chat",
            json!({"prompt": "more", "continuation_id": ids[0]}),
        )
        .await;
    let text = first["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("unknown continuation_id"), "{text:.300}");
    let last = client
        .call_tool(
            6,
            "chat",
            json!({"prompt": "more", "continuation_id": ids[2]}),
        )
        .await;
    assert_eq!(last["result"]["isError"], false, "{last:.300}");

    // An exchange over the whole bound on its own: answered, not saved.
    let daemon2 = TestDaemon::start_with(|c| {
        c.tools.max_argument_bytes = 100_000;
        c.tools.conversations.max_bytes_per_user = 100_000;
    })
    .await;
    let mut other = daemon2.connect_initialized(&token("big@example.com")).await;
    let answer = other.call_tool(7, "chat", json!({"prompt": prompt})).await;
    assert_eq!(answer["result"]["isError"], false, "{answer:.300}");
    let note = answer["result"]["content"][1]["text"].as_str().unwrap();
    assert!(
        note.contains("not saved") && note.contains("EXAI_USER_CONVERSATION_BYTES"),
        "{note}"
    );
    assert!(answer["result"]["structuredContent"]["continuation_id"].is_null());
    daemon2.stop().await;
    daemon.stop().await;
}

/// Attack 1, from one address: connections that never authenticate count
/// against that address's share (`EXAI_MAX_UNAUTHENTICATED_PER_ADDRESS`);
/// past it, its next connection is closed at once, while authenticated
/// connections do not count and another address is served as usual.
#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_strangers() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let daemon = TestDaemon::start_with(|c| {
        c.edge.max_unauthenticated_per_address = 4;
        c.edge.header_read_timeout = Duration::from_secs(30);
        c.edge.shutdown_grace = Duration::from_millis(500);
    })
    .await;
    let addr: std::net::SocketAddr = daemon.http.trim_start_matches("http://").parse().unwrap();
    // Authenticated connections of the same address do not count.
    let mut known = Vec::new();
    for user in ["k1", "k2", "k3", "k4", "k5"] {
        known.push(
            daemon
                .connect_initialized(&token(&format!("{user}@example.com")))
                .await,
        );
    }
    let mut strangers = Vec::new();
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /mcp HT").await.unwrap();
        strangers.push(tcp);
    }
    // The fifth stranger of 127.0.0.1 is closed without a word.
    let mut fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The held ones are still open (the header timeout is 30 s).
    let still = tokio::time::timeout(Duration::from_millis(300), strangers[0].read(&mut buf)).await;
    assert!(still.is_err(), "a stranger within the share stays");
    // Another address is served.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(addr).await.unwrap();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "other", "version": "1"}}})
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n\r\n{body}",
        token("other@example.com"),
        body.len()
    );
    other.write_all(request.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), other.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The known connections were never disturbed.
    for (i, client) in known.iter_mut().enumerate() {
        assert!(client.whoami(10 + i as u64).await["user_id"].is_string());
    }
    // A stop is not held up by strangers still sending their headers.
    let started = std::time::Instant::now();
    daemon.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
}

/// Attack 11: a client sending a message over `EXAI_WS_MAX_BYTES` must
/// receive the 1009 close frame. The daemon stops reading at the frame's
/// header while the client is still sending; closing the socket then
/// would reset it, and the reset discards the close frame. It reads and
/// discards what the client still sends (bounded) first. Several times,
/// since a reset loses the frame only most of the time.
#[tokio::test]
async fn a_client_sending_too_much_receives_its_1009() {
    let daemon = TestDaemon::start_with(|c| c.edge.max_message_bytes = 64 << 10).await;
    let too_big = "x".repeat(4 << 20);
    for attempt in 0..5 {
        let mut client = daemon.connect_initialized(&token("big@example.com")).await;
        client.send_text(too_big.clone()).await;
        let frame = client
            .recv_close()
            .await
            .unwrap_or_else(|| panic!("attempt {attempt}: no close frame"));
        assert_eq!(u16::from(frame.code), 1009, "attempt {attempt}");
        assert_eq!(frame.reason.as_str(), "message too big");
    }
    daemon.stop().await;
}
