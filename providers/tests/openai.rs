//! The OpenAI-compatible client against a local server that answers as the
//! chat completions API does, and misbehaves on request: the model name
//! picks the behaviour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use exai_auth::Secret;
use exai_providers::{
    ChatMessage, ChatRequest, OpenAiConfig, OpenAiProvider, Provider, ProviderError, Role,
};
use serde_json::{Value, json};

const KEY: &str = "sk-test-0123456789abcdef";

#[derive(Default)]
struct Upstream {
    /// Requests seen, per model.
    calls: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Handlers dropped before they finished (the client went away).
    abandoned: AtomicUsize,
}

impl Upstream {
    fn calls(&self, model: &str) -> usize {
        self.calls.lock().unwrap().get(model).copied().unwrap_or(0)
    }
}

struct Abandoned(Arc<Upstream>, bool);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.1 {
            self.0.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn answer(content: &str, usage: bool) -> Value {
    let mut answer = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "served-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}]
    });
    if usage {
        answer["usage"] = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
    }
    answer
}

fn sse(events: &[Value], done: bool) -> String {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    body
}

fn delta(text: &str) -> Value {
    json!({"model": "served-model", "choices": [{"index": 0, "delta": {"content": text}}]})
}

async fn completions(
    State(upstream): State<Arc<Upstream>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap();
    let model = request["model"].as_str().unwrap().to_owned();
    let n = {
        let mut calls = upstream.calls.lock().unwrap();
        let n = calls.entry(model.clone()).or_default();
        *n += 1;
        *n
    };
    let json_answer =
        |value: Value| ([("content-type", "application/json")], value.to_string()).into_response();
    match model.as_str() {
        "plain" => {
            let authorized = headers
                .get("authorization")
                .is_some_and(|v| v == format!("Bearer {KEY}").as_str());
            let prompt = request["messages"][1]["content"].as_str().unwrap();
            json_answer(answer(
                &format!("{prompt} (authorized: {authorized})"),
                true,
            ))
        }
        "no-usage" => json_answer(answer("fine", false)),
        "stream" => {
            assert_eq!(request["stream"], true);
            let mut events = vec![delta("Hel"), delta("lo"), delta("!")];
            events.push(
                json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}),
            );
            ([("content-type", "text/event-stream")], sse(&events, true)).into_response()
        }
        "cut" => (
            [("content-type", "text/event-stream")],
            sse(&[delta("Hal")], false),
        )
            .into_response(),
        "busy" if n == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        "busy" => json_answer(answer("after the wait", true)),
        "flaky" if n == 1 => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        "flaky" => json_answer(answer("second time lucky", true)),
        "down" => (StatusCode::BAD_GATEWAY, "still down").into_response(),
        "garbage" => ([("content-type", "application/json")], "{not json").into_response(),
        "leaky" => (
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": format!("Incorrect API key provided: {KEY}")}}).to_string(),
        )
            .into_response(),
        "slow" | "hang" => {
            let mut guard = Abandoned(upstream.clone(), false);
            tokio::time::sleep(Duration::from_secs(30)).await;
            guard.1 = true;
            json_answer(answer("too late", true))
        }
        "queue" => {
            let now = upstream.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            upstream.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            upstream.in_flight.fetch_sub(1, Ordering::SeqCst);
            json_answer(answer("served", true))
        }
        other => (StatusCode::NOT_FOUND, format!("no model {other}")).into_response(),
    }
}

async fn upstream() -> (Arc<Upstream>, String) {
    let state = Arc::new(Upstream::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, url)
}

fn provider(url: &str, adjust: impl FnOnce(&mut OpenAiConfig)) -> OpenAiProvider {
    let models = [
        "plain", "no-usage", "stream", "cut", "busy", "flaky", "down", "garbage", "leaky", "slow",
        "hang", "queue",
    ];
    let mut config = OpenAiConfig::new("test", url, models.map(String::from).to_vec())
        .with_api_key(Secret::new(KEY.as_bytes().to_vec()));
    config.backoff = Duration::from_millis(50);
    adjust(&mut config);
    OpenAiProvider::new(config).unwrap()
}

fn ask(model: &str, prompt: &str) -> ChatRequest {
    ChatRequest::new(
        model,
        vec![
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, prompt),
        ],
    )
}

#[tokio::test]
async fn a_plain_answer_with_its_usage_and_the_key_sent() {
    let (_, url) = upstream().await;
    let provider = provider(&url, |_| {});
    let answer = provider.chat(ask("plain", "hello")).await.unwrap();
    assert_eq!(answer.content, "hello (authorized: true)");
    assert_eq!(answer.model, "served-model");
    let usage = answer.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 7));

    let answer = provider.chat(ask("no-usage", "hi")).await.unwrap();
    assert_eq!(answer.content, "fine");
    assert!(answer.usage.is_none());

    let unknown = provider.chat(ask("gpt-9", "hi")).await.unwrap_err();
    assert!(matches!(unknown, ProviderError::UnknownModel(_)));
}

#[tokio::test]
async fn a_streamed_answer_arrives_in_pieces() {
    let (_, url) = upstream().await;
    let provider = provider(&url, |_| {});
    let pieces = Mutex::new(Vec::new());
    let answer = provider
        .chat_streamed(ask("stream", "hi"), &|piece| {
            pieces.lock().unwrap().push(piece.to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*pieces.lock().unwrap(), ["Hel", "lo", "!"]);
    assert_eq!(answer.content, "Hello!");
    let usage = answer.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 3));
}

