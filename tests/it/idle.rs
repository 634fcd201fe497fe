//! An idle WebSocket's MCP service is suspended, to keep idle connections
//! cheap, and started again by the client's next message as it was: same
//! session, same log level, no stray answer to the replayed `initialize`,
//! whichever lifecycle the client chose. A call in flight is never cut.

use std::time::Duration;

use exai_tests::{Client, TestDaemon, token, wait_for_metric};
use serde_json::{Value, json};

/// A daemon whose services are suspended after 100 ms with nothing to do.
async fn daemon(adjust: impl FnOnce(&mut exai_daemon::Config)) -> TestDaemon {
    TestDaemon::start_with(|c| {
        c.edge.service_idle = Duration::from_millis(100);
        adjust(c);
    })
    .await
}

/// Waits until every service is suspended, `started` having been started.
async fn suspended(daemon: &TestDaemon, started: u64) {
    wait_for_metric(daemon, "exai_mcp_services_running 0").await;
    wait_for_metric(
        daemon,
        &format!("exai_mcp_services_started_total {started}"),
    )
    .await;
}

/// Every message until the response to `id`, which comes last.
async fn until_response(client: &mut Client, id: &Value) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = client.recv_json().await;
        let done = message.get("id") == Some(id);
        seen.push(message);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn an_idle_service_is_suspended_and_resumes_where_it_stopped() {
    let daemon = daemon(|_| {}).await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let before = client.whoami(1).await;
    let set = client
        .request(json!(2), "logging/setLevel", json!({"level": "info"}))
        .await;
    assert!(set.get("result").is_some(), "{set}");
    suspended(&daemon, 1).await;

    // The next call starts a service that knows the client and its level;
    // the client sees only its own call's messages.
    client
        .send_text(
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                   "params": {"name": "chat", "arguments": {"prompt": "again"}}})
            .to_string(),
        )
        .await;
    let seen = until_response(&mut client, &json!(3)).await;
    let (answer, notes) = seen.split_last().unwrap();
    assert!(answer["result"]["content"].is_array(), "{answer}");
    assert_eq!(notes.len(), 1, "one log message at info: {seen:?}");
    assert_eq!(notes[0]["method"], "notifications/message");
    assert_eq!(notes[0]["params"]["level"], "info");
    suspended(&daemon, 2).await;
    let after = client.whoami(4).await;
    assert_eq!(after["session_id"], before["session_id"]);
    assert_eq!(after["email"], "ana@example.com");

    // A client's own request with the id the replay uses is answered.
    suspended(&daemon, 3).await;
    let listed = client
        .request(json!("exai/resume"), "tools/list", json!({}))
        .await;
    assert_eq!(
        listed["result"]["tools"].as_array().map(Vec::len),
        Some(exai_tests::TOOLS.len()),
        "{listed}"
    );
    suspended(&daemon, 4).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_call_longer_than_the_idle_time_is_not_cut() {
    let daemon = daemon(|c| c.echo_delay = Duration::from_millis(600)).await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let answer = client
        .call_tool(1, "chat", json!({"prompt": "slowly"}))
        .await;
    assert!(answer["result"]["content"].is_array(), "{answer}");
    assert_ne!(answer["result"]["isError"], true, "{answer}");
    // It ran on the one service the connection started.
    suspended(&daemon, 1).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_batch_after_idling_is_answered_as_one() {
    let daemon = daemon(|_| {}).await;
    let mut client = daemon.connect(&token("ana@example.com")).await;
    let init = client
        .request(
            json!(0),
            "initialize",
            json!({"protocolVersion": "2025-03-26", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}),
        )
        .await;
    assert_eq!(init["result"]["protocolVersion"], "2025-03-26");
    suspended(&daemon, 1).await;
    let call = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                "params": {"name": "whoami", "arguments": {}}})
    };
    client
        .send_text(json!([call(1), call(2)]).to_string())
        .await;
    let answers = client.recv_json().await;
    let ids: Vec<&Value> = answers
        .as_array()
        .unwrap_or_else(|| panic!("one array: {answers}"))
        .iter()
        .map(|a| &a["id"])
        .collect();
    assert_eq!(ids.len(), 2, "{answers}");
    assert!(
        ids.contains(&&json!(1)) && ids.contains(&&json!(2)),
        "{answers}"
    );
    suspended(&daemon, 2).await;
    daemon.stop().await;
}

#[tokio::test]
async fn requests_with_inline_metadata_work_across_idling() {
    let daemon = daemon(|_| {}).await;
    let mut client = daemon.connect(&token("ana@example.com")).await;
    let whoami = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "whoami", "arguments": {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }})
    };
    client.send_text(whoami(1).to_string()).await;
    let first = client.response_to(&json!(1)).await;
    assert_eq!(
        first["result"]["structuredContent"]["email"],
        "ana@example.com"
    );
    suspended(&daemon, 1).await;
    // A notification to a suspended inline lifecycle has nothing to reach.
    client
        .send_text(
            json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}).to_string(),
        )
        .await;
    client.send_text(whoami(2).to_string()).await;
    let second = client.response_to(&json!(2)).await;
    assert_eq!(
        second["result"]["structuredContent"]["email"], "ana@example.com",
        "{second}"
    );
    suspended(&daemon, 2).await;
    daemon.stop().await;
}
