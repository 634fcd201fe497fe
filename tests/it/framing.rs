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
