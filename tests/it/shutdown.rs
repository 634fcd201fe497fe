//! Shutdown: calls in flight get the grace period to finish, then open
//! sockets are closed with 1001 (going away).

use std::time::{Duration, Instant};

use exai_tests::{TestDaemon, token};
use serde_json::json;

fn slow_chat(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "chat", "arguments": {"prompt": "finish me"}}})
    .to_string()
}

#[tokio::test]
async fn a_call_in_flight_finishes_within_the_grace_period() {
    let daemon = TestDaemon::start_with(|c| {
        c.echo_delay = Duration::from_millis(800);
        c.edge.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    let mut client = daemon.connect_initialized(&token("a@example.com")).await;
    client.send_text(slow_chat(1)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(daemon.stop());
    let answer = client.response_to(&json!(1)).await;
    assert_eq!(answer["result"]["content"][0]["text"], "[echo] finish me");
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_call_past_the_grace_period_is_cancelled() {
    let daemon = TestDaemon::start_with(|c| {
        c.echo_delay = Duration::from_secs(60);
        c.edge.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    let mut client = daemon.connect_initialized(&token("a@example.com")).await;
    client.send_text(slow_chat(1)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let stopping = tokio::spawn(daemon.stop());
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    assert!(started.elapsed() < Duration::from_secs(5));
    stopping.await.unwrap();
}

#[tokio::test]
async fn stop_closes_every_socket_with_1001() {
    let daemon = TestDaemon::start().await;
    let mut a = daemon.connect_initialized(&token("a@example.com")).await;
    let mut b = daemon.connect(&token("b@example.com")).await;
    let stopping = tokio::spawn(daemon.stop());
    for client in [&mut a, &mut b] {
        let frame = client.recv_close().await.expect("a close frame");
        assert_eq!(u16::from(frame.code), 1001);
        assert_eq!(frame.reason.as_str(), "server shutting down");
    }
    stopping.await.unwrap();
}
