//! Bad frames get a clear JSON-RPC error and the connection lives on.

use exai_tests::{TestDaemon, token};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn garbage_gets_a_parse_error_and_the_socket_stays_usable() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon.connect_initialized(&token("a@example.com")).await;
    for garbage in ["garbage", "{\"jsonrpc\":", &"[".repeat(100_000)] {
        client.send_text(garbage).await;
        let error = client.recv_json().await;
        assert_eq!(error["error"]["code"], -32700, "{garbage:.20}");
    }
    client.send_text("{\"id\":1,\"method\":\"ping\"}").await;
    assert_eq!(client.recv_json().await["error"]["code"], -32600);
    let unknown = client.request(json!(3), "no/such", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32601);
    let bad_params = client.request(json!(4), "tools/call", json!(7)).await;
    assert_eq!(bad_params["error"]["code"], -32602);
    let after = client.whoami(2).await;
    assert_eq!(after["email"], "a@example.com");
    client.close().await;
    daemon.stop().await;
}

#[tokio::test]
async fn garbage_before_initialize_does_not_end_the_session() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon.connect(&token("a@example.com")).await;
    client.send_text("garbage").await;
    assert_eq!(client.recv_json().await["error"]["code"], -32700);
    client
        .send_text(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .await;
    client.initialize().await;
    assert_eq!(client.whoami(1).await["email"], "a@example.com");
    client.close().await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_binary_frame_closes_with_1003() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon.connect_initialized(&token("a@example.com")).await;
    client
        .send_frame(Message::Binary(vec![1, 2, 3].into()))
        .await;
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1003);
    daemon.stop().await;
}

/// A message over `EXAI_WS_MAX_BYTES` closes with 1009; a text frame that
/// is not UTF-8 with 1007. Other connections are untouched.
#[tokio::test]
async fn oversized_and_invalid_utf8_frames_close_with_1009_and_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let daemon = TestDaemon::start_with(|c| c.edge.max_message_bytes = 4096).await;
    let mut bystander = daemon.connect_initialized(&token("b@example.com")).await;

    let mut client = daemon.connect_initialized(&token("a@example.com")).await;
    client.send_text("x".repeat(5000)).await;
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);

    let mut client = daemon.connect_initialized(&token("a@example.com")).await;
    let invalid = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    client.send_frame(Message::Frame(invalid)).await;
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1007);

    assert_eq!(bystander.whoami(1).await["email"], "b@example.com");
    bystander.close().await;
    daemon.stop().await;
}

/// The server pings every `EXAI_WS_PING_INTERVAL`; a client that answers
/// (tungstenite does, whenever it reads) stays; one that stops reading is
/// closed with 1011 once a ping has gone unanswered for
/// `EXAI_WS_PING_TIMEOUT`.
#[tokio::test]
async fn an_unanswered_ping_closes_with_1011() {
    use std::time::Duration;
    let daemon = TestDaemon::start_with(|c| {
        c.edge.ping_interval = Duration::from_millis(100);
        c.edge.ping_timeout = Duration::from_millis(300);
    })
    .await;
    let mut lively = daemon.connect_initialized(&token("a@example.com")).await;
    let mut silent = daemon.connect_initialized(&token("b@example.com")).await;
    for id in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(lively.whoami(id).await["email"], "a@example.com");
    }
    let frame = silent.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1011);
    assert_eq!(frame.reason.as_str(), "ping timeout");
    lively.close().await;
    daemon.stop().await;
}

/// Batches exist in protocol version 2025-03-26 only: one array in, one
/// array of answers out (invalid members answered in it, notifications
/// not); under other versions a batch is refused as one invalid request.
#[tokio::test]
async fn batches_are_served_under_2025_03_26_only() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon.connect(&token("batch@example.com")).await;
    client.initialize_as("2025-03-26").await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "whoami", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/progress",
         "params": {"progressToken": "x", "progress": 1}},
        {"jsonrpc": "1.0", "id": 3, "method": "ping"},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
         "params": {"name": "chat", "arguments": {"prompt": "batched"}}},
        {"jsonrpc": "2.0", "id": 5, "method": "initialize", "params": {}}
    ]);
    client.send_text(batch.to_string()).await;
    let answer = client.recv_json().await;
    let answers = answer
        .as_array()
        .unwrap_or_else(|| panic!("an array: {answer}"));
    let by_id = |id: u64| {
        answers
            .iter()
            .find(|a| a["id"] == json!(id))
            .unwrap_or_else(|| panic!("no answer to {id}: {answer}"))
    };
    assert_eq!(answers.len(), 5, "{answer}");
    assert_eq!(
        by_id(1)["result"]["structuredContent"]["email"],
        "batch@example.com"
    );
    assert!(by_id(2).get("result").is_some());
    assert_eq!(by_id(3)["error"]["code"], -32600);
    assert_eq!(by_id(4)["result"]["content"][0]["text"], "[echo] batched");
    assert_eq!(by_id(5)["error"]["code"], -32600);

    client.send_text("[]").await;
    assert_eq!(client.recv_json().await["error"]["code"], -32600);
    // Only invalid members: answered at once, still as an array.
    client.send_text(r#"[{"jsonrpc": "1.0", "id": 9}]"#).await;
    let answer = client.recv_json().await;
    assert_eq!(answer[0]["error"]["code"], -32600, "{answer}");
    // The connection goes on as usual.
    assert_eq!(client.whoami(10).await["email"], "batch@example.com");

    let mut later = daemon.connect(&token("batch@example.com")).await;
    later.initialize_as("2025-06-18").await;
    later
        .send_text(json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]).to_string())
        .await;
    let refused = later.recv_json().await;
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2025-03-26")
    );
    daemon.stop().await;
}
