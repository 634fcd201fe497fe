//! AI model providers behind one trait.
//!
//! The daemon's tools talk to a [`Provider`], never to a vendor's API, so a
//! tool does not care whether the answer came from Kimi, GLM, any
//! OpenAI-compatible endpoint ([`OpenAiProvider`]: retries, timeouts, a
//! concurrency cap, streamed answers), or the offline [`EchoProvider`] that
//! tests and a fresh install use.
//!
//! # Example
//!
//! ```
//! use exai_providers::{ChatMessage, ChatRequest, EchoProvider, Provider, Role};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let provider = EchoProvider::default();
//! let request = ChatRequest::new("echo", vec![ChatMessage::new(Role::User, "hello")]);
//! // The answer as it comes (here: whole, the echo model does not stream).
//! let streamed = std::sync::Mutex::new(String::new());
//! let on_delta = |piece: &str| streamed.lock().unwrap().push_str(piece);
//! let answer = provider.chat_streamed(request.clone(), &on_delta).await?;
//! assert_eq!(answer.content, "[echo] hello");
//! assert_eq!(*streamed.lock().unwrap(), answer.content);
//! assert_eq!(provider.chat(request).await?.content, answer.content);
//! # Ok::<(), exai_providers::ProviderError>(())
//! # }).unwrap();
//! ```
//!
//! [`OpenAiProvider`] is asked the same way; `examples/chat.rs` streams an
//! answer from any OpenAI-compatible endpoint to stdout (`cargo run -p
//! exai-providers --example chat -- --base-url URL --model M PROMPT`).

mod echo;
mod fair;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod openai;
mod registry;

use async_trait::async_trait;

pub use echo::EchoProvider;
pub use fair::Party;
pub use openai::{OpenAiConfig, OpenAiProvider};
pub use registry::{
    GLM_DEFAULT_MODEL, GLM_MODELS, GLM_URL, KIMI_MODELS, KIMI_URL, Providers, UnservedDefault,
};

/// Who said a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The user's words.
    User,
    /// The model's words.
    Assistant,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// A chat completion request.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChatRequest {
    /// The model to ask.
    pub model: String,
    /// The conversation so far, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Who the call is made for: a provider's slots are shared fairly
    /// between parties (the daemon passes the user). `None`: a party of
    /// its own.
    pub party: Option<Party>,
}

impl ChatRequest {
    /// A request to `model` with `messages`.
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        ChatRequest {
            model: model.into(),
            messages,
            party: None,
        }
    }

    /// The same request, made for `party`.
    pub fn for_party(mut self, party: Party) -> Self {
        self.party = Some(party);
        self
    }
}

/// Token counts reported by a provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens in the answer.
    pub completion_tokens: u64,
}

/// A provider's answer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChatResponse {
    /// The model that answered.
    pub model: String,
    /// The answer text.
    pub content: String,
    /// Token counts, when the provider reports them.
    pub usage: Option<Usage>,
}

/// Why a provider call failed. Messages are short and never contain a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// No configured provider serves this model.
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    /// The request is not one the provider can answer.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The provider could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// An attempt took longer than allowed.
    #[error("the model took longer than {} s to answer", .0.as_secs())]
    Timeout(std::time::Duration),
    /// The provider answered with an error status.
    #[error("{provider} answered {status}: {message}")]
    Upstream {
        /// Which provider.
        provider: String,
        /// The HTTP status.
        status: u16,
        /// Its message, shortened, without any key.
        message: String,
    },
    /// The provider's answer could not be read.
    #[error("{0}")]
    Malformed(String),
}

/// A source of chat completions. Dropping the future returned by
/// [`Provider::chat`] abandons the call.
#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug + 'static {
    /// The provider's name (`echo`, `kimi`, `glm`, …).
    fn name(&self) -> &str;

    /// The models it serves.
    fn models(&self) -> Vec<String>;

    /// Answers `request`.
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError>;

    /// Answers `request`, handing each piece of the answer to `on_delta`
    /// as it comes. Providers that cannot stream answer whole.
    async fn chat_streamed(
        &self,
        request: ChatRequest,
        on_delta: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<ChatResponse, ProviderError> {
        let answer = self.chat(request).await?;
        on_delta(&answer.content);
        Ok(answer)
    }
}
