//! Shutdown: calls in flight get the grace period to finish, then open
//! sockets are closed with 1001 (going away).

use std::time::{Duration, Instant};

use exai_tests::{ModelApi, TestDaemon, TestPostgres, token};
use serde_json::json;

fn slow_chat(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "chat", "arguments": {"prompt": "finish me"}}})
    .to_string()
}

/// A daemon whose one model, `slow`, is the local model API `api`.
fn with_model(config: &mut exai_daemon::Config, api: &ModelApi) {
    config.providers = vec![exai_providers::OpenAiConfig::new(
        "openai",
        api.url.clone(),
        vec!["slow".into()],
    )];
    config.default_model = "slow".into();
}

#[tokio::test]
async fn a_call_in_flight_finishes_within_the_grace_period() {
    let api = ModelApi::with_delay(Duration::from_millis(800)).await;
    let daemon = TestDaemon::start_with(|c| {
        with_model(c, &api);
        c.edge.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    let mut client = daemon.connect_initialized(&token("a@example.com")).await;
    client.send_text(slow_chat(1)).await;
    // The call has reached the model: it is in flight.
    api.wait_for(1).await;
    let stopping = tokio::spawn(daemon.stop());
    let answer = client.response_to(&json!(1)).await;
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "slow #1: heard 1 messages; last: finish me"
    );
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    stopping.await.unwrap();
}

/// Past the grace period a call still running is cancelled: the client
/// gets the cancellation (-32800) and the 1001 close, the provider call is recorded in the
/// user's usage as `cancelled`, the session as disconnected, and `stop`
/// returns within the grace period and the time to write the closes.
#[tokio::test]
async fn a_call_past_the_grace_period_is_cancelled() {
    let (server, db) = TestPostgres::migrated(&["a@example.com"]).await;
    let api = ModelApi::with_delay(Duration::from_secs(60)).await;
    let daemon = TestDaemon::start_with(|c| {
        with_model(c, &api);
        c.edge.shutdown_grace = Duration::from_millis(300);
        c.store = server.store_config(Duration::from_secs(2));
    })
    .await;
    let mut client = daemon.connect_initialized(&token("a@example.com")).await;
    let session = client.whoami(9).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    client.send_text(slow_chat(1)).await;
    api.wait_for(1).await;
    let started = Instant::now();
    let stopping = tokio::spawn(daemon.stop());
    // The call is answered as cancelled (-32800), never with a result,
    // then the socket is closed with 1001.
    let cancelled = client.recv_json().await;
    assert_eq!(cancelled["id"], 1, "{cancelled}");
    assert_eq!(cancelled["error"]["code"], -32800, "{cancelled}");
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    tokio::time::timeout(Duration::from_secs(6), stopping)
        .await
        .expect("stop returns within the grace and the closes")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(6));
    let usage = db
        .query(
            "SELECT tool, outcome FROM public.mcp_usage WHERE session_id = $1",
            &[&session],
        )
        .await
        .unwrap();
    let usage: Vec<(String, String)> = usage.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(usage, [("chat".to_owned(), "cancelled".to_owned())]);
    let status: String = db
        .query_one(
            "SELECT connection_status FROM public.mcp_sessions WHERE session_id = $1",
            &[&session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "disconnected");
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

/// Over Streamable HTTP too: a call in flight at shutdown gets its answer
/// within the grace period, and the session is then recorded as closed.
#[tokio::test]
async fn an_http_call_in_flight_finishes_within_the_grace_period() {
    let api = ModelApi::with_delay(Duration::from_millis(800)).await;
    let daemon = TestDaemon::start_with(|c| {
        with_model(c, &api);
        c.edge.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    let url = format!("{}/mcp", daemon.http);
    let ana = token("a@example.com");
    let http = reqwest::Client::new();
    let post = |session: Option<String>, body: serde_json::Value| {
        let mut request = http
            .post(&url)
            .bearer_auth(&ana)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let init = post(
        None,
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await
    .unwrap();
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(init.text().await);
    post(
        Some(session.clone()),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await
    .unwrap();
    let call = post(
        Some(session),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "chat", "arguments": {"prompt": "finish me"}}}),
    );
    let call = tokio::spawn(async move { call.await.unwrap().text().await.unwrap() });
    api.wait_for(1).await;
    daemon.stop().await;
    let body = call.await.unwrap();
    assert!(
        body.contains("slow #1: heard 1 messages; last: finish me"),
        "{body}"
    );
}
