//! `MCP_MAX_CONNECTIONS_PER_USER`: the sixth concurrent connection of a user
//! is refused with 429; other users are unaffected; closing one frees a slot.

use std::time::Duration;

use exai_tests::{TestDaemon, token};

#[tokio::test]
async fn sixth_connection_of_a_user_is_refused_until_one_closes() {
    let daemon = TestDaemon::start_with(|c| c.edge.max_connections_per_user = 5).await;
    let jazeel = token("jazeel@example.com");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(daemon.connect(&jazeel).await);
    }
    let refused = daemon
        .try_connect(Some(&jazeel))
        .await
        .err()
        .expect("sixth is refused");
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.body,
        "connection limit reached: this user already holds 5 live connections, the most \
         allowed (MCP_MAX_CONNECTIONS_PER_USER); the `sessions` tool lists them: close one, or \
         retry once one has closed\n"
    );
    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("10"),
        "a 429 says when to retry"
    );

    let mut michelle = daemon
        .connect_initialized(&token("michelle@example.com"))
        .await;
    assert_eq!(michelle.whoami(1).await["email"], "michelle@example.com");

    held.pop().unwrap().close().await;
    // The server records the close once it has seen the socket end; poll
    // briefly for that instead of sleeping a fixed time.
    let mut admitted = None;
    for _ in 0..100 {
        match daemon.try_connect(Some(&jazeel)).await {
            Ok(client) => {
                admitted = Some(client);
                break;
            }
            Err(refused) => {
                assert_eq!(refused.status, 429);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let mut again = admitted.expect("admitted after one connection closed");
    again.initialize().await;
    assert_eq!(again.whoami(1).await["email"], "jazeel@example.com");
    daemon.stop().await;
}
