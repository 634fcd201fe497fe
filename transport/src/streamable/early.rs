//! A stateless (2026-07-28) request's answer that takes time: its response
//! head goes out at once and SSE keep-alives follow on the session
//! interval until the answer, as a session's streams do. Without this a
//! `tools/call` on a real model is minutes of silence, which proxies (nginx
//! cuts at 60 s by default) and clients take for a dead server.
//!
//! A quick answer (within [`HEAD_WITHIN`]: anything `rmcp` refuses, and
//! most calls) is passed on as `rmcp` made it, status and all. A slow one
//! is committed to `200 text/event-stream`: its SSE events are passed on as
//! they come, a JSON answer becomes one event, and an HTTP error (which
//! `rmcp` gives only before a handler runs, so not here in practice)
//! becomes a JSON-RPC error event for the request.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How long an answer may take before the head is sent without it.
pub(super) const HEAD_WITHIN: Duration = Duration::from_millis(50);

/// What the channel carries: one SSE frame.
type Frame = Result<Bytes, std::io::Error>;

/// `answer` (to the request with JSON-RPC `id`), its head sent within
/// [`HEAD_WITHIN`] and the stream kept alive every `keep_alive` until it
/// comes. A client that goes away drops the answer, which cancels it.
pub(super) async fn answer_early(
    answer: impl Future<Output = Response> + Send + 'static,
    keep_alive: Duration,
    id: Option<Value>,
) -> Response {
    let mut answer = Box::pin(answer);
    if let Ok(response) = tokio::time::timeout(HEAD_WITHIN, &mut answer).await {
        return response;
    }
    let (tx, mut rx) = mpsc::channel::<Frame>(16);
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + keep_alive;
        let mut ticks = tokio::time::interval_at(start, keep_alive);
        let response = loop {
            tokio::select! {
                response = &mut answer => break response,
                () = tx.closed() => return,
                _ = ticks.tick() => {
                    if tx.send(Ok(Bytes::from_static(b":\n\n"))).await.is_err() {
                        return;
                    }
                }
            }
        };
        forward(response, id, &tx).await;
    });
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Passes `response` on as SSE events.
async fn forward(response: Response, id: Option<Value>, tx: &mpsc::Sender<Frame>) {
    let status = response.status();
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    let mut body = response.into_body().into_data_stream();
    if status.is_success() && is_sse {
        while let Some(frame) = body.next().await {
            if tx.send(frame.map_err(std::io::Error::other)).await.is_err() {
                return;
            }
        }
        return;
    }
    let mut text = Vec::new();
    while let Some(Ok(frame)) = body.next().await {
        text.extend_from_slice(&frame);
    }
    let message: Value = match serde_json::from_slice(&text) {
        Ok(message) if status.is_success() => message,
        _ => json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": -32603,
            "message": format!("HTTP {}: {}", status.as_u16(), String::from_utf8_lossy(&text).trim()),
        }}),
    };
    let event = format!("data: {message}\n\n");
    let _ = tx.send(Ok(Bytes::from(event))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_answer_is_passed_on_as_it_is() {
        let answer = async { (StatusCode::BAD_REQUEST, "no").into_response_body() };
        let response = answer_early(answer, Duration::from_secs(1), None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body_of(response).await, "no");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_json_answer_comes_after_keep_alives_as_one_event() {
        let answer = async {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            let mut response = Response::new(Body::from(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            response
        };
        let response = answer_early(answer, Duration::from_secs(1), Some(json!(7))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let body = body_of(response).await;
        assert_eq!(
            body, ":\n\n:\n\n:\n\ndata: {\"id\":7,\"jsonrpc\":\"2.0\",\"result\":{}}\n\n",
            "a keep-alive each second after the head, then the answer"
        );
    }

    trait IntoResponseBody {
        fn into_response_body(self) -> Response;
    }

    impl IntoResponseBody for (StatusCode, &'static str) {
        fn into_response_body(self) -> Response {
            let mut response = Response::new(Body::from(self.1));
            *response.status_mut() = self.0;
            response
        }
    }
}
