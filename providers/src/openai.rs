//! A client for any OpenAI-compatible chat completions API: Kimi
//! (Moonshot), GLM (Z.ai), OpenAI, or a local server.
//!
//! `POST {base_url}/chat/completions`, as a whole JSON answer or as a
//! server-sent event stream of deltas. Around each call: a per-provider cap
//! on calls in flight (the rest wait their turn), connect and overall
//! timeouts, and retries with jittered exponential backoff on connection
//! errors, 429 and 5xx, honouring `Retry-After`, for a bounded number of
//! attempts. A call whose future is dropped aborts its HTTP request.
//! Errors are short and never contain the key.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use exai_auth::Secret;
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::{ChatRequest, ChatResponse, Provider, ProviderError, Role, Usage};

/// How one provider is reached and how hard it is pushed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OpenAiConfig {
    /// The provider's name (`kimi`, `glm`, `openai`, …).
    pub name: String,
    /// The API's base URL, up to and excluding `/chat/completions`.
    pub base_url: String,
    /// The API key, sent as `Authorization: Bearer …`; none for a local
    /// server that wants none.
    pub api_key: Option<Secret>,
    /// The models it serves.
    pub models: Vec<String>,
    /// Calls in flight at once; more wait in line.
    pub max_concurrency: usize,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one attempt may take, answer included.
    pub timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// The first retry's delay; doubled per retry (with jitter), capped at
    /// `max_backoff`.
    pub backoff: Duration,
    /// The longest wait between attempts, `Retry-After` included.
    pub max_backoff: Duration,
}

impl OpenAiConfig {
    /// `name` at `base_url`, serving `models`, with default limits: 4
    /// calls at once, 10 s to connect, 120 s per attempt, 3 attempts.
    pub fn new(name: impl Into<String>, base_url: impl Into<String>, models: Vec<String>) -> Self {
        OpenAiConfig {
            name: name.into(),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            api_key: None,
            models,
            max_concurrency: 4,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(120),
            max_attempts: 3,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// With `key`.
    pub fn with_api_key(mut self, key: Secret) -> Self {
        self.api_key = Some(key);
        self
    }
}

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAiProvider {
    config: OpenAiConfig,
    http: reqwest::Client,
    /// Calls in flight, at most `max_concurrency`, shared fairly between
    /// the parties asking.
    slots: Arc<crate::fair::FairSlots>,
}

impl OpenAiProvider {
    /// A provider for `config`.
    pub fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|_| ProviderError::Unavailable("could not build the HTTP client".into()))?;
        Ok(OpenAiProvider {
            slots: Arc::new(crate::fair::FairSlots::new(config.max_concurrency)),
            config,
            http,
        })
    }

