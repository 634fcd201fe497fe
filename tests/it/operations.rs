//! What operators see: `/metrics` (parsed by an independent parser) moving
//! with traffic, `/readyz` following the database, and the separate admin
//! listener.

use std::collections::BTreeMap;
use std::time::Duration;

use exai_auth::{NewApiKey, UserId};
use exai_tests::{
    TestDaemon, TestPostgres, claims, http_get, http_get_at, now, parse_metrics, sign, token,
};
use serde_json::json;

/// The value of the sample `name` with exactly `labels`, 0 when absent.
fn sample(
    samples: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == wanted)
        .map_or(0.0, |(_, _, v)| *v)
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let daemon = TestDaemon::start_with(|c| c.edge.max_connections_per_user = 1).await;
    let (status, before) = http_get(&daemon, "/metrics", None).await;
    assert_eq!(status, 200);
    let before = parse_metrics(&before);
    assert_eq!(
        sample(
            &before,
            "exai_connections_opened_total",
            &[("transport", "websocket")]
        ),
        0.0
    );

    let mut expired = claims("m@example.com");
    expired["exp"] = json!(now() - 3600);
    assert!(daemon.try_connect(Some(&sign(&expired))).await.is_err());
    assert!(daemon.try_connect(Some("garbage")).await.is_err());
    let user = token("m@example.com");
    let mut client = daemon.connect_initialized(&user).await;
    client.whoami(1).await;
    client
        .call_tool(2, "chat", json!({"prompt": "count these words"}))
        .await;
    client
        .call_tool(3, "chat", json!({"prompt": "x", "model": "no-such-model"}))
        .await;
    client.call_tool(4, "nosuch", json!({})).await;
    assert_eq!(
        daemon.try_connect(Some(&user)).await.err().unwrap().status,
        429
    );

    let (_, after) = http_get(&daemon, "/metrics", None).await;
    let after = parse_metrics(&after);
    let check = |name: &str, labels: &[(&str, &str)], expected: f64| {
        assert_eq!(sample(&after, name, labels), expected, "{name} {labels:?}");
    };
    check("exai_auth_failures_total", &[("reason", "expired")], 1.0);
    check("exai_auth_failures_total", &[("reason", "malformed")], 1.0);
    check(
        "exai_connections_opened_total",
        &[("transport", "websocket")],
        1.0,
    );
    check("exai_connections_open", &[("transport", "websocket")], 1.0);
    check("exai_session_events_total", &[("event", "opened")], 1.0);
    check("exai_sessions", &[("status", "connected")], 1.0);
    check(
        "exai_refusals_total",
        &[("limit", "connections_per_user")],
        1.0,
    );
    check(
        "exai_tool_calls_total",
        &[("tool", "whoami"), ("outcome", "ok")],
        1.0,
    );
    check(
        "exai_tool_calls_total",
        &[("tool", "chat"), ("outcome", "ok")],
        1.0,
    );
    check(
        "exai_tool_calls_total",
        &[("tool", "chat"), ("outcome", "tool_error")],
        1.0,
    );
    check(
        "exai_tool_calls_total",
        &[("tool", "unknown"), ("outcome", "unknown_tool")],
        1.0,
    );
    check(
        "exai_tool_call_duration_seconds_count",
        &[("tool", "chat")],
        2.0,
    );
    check(
        "exai_provider_calls_total",
        &[("provider", "echo"), ("model", "echo"), ("outcome", "ok")],
        1.0,
    );
    // An unknown model is a tool error without any provider call.
    assert_eq!(
        sample(
            &after,
            "exai_provider_calls_total",
            &[
                ("provider", "echo"),
                ("model", "other"),
                ("outcome", "error")
            ]
        ),
        0.0
    );
    check(
        "exai_provider_tokens_total",
        &[("provider", "echo"), ("model", "echo"), ("kind", "prompt")],
        3.0,
    );
    assert!(
        sample(
            &after,
            "exai_store_operation_duration_seconds_count",
            &[("operation", "open")]
        ) >= 2.0
    );

    // No label carries a user.
    assert!(
        after
            .iter()
            .all(|(_, labels, _)| !labels.contains_key("user_id"))
    );
    assert!(!after.iter().any(|(_, labels, _)| {
        labels
            .values()
            .any(|v| v.contains(&UserId::from_email("m@example.com").to_string()))
    }));

    client.close().await;
    let mut open = 1.0;
    for _ in 0..100 {
        let (_, text) = http_get(&daemon, "/metrics", None).await;
        open = sample(
            &parse_metrics(&text),
            "exai_connections_open",
            &[("transport", "websocket")],
        );
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, 0.0);

    // An API key's lookup is a store call too, and is timed like the rest.
    let key = NewApiKey::generate(UserId::from_email("k@example.com"), None, None).unwrap();
    daemon
        .api_keys()
        .insert_api_key(key.record.clone())
        .await
        .unwrap();
    daemon.connect_initialized(&key.key).await.close().await;
    let (_, text) = http_get(&daemon, "/metrics", None).await;
    let keyed = parse_metrics(&text);
    for operation in ["insert_api_key", "find_api_key"] {
        assert_eq!(
            sample(
                &keyed,
                "exai_store_operation_duration_seconds_count",
                &[("operation", operation)]
            ),
            1.0,
            "{operation}"
        );
    }
    daemon.stop().await;
}

