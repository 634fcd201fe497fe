//! Connections outlive tokens: expiry closes with 4401 unless the client
//! refreshes in band; the resource describes itself (RFC 9728); and the
//! single-user mode of the original daemon.

use std::time::Duration;

use exai_auth::Secret;
use exai_daemon::AuthMode;
use exai_tests::{TestDaemon, claims, now, sign, token};
use serde_json::json;

fn short_lived(email: &str, seconds: u64) -> String {
    let mut claims = claims(email);
    claims["exp"] = json!(now() + seconds);
    sign(&claims)
}

#[tokio::test]
async fn an_expired_token_closes_its_connection_with_4401() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon
        .connect_initialized(&short_lived("a@example.com", 2))
        .await;
    assert_eq!(client.whoami(1).await["email"], "a@example.com");
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4401);
    assert_eq!(frame.reason.as_str(), "token expired");
    daemon.stop().await;
}

#[tokio::test]
async fn auth_refresh_extends_the_connection_for_the_same_user_only() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon
        .connect_initialized(&short_lived("a@example.com", 2))
        .await;

    let refused = client
        .request(json!("r0"), "auth/refresh", json!({"token": "not-a-token"}))
        .await;
    assert_eq!(refused["error"]["code"], -32001);
    assert_eq!(
        refused["error"]["message"],
        "credential refused: malformed token"
    );
    let missing = client.request(json!("r1"), "auth/refresh", json!({})).await;
    assert_eq!(missing["error"]["code"], -32602);

    let fresh = token("a@example.com");
    let refreshed = client
        .request(json!("r2"), "auth/refresh", json!({"token": fresh}))
        .await;
    assert!(refreshed["result"]["expires_at"].as_u64().unwrap() > now() + 60);
    // Past the first token's expiry, the connection still serves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(client.whoami(2).await["email"], "a@example.com");

    let other = client
        .request(
            json!("r3"),
            "auth/refresh",
            json!({"token": token("b@example.com")}),
        )
        .await;
    assert_eq!(
        other["error"]["message"],
        "credential refused: token is for another user"
    );
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4403);
    daemon.stop().await;
}

#[tokio::test]
async fn the_resource_describes_itself() {
    let daemon = TestDaemon::start_with(|config| {
        config.edge.authorization_servers = vec!["https://project.supabase.co/auth/v1".into()];
    })
    .await;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let (status, body) = exai_tests::http_get(&daemon, path, None).await;
        assert_eq!(status, 200);
        let metadata: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(metadata["resource"], format!("{}/mcp", daemon.http));
        assert_eq!(
            metadata["authorization_servers"],
            json!(["https://project.supabase.co/auth/v1"])
        );
    }
    daemon.stop().await;
}

#[tokio::test]
async fn single_user_mode_with_a_shared_token() {
    let daemon = TestDaemon::start_with(|config| {
        config.auth = AuthMode::SingleUser {
            token: Some(Secret::new(b"the-shared-token".to_vec())),
        };
    })
    .await;
    let mut client = daemon.connect_initialized("the-shared-token").await;
    let who = client.whoami(1).await;
    assert_eq!(who["user_id"], "00000000-0000-0000-0000-000000000001");
    client.close().await;
    let wrong = daemon
        .try_connect(Some("the-shared-tokeN"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (wrong.status, wrong.body.trim_end()),
        (401, "invalid token")
    );
    let none = daemon.try_connect(None).await.err().unwrap();
    assert_eq!(
        (none.status, none.body.trim_end()),
        (401, "missing bearer token")
    );
    daemon.stop().await;
}

#[tokio::test]
async fn single_user_mode_without_a_token_admits_local_clients() {
    let daemon = TestDaemon::start_with(|config| {
        config.auth = AuthMode::SingleUser { token: None };
    })
    .await;
    let Ok(mut client) = daemon.try_connect(None).await else {
        panic!("refused without a token in single-user mode without one");
    };
    client.initialize().await;
    assert_eq!(
        client.whoami(1).await["user_id"],
        "00000000-0000-0000-0000-000000000001"
    );
    daemon.stop().await;
}
