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
//!
//! Streams are shaped as the real APIs shape them (OpenAI's chat
//! completions, and Kimi's and GLM's compatible ones): a first delta with
//! only the role, `finish_reason` on the last content delta, usage only
//! when the request asked for it (`stream_options.include_usage`), and
//! events split across reads. A model whose name contains `thinking`
//! streams `reasoning_content` first, as Kimi's and GLM's thinking models
//! do; the model `broken-stream` fails midway with an error event, as
//! servers do when generation fails after the headers went out. A server
//! made [`ModelApi::with_key`] refuses any other key with 401 and the
//! error body OpenAI sends.

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
    /// The one key accepted, if the server checks keys.
    key: Option<String>,
}

impl ModelApi {
    /// A server answering at once.
    pub async fn start() -> ModelApi {
        ModelApi::with_delay(Duration::ZERO).await
    }

    /// A server that takes `delay` before each answer (between each piece
    /// of a streamed one).
    pub async fn with_delay(delay: Duration) -> ModelApi {
        ModelApi::serve(delay, None).await
    }

    /// A server answering at once, to requests bearing `key` only.
    pub async fn with_key(key: &str) -> ModelApi {
        ModelApi::serve(Duration::ZERO, Some(key.to_owned())).await
    }

    async fn serve(delay: Duration, key: Option<String>) -> ModelApi {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            requests: requests.clone(),
            keys: keys.clone(),
            delay,
            key,
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

    /// Waits until `n` requests have come (a call has reached the model:
    /// the signal tests wait for, rather than a guessed sleep).
    pub async fn wait_for(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} requests never came (got {})",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
    state.keys.lock().unwrap().push(key.clone());
    if let Some(expected) = &state.key
        && key.as_deref() != Some(expected.as_str())
    {
        // What OpenAI answers a wrong key (Kimi and GLM alike, in shape).
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error",
                "code": "invalid_api_key"
            }})),
        )
            .into_response();
    }
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
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({"id": "chatcmpl-local", "object": "chat.completion.chunk", "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    // The role alone, (reasoning,) the answer in pieces of a few words,
    // the last with its finish_reason, the usage if asked for, [DONE].
    let mut events: Vec<Value> = vec![chunk(json!({"role": "assistant"}), None)];
    if model.contains("thinking") {
        for thought in ["Let me think. ", "The user wants an answer. "] {
            events.push(chunk(json!({"reasoning_content": thought}), None));
        }
    }
    let words: Vec<&str> = content.split_inclusive(' ').collect();
    let pieces: Vec<String> = words.chunks(3).map(|piece| piece.concat()).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let finish = (i + 1 == pieces.len()).then_some("stop");
        events.push(chunk(json!({"content": piece}), finish));
    }
    if model == "broken-stream" {
        events.truncate(2);
        events.push(json!({"error": {"message": "generation failed", "type": "server_error"}}));
    }
    let mut texts: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if request["stream_options"]["include_usage"] == json!(true) && model != "broken-stream" {
        texts.push(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-local", "object": "chat.completion.chunk",
                   "model": model, "choices": [], "usage": usage})
        ));
    }
    if model != "broken-stream" {
        texts.push("data: [DONE]\n\n".to_owned());
    }
    // Each event split in two reads, as networks deliver them.
    let reads: Vec<String> = texts
        .iter()
        .flat_map(|text| {
            let cut = text.len() / 2;
            let cut = (0..=cut)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            [text[..cut].to_owned(), text[cut..].to_owned()]
        })
        .collect();
    let delay = state.delay;
    let stream =
        futures::stream::iter(reads.into_iter().enumerate()).then(move |(i, read)| async move {
            if i % 2 == 0 {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::convert::Infallible>(read)
        });
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(stream))
        .unwrap()
}
