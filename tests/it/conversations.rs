//! What a user's tool calls leave behind belongs to that user: conversations
//! continued by `continuation_id` (only by their owner, within
//! `MAX_CONVERSATION_TURNS`, kept in the store so another daemon on the
//! same database continues them), usage recorded per provider call and
//! summed by `status`, and `sessions` listing only the caller's own. Two
//! users asking the same thing each get their own answer: nothing is
//! cached or de-duplicated across users.

use exai_providers::OpenAiConfig;
use exai_tests::{Client, ModelApi, TestDaemon, TestPostgres, token};
use serde_json::{Value, json};

/// A daemon asking `api` for models `local-a` and `local-b`, `local-a` the
/// default.
async fn daemon_with(api: &ModelApi, adjust: impl FnOnce(&mut exai_daemon::Config)) -> TestDaemon {
    let url = api.url.clone();
    TestDaemon::start_with(|c| {
        c.providers = vec![OpenAiConfig::new(
            "openai",
            url,
            vec!["local-a".into(), "local-b".into()],
        )];
        c.default_model = "local-a".into();
        adjust(c);
    })
    .await
}

fn text(response: &Value) -> &str {
    response["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {response}"))
}

fn is_tool_error(response: &Value) -> bool {
    response["result"]["isError"] == json!(true)
}

async fn chat(client: &mut Client, id: u64, arguments: Value) -> Value {
    client.call_tool(id, "chat", arguments).await
}

