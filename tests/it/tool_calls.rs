//! Tool calls over time: progress reports, the per-call deadline,
//! cancellation, the per-session cap on calls in flight, log messages after
//! `logging/setLevel`, and `tools/list` pages.

use std::time::{Duration, Instant};

use exai_tests::{Client, TestDaemon, token};
use serde_json::{Value, json};

fn chat(id: u64, meta: Option<Value>) -> String {
    let mut params = json!({"name": "chat", "arguments": {"prompt": "slowly"}});
    if let Some(meta) = meta {
        params["_meta"] = meta;
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}).to_string()
}

/// Every message until the response to `id`, which comes last.
async fn until_response(client: &mut Client, id: u64) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = client.recv_json().await;
        let done = message.get("id") == Some(&json!(id));
        seen.push(message);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_long_call_reports_progress_to_a_client_that_asked() {
    let daemon = TestDaemon::start_with(|c| {
        c.echo_delay = Duration::from_millis(1200);
        c.tools.progress_interval = Duration::from_millis(300);
    })
    .await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    client
        .send_text(chat(1, Some(json!({"progressToken": "p-1"}))))
        .await;
    let seen = until_response(&mut client, 1).await;
    let progress: Vec<&Value> = seen
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert!(progress.len() >= 2, "{seen:?}");
    assert!(
        progress
            .iter()
            .all(|p| p["params"]["progressToken"] == "p-1")
    );
    let values: Vec<f64> = progress
        .iter()
        .map(|p| p["params"]["progress"].as_f64().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
    assert_eq!(
        seen.last().unwrap()["result"]["content"][0]["text"],
        "[echo] slowly"
    );

    // Without a token, no progress.
    client.send_text(chat(2, None)).await;
    let seen = until_response(&mut client, 2).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_call_past_its_deadline_is_a_tool_error() {
    let daemon = TestDaemon::start_with(|c| {
        c.echo_delay = Duration::from_secs(5);
        c.tools.timeout = Duration::from_millis(300);
    })
    .await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let started = Instant::now();
    client.send_text(chat(1, None)).await;
    let response = client.response_to(&json!(1)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(response["result"]["isError"], true, "{response}");
    let text = response["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("EXAI_TOOL_TIMEOUT_SECS"), "{text}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_cancelled_call_stops_and_the_session_goes_on() {
    let api = exai_tests::ModelApi::with_delay(Duration::from_secs(30)).await;
    let url = api.url.clone();
    let daemon = TestDaemon::start_with(|c| {
        c.providers = vec![exai_providers::OpenAiConfig::new(
            "openai",
            url,
            vec!["slow".into()],
        )];
        c.default_model = "slow".into();
    })
    .await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let started = Instant::now();
    client.send_text(chat(7, None)).await;
    // The call has reached the model before it is cancelled.
    api.wait_for(1).await;
    client
        .send_text(
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": 7, "reason": "changed my mind"}})
            .to_string(),
        )
        .await;
    // The session goes on, and the cancelled request gets no response, as
    // the protocol asks.
    client
        .send_text(
            json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                   "params": {"name": "whoami", "arguments": {}}})
            .to_string(),
        )
        .await;
    let seen = until_response(&mut client, 8).await;
    assert_eq!(seen.len(), 1, "nothing for the cancelled call: {seen:?}");
    assert_eq!(
        seen[0]["result"]["structuredContent"]["email"],
        "ana@example.com"
    );
    // The call stopped at once (the model would have taken 30 s).
    let cancelled = r#"exai_tool_calls_total{tool="chat",outcome="cancelled"} 1"#;
    exai_tests::wait_for_metric(&daemon, cancelled).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    daemon.stop().await;
}

#[tokio::test]
async fn calls_beyond_the_sessions_cap_are_refused_at_once() {
    let daemon = TestDaemon::start_with(|c| {
        c.echo_delay = Duration::from_millis(800);
        c.tools.max_in_flight = 2;
    })
    .await;
    let ana = token("ana@example.com");
    let mut client = daemon.connect_initialized(&ana).await;
    for id in 1..=3 {
        client.send_text(chat(id, None)).await;
    }
    let started = Instant::now();
    let refused = client.response_to(&json!(3)).await;
    assert!(started.elapsed() < Duration::from_millis(700), "no waiting");
    assert_eq!(refused["error"]["code"], -32004, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("retry"), "{message}");
    for id in 1..=2 {
        let done = client.response_to(&json!(id)).await;
        assert_eq!(done["result"]["content"][0]["text"], "[echo] slowly");
    }
    // The cap is per session: another connection of the same user has its own.
    let mut other = daemon.connect_initialized(&ana).await;
    other.send_text(chat(1, None)).await;
    other.send_text(chat(2, None)).await;
    for id in 1..=2 {
        let done = other.response_to(&json!(id)).await;
        assert!(done.get("result").is_some(), "{done}");
    }
    // And the slots come back.
    client.send_text(chat(4, None)).await;
    assert!(client.response_to(&json!(4)).await.get("result").is_some());
    daemon.stop().await;
}

#[tokio::test]
async fn log_messages_follow_the_level_the_client_set() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    // Nothing before the client asks.
    client.send_text(chat(1, None)).await;
    assert_eq!(until_response(&mut client, 1).await.len(), 1);

    let set = client
        .request(json!(2), "logging/setLevel", json!({"level": "info"}))
        .await;
    assert!(set.get("result").is_some(), "{set}");
    client.send_text(chat(3, None)).await;
    let seen = until_response(&mut client, 3).await;
    let logs: Vec<&Value> = seen
        .iter()
        .filter(|m| m["method"] == "notifications/message")
        .collect();
    assert_eq!(logs.len(), 1, "{seen:?}");
    assert_eq!(logs[0]["params"]["level"], "info");
    assert_eq!(logs[0]["params"]["logger"], "exai");
    assert_eq!(logs[0]["params"]["data"]["tool"], "chat");

    client
        .request(json!(4), "logging/setLevel", json!({"level": "error"}))
        .await;
    client.send_text(chat(5, None)).await;
    assert_eq!(until_response(&mut client, 5).await.len(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn tools_list_comes_in_pages() {
    let daemon = TestDaemon::start_with(|c| c.tools.page_size = 1).await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    for id in 1..30 {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let page = client.request(json!(id), "tools/list", params).await;
        let tools = page["result"]["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 1, "{page}");
        names.push(tools[0]["name"].as_str().unwrap().to_owned());
        match page["result"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    names.sort();
    assert_eq!(names, exai_tests::TOOLS_SORTED);
    let bad = client
        .request(json!(20), "tools/list", json!({"cursor": "bogus"}))
        .await;
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    daemon.stop().await;
}

#[tokio::test]
async fn enabled_and_disabled_tools_decide_what_is_offered() {
    let daemon = TestDaemon::start_with(|c| {
        c.tools.selection.enabled = Some(vec!["chat".into(), "whoami".into(), "version".into()]);
        c.tools.selection.disabled = vec!["version".into()];
    })
    .await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let list = client.request(json!(1), "tools/list", json!({})).await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chat", "whoami"]);
    let hidden = client.call_tool(2, "version", json!({})).await;
    assert_eq!(
        hidden["error"]["code"], -32602,
        "a tool not offered is unknown"
    );
    let never = client
        .call_tool(3, "codereview", json!({"prompt": "x"}))
        .await;
    assert_eq!(never["error"]["code"], -32602);
    assert_eq!(client.whoami(4).await["email"], "ana@example.com");
    daemon.stop().await;
}

/// A model's answer reaches a client that asked for progress as it streams
/// in, piece by piece, before the result; and a call the client cancels
/// midway still counts in the caller's usage, as cancelled.
#[tokio::test]
async fn a_streamed_answer_arrives_as_progress_and_cancelled_calls_count() {
    let api = exai_tests::ModelApi::with_delay(Duration::from_millis(60)).await;
    let url = api.url.clone();
    let daemon = TestDaemon::start_with(|c| {
        c.providers = vec![exai_providers::OpenAiConfig::new(
            "openai",
            url,
            vec!["local-a".into()],
        )];
        c.default_model = "local-a".into();
    })
    .await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "chat",
                                 "arguments": {"prompt": "tell me a long story please"},
                                 "_meta": {"progressToken": "s-1"}}});
    client.send_text(call.to_string()).await;
    let seen = until_response(&mut client, 1).await;
    let pieces: Vec<&str> = seen
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| m["params"]["message"].as_str().unwrap())
        .collect();
    let answer = seen.last().unwrap()["result"]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(pieces.len() >= 2, "the answer came in pieces: {seen:?}");
    assert_eq!(pieces.concat(), answer);
    assert_eq!(api.requests()[0]["stream"], true);

    // Cancel a streaming call midway: the provider call is recorded as
    // cancelled in the caller's usage.
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "chat",
                                 "arguments": {"prompt": "another long story to be cut short"},
                                 "_meta": {"progressToken": "s-2"}}});
    client.send_text(call.to_string()).await;
    let first = client.recv_json().await;
    assert_eq!(first["method"], "notifications/progress", "{first}");
    client
        .send_text(
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": 2}})
            .to_string(),
        )
        .await;
    exai_tests::wait_for_metric(
        &daemon,
        r#"exai_tool_calls_total{tool="chat",outcome="cancelled"} 1"#,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = client.call_tool(3, "status", json!({})).await;
        let usage = &status["result"]["structuredContent"]["you"]["usage"];
        if usage["calls"] == 2 {
            assert_eq!(usage["errors"], 1, "the cancelled call: {status}");
            assert_eq!(usage["calls"], 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled call is recorded: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
}

/// What real model APIs send, through the daemon (the local model API
/// streams as they do): a role-only first delta, `reasoning_content` of a
/// thinking model (never part of the answer), `finish_reason`, events split
/// across reads, usage only because exai asks for it (`stream_options`);
/// an error event midway is a tool error, not a half answer; a refused key
/// is a tool error naming the status and never the key.
#[tokio::test]
async fn answers_are_read_as_real_model_apis_stream_them() {
    let api = exai_tests::ModelApi::start().await;
    let url = api.url.clone();
    let daemon = TestDaemon::start_with(|c| {
        c.providers = vec![exai_providers::OpenAiConfig::new(
            "openai",
            url,
            vec!["kimi-k2-thinking".into(), "broken-stream".into()],
        )];
        c.default_model = "kimi-k2-thinking".into();
    })
    .await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "chat", "arguments": {"prompt": "think first"},
                                 "_meta": {"progressToken": "t-1"}}});
    client.send_text(call.to_string()).await;
    let seen = until_response(&mut client, 1).await;
    let result = &seen.last().unwrap()["result"];
    let answer = result["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        answer, "kimi-k2-thinking #1: heard 1 messages; last: think first",
        "reasoning is not the answer: {result}"
    );
    let pieces: String = seen
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| m["params"]["message"].as_str().unwrap())
        .collect();
    assert_eq!(pieces, answer);
    assert_eq!(
        api.requests()[0]["stream_options"]["include_usage"],
        true,
        "exai asks for the usage of a stream"
    );
    assert_eq!(
        result["structuredContent"]["usage"]["completion_tokens"], 3,
        "{result}"
    );

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "chat",
                                 "arguments": {"prompt": "x", "model": "broken-stream"},
                                 "_meta": {"progressToken": "t-2"}}});
    client.send_text(call.to_string()).await;
    let seen = until_response(&mut client, 2).await;
    let result = &seen.last().unwrap()["result"];
    assert_eq!(result["isError"], true, "{result}");
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("the answer stream failed: generation failed"),
        "{text}"
    );
    daemon.stop().await;

    let keyed = exai_tests::ModelApi::with_key("sk-right-key-0123456789").await;
    let url = keyed.url.clone();
    let daemon = TestDaemon::start_with(|c| {
        c.providers = vec![
            exai_providers::OpenAiConfig::new("openai", url, vec!["local-a".into()])
                .with_api_key(exai_auth::Secret::new(b"sk-wrong-key-9876543210".to_vec())),
        ];
        c.default_model = "local-a".into();
    })
    .await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let refused = client.call_tool(1, "chat", json!({"prompt": "x"})).await;
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    let text = refused["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("401") && text.contains("Incorrect API key"),
        "{text}"
    );
    assert!(!text.contains("sk-wrong-key"), "{text}");
    daemon.stop().await;
}

/// Progress that coincides with the answer is never dropped: with the echo
/// model, which streams its answer and ends at once, every piece of every
/// answer reaches the client, as progress, before the result.
#[tokio::test]
async fn the_last_streamed_piece_always_comes_before_the_answer() {
    let daemon = TestDaemon::start_with(|c| c.tools.per_user.rpm = None).await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    for id in 1..=60u64 {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                          "params": {"name": "chat",
                                     "arguments": {"prompt": "a short story in a few words"},
                                     "_meta": {"progressToken": format!("q-{id}")}}});
        client.send_text(call.to_string()).await;
        let seen = until_response(&mut client, id).await;
        let pieces: String = seen
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .map(|m| m["params"]["message"].as_str().unwrap())
            .collect();
        let answer = seen.last().unwrap()["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{seen:?}"));
        assert_eq!(pieces, answer, "call {id}: {seen:?}");
    }
    daemon.stop().await;
}
