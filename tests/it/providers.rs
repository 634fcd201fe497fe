//! Model providers through the daemon: a call is routed by its model to
//! the provider that serves it (here a local OpenAI-compatible server), a
//! call that names none goes to `DEFAULT_MODEL`, and an unknown model is a
//! tool error that names what can be asked.

use exai_auth::Secret;
use exai_providers::OpenAiConfig;
use exai_tests::{TestDaemon, token};
use serde_json::{Value, json};

const KEY: &str = "sk-local-test-key";

/// A server that answers as the chat completions API does, saying which
/// model it was asked and whether the key came.
async fn local_api() -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|headers: axum::http::HeaderMap, body: String| async move {
            let request: Value = serde_json::from_str(&body).unwrap();
            let authorized = headers
                .get("authorization")
                .is_some_and(|v| v == format!("Bearer {KEY}").as_str());
            let messages = request["messages"].as_array().unwrap();
            let prompt = messages.last().unwrap()["content"]
                .as_str()
                .unwrap_or_default();
            let mut content = format!(
                "{} says: {prompt} (key: {authorized})",
                request["model"].as_str().unwrap()
            );
            if messages[0]["role"] == "system" {
                let system = messages[0]["content"].as_str().unwrap();
                content.push_str(&format!(" [system: {system}]"));
            }
            axum::Json(json!({
                "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn calls_are_routed_by_model_and_the_default_applies() {
    let url = local_api().await;
    let daemon = TestDaemon::start_with(|c| {
        c.providers = vec![
            OpenAiConfig::new(
                "openai",
                url,
                vec!["local-large".into(), "local-small".into()],
            )
            .with_api_key(Secret::new(KEY.as_bytes().to_vec())),
        ];
        c.default_model = "local-small".into();
    })
    .await;
    let mut client = daemon.connect_initialized(&token("ana@example.com")).await;
    let text = |answer: &Value| answer["result"]["content"][0]["text"].clone();

    let default = client.call_tool(1, "chat", json!({"prompt": "hi"})).await;
    assert_eq!(text(&default), "local-small says: hi (key: true)");
    let named = client
        .call_tool(2, "chat", json!({"prompt": "hi", "model": "local-large"}))
        .await;
    assert_eq!(text(&named), "local-large says: hi (key: true)");
    let echo = client
        .call_tool(3, "chat", json!({"prompt": "hi", "model": "echo"}))
        .await;
    assert_eq!(text(&echo), "[echo] hi");
    let unknown = client
        .call_tool(4, "chat", json!({"prompt": "hi", "model": "gpt-9"}))
        .await;
    assert_eq!(unknown["result"]["isError"], true);
    assert_eq!(
        text(&unknown),
        "unknown model 'gpt-9' (available: echo, local-large, local-small)"
    );
    exai_tests::wait_for_metric(
        &daemon,
        r#"exai_provider_calls_total{provider="openai",model="local-small",outcome="ok"} 1"#,
    )
    .await;

    // The EXAI tools ask the same way, each with its own instructions.
    let review = client
        .call_tool(5, "codereview", json!({"prompt": "fn main() {}"}))
        .await;
    let review = text(&review);
    let review = review.as_str().unwrap();
    assert!(
        review.starts_with(
            "local-small says: fn main() {} (key: true) [system: You are doing a code review."
        ),
        "{review}"
    );
    let challenged = client
        .call_tool(
            6,
            "challenge",
            json!({"prompt": "tabs", "model": "local-large"}),
        )
        .await;
    assert!(
        text(&challenged)
            .as_str()
            .unwrap()
            .contains("[system: You are asked to challenge what follows"),
        "{challenged}"
    );
    let missing = client.call_tool(7, "debug", json!({})).await;
    assert_eq!(missing["error"]["code"], -32602);

    let models = client.call_tool(8, "listmodels", json!({})).await;
    assert_eq!(
        models["result"]["structuredContent"],
        json!({"default": "local-small", "providers": [
            {"provider": "echo", "models": ["echo"]},
            {"provider": "openai", "models": ["local-large", "local-small"]}
        ]})
    );
    let version = client.call_tool(9, "version", json!({})).await;
    assert_eq!(version["result"]["structuredContent"]["name"], "exai");
    daemon.stop().await;
}