#[tokio::test]
async fn a_conversation_continues_for_its_owner_only() {
    let api = ModelApi::start().await;
    let daemon = daemon_with(&api, |c| c.tools.conversations.max_turns = 6).await;
    let mut ana = daemon.connect_initialized(&token("ana@example.com")).await;
    let mut bo = daemon.connect_initialized(&token("bo@example.com")).await;

    let first = chat(&mut ana, 1, json!({"prompt": "remember 42"})).await;
    assert!(!is_tool_error(&first), "{first}");
    assert_eq!(
        text(&first),
        "local-a #1: heard 1 messages; last: remember 42"
    );
    let thread = first["result"]["structuredContent"]["continuation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(first["result"]["structuredContent"]["turns"], 2);
    assert!(
        first["result"]["content"][1]["text"]
            .as_str()
            .unwrap()
            .contains(&thread),
        "the handle is in the text a model reads: {first}"
    );

    // The owner continues, on another connection too: the model hears the
    // history, oldest first.
    let mut ana_again = daemon.connect_initialized(&token("ana@example.com")).await;
    let second = chat(
        &mut ana_again,
        2,
        json!({"prompt": "what number?", "continuation_id": thread}),
    )
    .await;
    assert_eq!(
        text(&second),
        "local-a #2: heard 3 messages; last: what number?"
    );
    let sent = &api.requests()[1]["messages"];
    assert_eq!(sent[0], json!({"role": "user", "content": "remember 42"}));
    assert_eq!(sent[1]["role"], "assistant");
    assert_eq!(sent[1]["content"], text(&first));
    assert_eq!(
        second["result"]["structuredContent"]["continuation_id"],
        thread
    );
    assert_eq!(second["result"]["structuredContent"]["turns"], 4);

    // Another user's handle is answered exactly like one that never
    // existed, and no model is asked.
    let stolen = chat(
        &mut bo,
        3,
        json!({"prompt": "what number?", "continuation_id": thread}),
    )
    .await;
    let made_up = "00000000-0000-4000-8000-000000000000";
    let unknown = chat(
        &mut bo,
        4,
        json!({"prompt": "what number?", "continuation_id": made_up}),
    )
    .await;
    assert!(
        is_tool_error(&stolen) && is_tool_error(&unknown),
        "{stolen} {unknown}"
    );
    assert_eq!(
        text(&stolen).replace(&thread, "ID"),
        text(&unknown).replace(made_up, "ID")
    );
    assert!(
        text(&stolen).contains("unknown continuation_id"),
        "{stolen}"
    );
    assert_eq!(api.count(), 2, "no model was asked for Bo");

    // The third exchange fills the six turns; a fourth is refused before
    // any model is asked.
    let third = chat(
        &mut ana,
        5,
        json!({"prompt": "and now?", "continuation_id": thread}),
    )
    .await;
    assert_eq!(third["result"]["structuredContent"]["turns"], 6, "{third}");
    let fourth = chat(
        &mut ana,
        6,
        json!({"prompt": "more", "continuation_id": thread}),
    )
    .await;
    assert!(is_tool_error(&fourth), "{fourth}");
    assert!(text(&fourth).contains("limit of 6 turns"), "{fourth}");
    assert_eq!(api.count(), 3);

    // A bad handle type is a protocol error, not a tool error.
    let bad = chat(&mut ana, 7, json!({"prompt": "x", "continuation_id": 7})).await;
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_and_usage_live_in_the_database() {
    let (server, db) = TestPostgres::migrated(&["cara@example.com", "dev@example.com"]).await;
    let api = ModelApi::start().await;
    let store = server.store_config(std::time::Duration::from_secs(600));
    let first = daemon_with(&api, |c| c.store = store.clone()).await;
    let second = daemon_with(&api, |c| c.store = store).await;
    let mut cara = first.connect_initialized(&token("cara@example.com")).await;
    let started = chat(&mut cara, 1, json!({"prompt": "plan a trip"})).await;
    let thread = started["result"]["structuredContent"]["continuation_id"].clone();
    let session = cara.whoami(2).await["session_id"].clone();

    // The other daemon continues it: conversations are in the store.
    let mut cara_elsewhere = second.connect_initialized(&token("cara@example.com")).await;
    let continued = chat(
        &mut cara_elsewhere,
        3,
        json!({"prompt": "by train", "model": "local-b", "continuation_id": thread}),
    )
    .await;
    assert_eq!(
        text(&continued),
        "local-b #2: heard 3 messages; last: by train"
    );

    let rows = db
        .query(
            "SELECT u.session_id, tool, model, prompt_tokens, completion_tokens, outcome, latency_ms
               FROM mcp_usage u JOIN auth.users a ON a.id = u.user_id
              WHERE a.email = 'cara@example.com' ORDER BY u.id",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(Option<String>, String, String, i64, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(
        seen,
        [
            (
                session.as_str().map(str::to_owned),
                "chat".into(),
                "local-a".into(),
                1,
                3,
                "ok".into()
            ),
            (
                seen[1].0.clone(),
                "chat".into(),
                "local-b".into(),
                3,
                3,
                "ok".into()
            ),
        ]
    );
    assert_ne!(seen[1].0, seen[0].0, "each call names its own session");

    // `status` sums the caller's usage, from either daemon; Dev has none.
    let status = cara.call_tool(4, "status", json!({})).await;
    let usage = &status["result"]["structuredContent"]["you"]["usage"];
    assert_eq!(usage["calls"], 2, "{status}");
    assert_eq!(usage["prompt_tokens"], 4);
    assert_eq!(usage["completion_tokens"], 6);
    assert_eq!(usage["by_model"].as_array().unwrap().len(), 2);
    let mut dev = second.connect_initialized(&token("dev@example.com")).await;
    let status = dev.call_tool(5, "status", json!({})).await;
    assert_eq!(
        status["result"]["structuredContent"]["you"]["usage"]["calls"], 0,
        "{status}"
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn status_and_sessions_show_the_caller_only() {
    let daemon = TestDaemon::start().await;
    let mut ana = daemon.connect_initialized(&token("ana@example.com")).await;
    let mut ana_two = daemon.connect_initialized(&token("ana@example.com")).await;
    let mut bo = daemon.connect_initialized(&token("bo@example.com")).await;
    chat(&mut ana, 1, json!({"prompt": "one two three"})).await;
    chat(&mut ana_two, 1, json!({"prompt": "four"})).await;

    let listed = ana.call_tool(2, "sessions", json!({})).await;
    let sessions = listed["result"]["structuredContent"]["sessions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(sessions.len(), 2, "{listed}");
    let me = ana.whoami(3).await["session_id"].clone();
    for s in &sessions {
        assert_eq!(s["status"], "connected");
        assert_eq!(s["transport"], "websocket");
        assert_eq!(s["this_connection"], json!(s["session_id"] == me), "{s}");
    }
    let bo_sessions = bo.call_tool(2, "sessions", json!({})).await;
    let bo_sessions = bo_sessions["result"]["structuredContent"]["sessions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(bo_sessions.len(), 1);
    assert_eq!(bo_sessions[0]["this_connection"], true);

    let status = ana.call_tool(4, "status", json!({})).await;
    let status = &status["result"]["structuredContent"];
    assert_eq!(status["daemon"]["name"], "exai");
    assert_eq!(status["you"]["email"], "ana@example.com");
    assert_eq!(status["you"]["sessions"]["connected"], 2);
    // The echo model counts words: 3 and 1 prompt tokens, 4 and 2 answered.
    assert_eq!(status["you"]["usage"]["calls"], 2);
    assert_eq!(status["you"]["usage"]["prompt_tokens"], 4);
    assert_eq!(status["you"]["usage"]["completion_tokens"], 6);
    assert_eq!(status["you"]["usage"]["by_model"][0]["model"], "echo");
    let bo_status = bo.call_tool(3, "status", json!({})).await;
    assert_eq!(
        bo_status["result"]["structuredContent"]["you"]["usage"]["calls"],
        0
    );
    daemon.stop().await;
}

/// The original daemon cached results by tool and arguments alone, and
/// de-duplicated identical requests in flight: a second user asking the
/// same thing got the first user's answer, or none. Here every request is
/// asked and answered for its own caller, at once or one after the other.
#[tokio::test]
async fn identical_requests_of_two_users_get_their_own_answers() {
    let api = ModelApi::with_delay(std::time::Duration::from_millis(200)).await;
    let daemon = daemon_with(&api, |_| {}).await;
    let mut ana = daemon.connect_initialized(&token("ana@example.com")).await;
    let mut bo = daemon.connect_initialized(&token("bo@example.com")).await;
    let same = json!({"prompt": "the same question"});
    let (a, b) = tokio::join!(
        chat(&mut ana, 1, same.clone()),
        chat(&mut bo, 1, same.clone())
    );
    assert_eq!(api.count(), 2, "both were asked: {a} {b}");
    assert_ne!(text(&a), text(&b), "each got their own answer");
    let again = chat(&mut bo, 2, same).await;
    assert_eq!(
        api.count(),
        3,
        "a repeat is asked again, never served from another's"
    );
    assert!(text(&again).starts_with("local-a #3"), "{again}");
    let (a_thread, b_thread) = (
        &a["result"]["structuredContent"]["continuation_id"],
        &b["result"]["structuredContent"]["continuation_id"],
    );
    assert_ne!(a_thread, b_thread);
    daemon.stop().await;
}
