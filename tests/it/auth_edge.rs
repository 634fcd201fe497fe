//! Authentication at the edge: nothing is upgraded without a valid token.

use exai_tests::{TestDaemon, claims, http_get, http_get_with, now, sign, token};
use serde_json::json;

async fn check(daemon: &TestDaemon, token: Option<&str>, status: u16, challenge: &str) {
    let refused = match daemon.try_connect(token).await {
        Ok(_) => panic!("upgraded with token {token:?}"),
        Err(refused) => refused,
    };
    assert_eq!(refused.status, status, "{refused:?}");
    let metadata = format!(
        ", resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
        daemon.http
    );
    assert_eq!(
        refused.challenge(),
        Some(format!("{challenge}{metadata}").as_str()),
        "{refused:?}"
    );
    let reason = challenge
        .split("error_description=\"")
        .nth(1)
        .unwrap()
        .trim_end_matches('"');
    assert_eq!(refused.body.trim_end(), reason);
    if let Some(token) = token {
        assert!(!refused.body.contains(token));
    }
}

fn invalid(description: &str) -> String {
    format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
}

#[tokio::test]
async fn bad_credentials_get_401_before_any_upgrade() {
    let daemon = TestDaemon::start().await;
    let mut expired = claims("a@example.com");
    expired["exp"] = json!(now() - 3600);
    let mut anon = claims("a@example.com");
    anon["role"] = json!("anon");
    let mut service = claims("a@example.com");
    service["role"] = json!("service_role");
    let good = token("a@example.com");
    let mut parts: Vec<&str> = good.split('.').collect();
    let bad_signature = "c2lnbmF0dXJlLWZyb20tc29tZS1vdGhlci1rZXk";
    parts[2] = bad_signature;
    let tampered = parts.join(".");

    check(&daemon, None, 401, &invalid("missing bearer token")).await;
    check(&daemon, Some(&tampered), 401, &invalid("invalid signature")).await;
    check(
        &daemon,
        Some(&sign(&expired)),
        401,
        &invalid("token expired"),
    )
    .await;
    check(
        &daemon,
        Some(&sign(&anon)),
        401,
        &invalid("anonymous tokens are not accepted"),
    )
    .await;
    check(&daemon, Some("not.a.jwt"), 401, &invalid("malformed token")).await;
    check(
        &daemon,
        Some(&sign(&service)),
        403,
        "Bearer error=\"insufficient_scope\", error_description=\"role 'service_role' is not allowed\"",
    )
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_plain_get_is_authenticated_too_and_health_is_open() {
    let daemon = TestDaemon::start().await;
    let (status, _) = http_get(&daemon, "/mcp", None).await;
    assert_eq!(status, 401);
    // Without `Upgrade`, a GET is Streamable HTTP's, for an SSE stream.
    let (status, _) = http_get(&daemon, "/mcp", Some(&token("a@example.com"))).await;
    assert_eq!(status, 406, "a GET that does not accept text/event-stream");
    // `Upgrade: websocket` without the rest of a handshake: told what it needs.
    let (status, _) = http_get_with(
        &daemon,
        "/mcp",
        &[
            (
                "authorization",
                &format!("Bearer {}", token("a@example.com")),
            ),
            ("upgrade", "websocket"),
        ],
    )
    .await;
    assert_eq!(status, 426, "a broken upgrade is told to upgrade properly");
    let (status, body) = http_get(&daemon, "/healthz", None).await;
    assert_eq!((status, body.trim()), (200, "ok"));
    daemon.stop().await;
}

/// Browsers cannot set headers on a WebSocket: the token may come as an
/// `mcp.auth.<token>` entry of `Sec-WebSocket-Protocol` (SEP-1288's form);
/// only `mcp` is echoed. A bad one is refused like a bad header, and the
/// query string is never read.
#[tokio::test]
async fn a_browser_sends_its_token_as_a_subprotocol() {
    let daemon = TestDaemon::start().await;
    let good = token("browser@example.com");
    let offered = format!("mcp, mcp.auth.{good}");
    let mut client =
        exai_tests::try_connect_with(&daemon.url, &[("sec-websocket-protocol", &offered)])
            .await
            .expect("accepted, with `mcp` echoed");
    client.initialize().await;
    assert_eq!(client.whoami(1).await["email"], "browser@example.com");
    client.close().await;

    let bad = "mcp, mcp.auth.not-a-token";
    let refused = exai_tests::try_connect_with(&daemon.url, &[("sec-websocket-protocol", bad)])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body.trim(), "malformed token");

    let in_query = format!("{}?token={good}&access_token={good}", daemon.url);
    let refused = exai_tests::try_connect(&in_query, None)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401);
    daemon.stop().await;
}