    /// One call, retried as configured; `on_delta` gets each piece of a
    /// streamed answer.
    async fn call(
        &self,
        request: &ChatRequest,
        on_delta: Option<&(dyn for<'s> Fn(&'s str) + Send + Sync)>,
    ) -> Result<ChatResponse, ProviderError> {
        if !self.config.models.contains(&request.model) {
            return Err(ProviderError::UnknownModel(request.model.clone()));
        }
        let party = request.party.unwrap_or_else(crate::fair::anonymous);
        let _slot = self.slots.acquire(party).await;
        let mut attempt = 1;
        loop {
            let outcome =
                tokio::time::timeout(self.config.timeout, self.attempt(request, on_delta)).await;
            let error = match outcome {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) => error,
                Err(_) => Failure::retry(ProviderError::Timeout(self.config.timeout)),
            };
            if !error.retry || attempt >= self.config.max_attempts {
                return Err(error.error);
            }
            let delay = error
                .retry_after
                .unwrap_or_else(|| self.backoff(attempt))
                .min(self.config.max_backoff);
            tracing::debug!(
                provider = %self.config.name,
                attempt,
                error = %error.error,
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Jittered exponential backoff before attempt `attempt + 1`: a delay
    /// drawn from the upper half of `backoff × 2^(attempt-1)`, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .backoff
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.config.max_backoff);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random_range(0.0..=1.0))
    }

    async fn attempt(
        &self,
        request: &ChatRequest,
        on_delta: Option<&(dyn for<'s> Fn(&'s str) + Send + Sync)>,
    ) -> Result<ChatResponse, Failure> {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                json!({"role": role, "content": m.content})
            })
            .collect();
        let streaming = on_delta.is_some();
        let mut body = json!({"model": request.model, "messages": messages, "stream": streaming});
        if streaming {
            body["stream_options"] = json!({"include_usage": true});
        }
        let mut http = self
            .http
            .post(format!("{}/chat/completions", self.config.base_url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = &self.config.api_key {
            let key = String::from_utf8_lossy(key.expose());
            http = http.header("authorization", format!("Bearer {key}"));
        }
        let response = http.send().await.map_err(|error| {
            // reqwest's message names the URL, never the headers.
            let what = if error.is_connect() {
                "could not connect"
            } else {
                "the request failed"
            };
            Failure::retry(ProviderError::Unavailable(format!(
                "{}: {what}",
                self.config.name
            )))
        })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response.text().await.unwrap_or_default();
            let message = self.clean(&upstream_message(&text));
            let error = ProviderError::Upstream {
                provider: self.config.name.clone(),
                status: status.as_u16(),
                message,
            };
            let retry = status.as_u16() == 429 || status.is_server_error();
            return Err(Failure {
                error,
                retry,
                retry_after,
            });
        }
        if streaming {
            self.read_stream(
                response.bytes_stream(),
                request,
                on_delta.unwrap_or(&|_| {}),
            )
            .await
        } else {
            let text = response
                .text()
                .await
                .map_err(|_| Failure::retry(self.malformed("the answer was cut off")))?;
            self.parse_answer(&text, request)
                .map_err(Failure::final_error)
        }
    }

    fn parse_answer(
        &self,
        text: &str,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let answer: Value =
            serde_json::from_str(text).map_err(|_| self.malformed("the answer is not JSON"))?;
        let content = answer["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| self.malformed("the answer has no message"))?;
        Ok(ChatResponse {
            model: answer["model"]
                .as_str()
                .unwrap_or(&request.model)
                .to_owned(),
            content: content.to_owned(),
            usage: usage(&answer["usage"]),
        })
    }

    /// Reads a server-sent event stream of deltas (parsed by `sse-stream`)
    /// from the body's chunks until `data: [DONE]`.
    pub(crate) async fn read_stream<E: std::error::Error + Send + Sync + 'static>(
        &self,
        body: impl futures::Stream<Item = Result<bytes::Bytes, E>>,
        request: &ChatRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ChatResponse, Failure> {
        // The stream ending (or breaking) before `[DONE]` means what came is
        // not the whole answer; retrying would repeat what was streamed.
        let cut_off = || Failure::final_error(self.malformed("the answer stream was cut off"));
        let mut events = std::pin::pin!(sse_stream::SseStream::from_bytes_stream(body));
        let mut content = String::new();
        let mut usage_seen = None;
        let mut model = None;
        while let Some(event) = events.next().await {
            let Some(data) = event.map_err(|_| cut_off())?.data else {
                continue;
            };
            if data.trim() == "[DONE]" {
                return Ok(ChatResponse {
                    model: model.unwrap_or_else(|| request.model.clone()),
                    content,
                    usage: usage_seen,
                });
            }
            let event: Value = serde_json::from_str(&data).map_err(|_| {
                Failure::final_error(self.malformed("an event of the answer stream is not JSON"))
            })?;
            // A server whose generation fails after the headers went out
            // says so in an event of its own; what came before is not the
            // whole answer.
            if let Some(error) = event.get("error") {
                let message = error["message"].as_str().unwrap_or("no message");
                return Err(Failure::final_error(ProviderError::Unavailable(format!(
                    "{}: the answer stream failed: {}",
                    self.config.name,
                    self.clean(message)
                ))));
            }
            if let Some(delta) = event["choices"][0]["delta"]["content"].as_str()
                && !delta.is_empty()
            {
                on_delta(delta);
                content.push_str(delta);
            }
            if let Some(u) = usage(&event["usage"]) {
                usage_seen = Some(u);
            }
            if model.is_none() {
                model = event["model"].as_str().map(str::to_owned);
            }
        }
        Err(cut_off())
    }

    fn malformed(&self, what: &str) -> ProviderError {
        ProviderError::Malformed(format!("{}: {what}", self.config.name))
    }

    /// `text` without the key, in case an upstream echoed it, and short.
    fn clean(&self, text: &str) -> String {
        let mut text: String = text.chars().take(200).collect();
        if let Some(key) = &self.config.api_key {
            let key = String::from_utf8_lossy(key.expose());
            if !key.is_empty() {
                text = text.replace(key.as_ref(), "[redacted]");
            }
        }
        text
    }
}

/// Why an attempt failed, and whether another may succeed.
pub(crate) struct Failure {
    error: ProviderError,
    retry: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn retry(error: ProviderError) -> Self {
        Failure {
            error,
            retry: true,
            retry_after: None,
        }
    }

    fn final_error(error: ProviderError) -> Self {
        Failure {
            error,
            retry: false,
            retry_after: None,
        }
    }
}

/// The message of an OpenAI-style error body (`{"error": {"message": …}}`),
/// or the body itself.
fn upstream_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["message"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.trim().to_owned())
}

fn usage(usage: &Value) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: usage["prompt_tokens"].as_u64()?,
        completion_tokens: usage["completion_tokens"].as_u64()?,
    })
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn models(&self) -> Vec<String> {
        self.config.models.clone()
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.call(&request, None).await
    }

    async fn chat_streamed(
        &self,
        request: ChatRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ChatResponse, ProviderError> {
        self.call(&request, Some(on_delta)).await
    }
}