#[tokio::test]
async fn an_admin_listener_keeps_operations_off_the_public_port() {
    let daemon =
        TestDaemon::start_with(|c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let admin = daemon.admin.clone().expect("an admin listener");
    for path in ["/metrics", "/readyz"] {
        assert_eq!(
            http_get(&daemon, path, None).await.0,
            404,
            "{path} is not public"
        );
        assert_eq!(
            http_get_at(&admin, path, None).await.0,
            200,
            "{path} on the admin port"
        );
    }
    assert_eq!(http_get_at(&admin, "/healthz", None).await.0, 200);
    assert_eq!(http_get(&daemon, "/healthz", None).await.0, 200);
    assert_eq!(
        http_get_at(&admin, "/mcp", None).await.0,
        404,
        "no MCP on the admin port"
    );
    daemon.stop().await;
}

/// A daemon whose heartbeat has not been written for longer than the node
/// timeout is not ready: other daemons may have freed its sessions. Once
/// the database is back and a heartbeat lands, it is ready again.
#[tokio::test]
async fn readiness_says_when_the_heartbeat_is_stale() {
    let (server, _db) = TestPostgres::migrated(&[]).await;
    let daemon = TestDaemon::start_with(|c| {
        c.store = server.store_config(Duration::from_secs(1));
        c.edge.node_timeout = Duration::from_secs(3);
    })
    .await;
    assert_eq!(http_get(&daemon, "/readyz", None).await.0, 200);
    server.halt();
    let (status, body) = http_get(&daemon, "/readyz", None).await;
    assert_eq!(status, 503);
    assert!(!body.contains("node heartbeat"), "not stale yet: {body}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = http_get(&daemon, "/readyz", None).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("node heartbeat: last written") && body.contains("past the node timeout"),
        "{body}"
    );
    server.resume();
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = http_get(&daemon, "/readyz", None).await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, (200, "ready\n".to_owned()));
    daemon.stop().await;
}

#[tokio::test]
async fn readiness_follows_the_database() {
    let (server, _db) = TestPostgres::migrated(&[]).await;
    let daemon =
        TestDaemon::start_with(|c| c.store = server.store_config(Duration::from_secs(2))).await;
    assert_eq!(
        http_get(&daemon, "/readyz", None).await,
        (200, "ready\n".to_owned())
    );
    server.halt();
    let (status, body) = http_get(&daemon, "/readyz", None).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "not ready\nsession store: session store unavailable\n"
    );
    assert_eq!(
        http_get(&daemon, "/healthz", None).await.0,
        200,
        "alive all the same"
    );
    server.resume();
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = http_get(&daemon, "/readyz", None).await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, (200, "ready\n".to_owned()));
    daemon.stop().await;
}