#[tokio::test]
async fn a_stream_cut_in_the_middle_is_an_error_not_an_answer() {
    let (upstream, url) = upstream().await;
    let provider = provider(&url, |_| {});
    let pieces = Mutex::new(Vec::new());
    let error = provider
        .chat_streamed(ask("cut", "hi"), &|piece| {
            pieces.lock().unwrap().push(piece.to_owned())
        })
        .await
        .unwrap_err();
    assert!(matches!(error, ProviderError::Malformed(_)), "{error}");
    assert_eq!(error.to_string(), "test: the answer stream was cut off");
    assert_eq!(*pieces.lock().unwrap(), ["Hal"]);
    assert_eq!(
        upstream.calls("cut"),
        1,
        "not retried after a partial answer"
    );
}

#[tokio::test]
async fn retries_honour_retry_after_and_recover_from_5xx() {
    let (upstream, url) = upstream().await;
    let provider = provider(&url, |_| {});
    let started = Instant::now();
    let answer = provider.chat(ask("busy", "hi")).await.unwrap();
    assert_eq!(answer.content, "after the wait");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as Retry-After asked"
    );
    assert_eq!(upstream.calls("busy"), 2);

    let answer = provider.chat(ask("flaky", "hi")).await.unwrap();
    assert_eq!(answer.content, "second time lucky");
    assert_eq!(upstream.calls("flaky"), 2);

    let error = provider.chat(ask("down", "hi")).await.unwrap_err();
    assert_eq!(error.to_string(), "test answered 502: still down");
    assert_eq!(upstream.calls("down"), 3, "bounded attempts");
}

#[tokio::test]
async fn a_slow_answer_times_out_and_garbage_is_not_retried() {
    let (upstream, url) = upstream().await;
    let provider = provider(&url, |c| {
        c.timeout = Duration::from_millis(300);
        c.max_attempts = 2;
    });
    let started = Instant::now();
    let error = provider.chat(ask("slow", "hi")).await.unwrap_err();
    assert!(matches!(error, ProviderError::Timeout(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(upstream.calls("slow"), 2);

    let error = provider.chat(ask("garbage", "hi")).await.unwrap_err();
    assert_eq!(error.to_string(), "test: the answer is not JSON");
    assert_eq!(upstream.calls("garbage"), 1);
}

#[tokio::test]
async fn an_unreachable_provider_is_a_short_error() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let provider = provider(&url, |c| c.max_attempts = 2);
    let error = provider.chat(ask("plain", "hi")).await.unwrap_err();
    assert_eq!(error.to_string(), "test: could not connect");
}

#[tokio::test]
async fn no_error_and_no_debug_output_contains_the_key() {
    let (_, url) = upstream().await;
    let provider = provider(&url, |_| {});
    let error = provider.chat(ask("leaky", "hi")).await.unwrap_err();
    let text = error.to_string();
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(!format!("{error:?}").contains(KEY));
    assert!(!format!("{provider:?}").contains(KEY));
}

#[tokio::test]
async fn dropping_a_call_aborts_the_upstream_request() {
    let (upstream, url) = upstream().await;
    let provider = provider(&url, |_| {});
    let call = provider.chat(ask("hang", "hi"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err()
    );
    let mut abandoned = 0;
    for _ in 0..50 {
        abandoned = upstream.abandoned.load(Ordering::SeqCst);
        if abandoned == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(abandoned, 1, "the upstream saw the request go away");
}

#[tokio::test]
async fn calls_beyond_the_concurrency_cap_wait_their_turn() {
    let (upstream, url) = upstream().await;
    let provider = Arc::new(provider(&url, |c| c.max_concurrency = 2));
    let calls = (0..5).map(|_| {
        let provider = provider.clone();
        tokio::spawn(async move { provider.chat(ask("queue", "hi")).await })
    });
    for call in futures::future::join_all(calls).await {
        assert_eq!(call.unwrap().unwrap().content, "served");
    }
    assert_eq!(upstream.calls("queue"), 5);
    assert_eq!(upstream.most_in_flight.load(Ordering::SeqCst), 2);
}

/// A provider's slots are shared fairly between users: with one slot and
/// user A's four calls already waiting, user B's call is served as soon as
/// A's running call is done, not after all of A's (the queue used to be
/// first come, first served, so one user could hold every slot).
#[tokio::test]
async fn a_providers_slots_are_shared_fairly_between_users() {
    let (upstream, url) = upstream().await;
    let provider = Arc::new(provider(&url, |c| c.max_concurrency = 1));
    let order = Arc::new(Mutex::new(Vec::new()));
    let call = |party: u128, name: &'static str| {
        let (provider, order) = (provider.clone(), order.clone());
        tokio::spawn(async move {
            let answer = provider
                .chat(ask("queue", "hi").for_party(party))
                .await
                .unwrap();
            assert_eq!(answer.content, "served");
            order.lock().unwrap().push(name);
        })
    };
    let mut calls = Vec::new();
    for name in ["a1", "a2", "a3", "a4"] {
        calls.push(call(1, name));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    calls.push(call(2, "b1"));
    for call in calls {
        call.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order[0], "a1", "{order:?}");
    assert_eq!(
        order[1], "b1",
        "B did not wait for all of A's calls: {order:?}"
    );
    assert_eq!(upstream.most_in_flight.load(Ordering::SeqCst), 1);
}
