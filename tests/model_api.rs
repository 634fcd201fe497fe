//! A local OpenAI-compatible chat completions server for the daemon's
//! tests: it answers as the API does, as JSON or, when asked to stream, as
//! server-sent events in several pieces; it keeps every request it got, so
//! a test can see what the daemon sent (history, system prompts) and how
//! often it asked.
//!
//! Each answer is distinct and says what was heard:
//! `"{model} #{n}: heard {k} messages; last: {prompt}"`, where `n` counts
//! the server's requests. Usage is reported as `k` prompt tokens and 3
//! completion tokens.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use futures::StreamExt as _;
use serde_json::{Value, json};

/// A running local model API.
pub struct ModelApi {
    /// The base URL (`http://127.0.0.1:PORT/v1`), for `OpenAiConfig`.
    pub url: String,
    requests: Arc<Mutex<Vec<Value>>>,
    keys: Arc<Mutex<Vec<Option<String>>>>,
    _task: tokio::task::JoinHandle<()>,
}

struct State {
    requests: Arc<Mutex<Vec<Value>>>,
    keys: Arc<Mutex<Vec<Option<String>>>>,
    delay: Duration,
}

impl ModelApi {
    /// A server answering at once.
    pub async fn start() -> ModelApi {
        ModelApi::with_delay(Duration::ZERO).await
    }

    /// A server that takes `delay` before each answer (between each piece
    /// of a streamed one).
    pub async fn with_delay(delay: Duration) -> ModelApi {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            requests: requests.clone(),
            keys: keys.clone(),
            delay,
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(answer))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ModelApi {
            url,
            requests,
            keys,
            _task: task,
        }
    }

    /// Every request body received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// The bearer key of each request (`None`: no `Authorization`).
    pub fn keys(&self) -> Vec<Option<String>> {
        self.keys.lock().unwrap().clone()
    }

    /// How many requests came.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn answer(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::response::Response {
    let request: Value = serde_json::from_str(&body).unwrap();
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    state.keys.lock().unwrap().push(key);
    let n = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(request.clone());
        requests.len()
    };
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last = messages
        .last()
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let content = format!(
        "{model} #{n}: heard {} messages; last: {last}",
        messages.len()
    );
    let usage = json!({"prompt_tokens": messages.len(), "completion_tokens": 3});
    if request["stream"] != json!(true) {
        tokio::time::sleep(state.delay).await;
        return axum::Json(json!({
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": usage,
        }))
        .into_response();
    }
    // The answer in pieces of a few words, then the usage, then [DONE].
    let mut events: Vec<String> = Vec::new();
    let words: Vec<&str> = content.split_inclusive(' ').collect();
    for piece in words.chunks(3) {
        let delta = json!({"choices": [{"index": 0, "delta": {"content": piece.concat()}}]});
        events.push(format!("data: {delta}\n\n"));
    }
    events.push(format!(
        "data: {}\n\n",
        json!({"choices": [], "usage": usage})
    ));
    events.push("data: [DONE]\n\n".to_owned());
    let delay = state.delay;
    let stream = futures::stream::iter(events).then(move |event| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, std::convert::Infallible>(event)
    });
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(stream))
        .unwrap()
}
