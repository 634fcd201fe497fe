//! Users are kept apart: each connection sees its own identity and session,
//! and identical requests on different connections each get their own answer.

use exai_auth::UserId;
use exai_tests::{TestDaemon, token};
use serde_json::{Value, json};

#[tokio::test]
async fn two_users_each_see_themselves() {
    let daemon = TestDaemon::start().await;
    let (jazeel, michelle) = (token("jazeel@example.com"), token("michelle@example.com"));
    let (mut a, mut b) = tokio::join!(
        daemon.connect_initialized(&jazeel),
        daemon.connect_initialized(&michelle),
    );
    let (who_a, who_b) = tokio::join!(a.whoami(1), b.whoami(1));
    assert_eq!(
        who_a["user_id"],
        json!(UserId::from_email("jazeel@example.com"))
    );
    assert_eq!(who_a["email"], "jazeel@example.com");
    assert_eq!(
        who_b["user_id"],
        json!(UserId::from_email("michelle@example.com"))
    );
    assert_eq!(who_b["email"], "michelle@example.com");
    assert!(who_a["session_id"].is_string());
    assert_ne!(who_a["session_id"], who_b["session_id"]);
    a.close().await;
    b.close().await;
    daemon.stop().await;
}

/// The original daemon de-duplicated requests globally, so the second of two
/// identical requests was dropped. Here each connection gets its own answer.
#[tokio::test]
async fn byte_identical_requests_on_two_connections_each_get_an_answer() {
    let daemon = TestDaemon::start().await;
    let jazeel = token("jazeel@example.com");
    let mut clients = vec![
        daemon.connect_initialized(&jazeel).await,
        daemon.connect_initialized(&jazeel).await,
        daemon
            .connect_initialized(&token("michelle@example.com"))
            .await,
    ];
    let frame = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
    for client in &mut clients {
        client.send_text(frame).await;
    }
    let mut answers = Vec::new();
    for client in &mut clients {
        let response = client.response_to(&json!(42)).await;
        answers.push(response["result"]["structuredContent"].clone());
    }
    let field = |i: usize, f: &str| answers[i][f].clone();
    assert_eq!(field(0, "user_id"), field(1, "user_id"));
    assert_ne!(field(0, "session_id"), field(1, "session_id"));
    assert_eq!(field(2, "email"), Value::from("michelle@example.com"));
    for client in clients {
        client.close().await;
    }
    daemon.stop().await;
}

#[tokio::test]
async fn tools_list_and_chat() {
    let daemon = TestDaemon::start().await;
    let mut client = daemon
        .connect_initialized(&token("jazeel@example.com"))
        .await;
    let tools = client.request(json!(1), "tools/list", json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, exai_tests::TOOLS);
    let answer = client
        .call_tool(2, "chat", json!({"prompt": "hello there"}))
        .await;
    assert_eq!(answer["result"]["content"][0]["text"], "[echo] hello there");
    let unknown_model = client
        .call_tool(3, "chat", json!({"prompt": "x", "model": "gpt-9"}))
        .await;
    assert_eq!(unknown_model["result"]["isError"], true);
    assert_eq!(
        unknown_model["result"]["content"][0]["text"],
        "unknown model 'gpt-9' (available: echo)"
    );
    let missing = client.call_tool(4, "chat", json!({})).await;
    assert_eq!(missing["error"]["code"], -32602);
    let unknown_tool = client.call_tool(5, "nosuch", json!({})).await;
    assert_eq!(unknown_tool["error"]["code"], -32602);
    let ping = client.request(json!(6), "ping", json!({})).await;
    assert_eq!(ping["result"], json!({}));
    client.close().await;
    daemon.stop().await;
}
