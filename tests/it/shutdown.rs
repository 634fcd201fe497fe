//! Shutdown: open sockets are closed with 1001 (going away).

use exai_tests::{TestDaemon, token};

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
