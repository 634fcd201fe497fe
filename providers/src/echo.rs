//! The offline provider: answers with the prompt it got.

use async_trait::async_trait;

use crate::{ChatRequest, ChatResponse, Provider, ProviderError, Role, Usage};

/// Answers every request with its last user message, tagged with the model
/// name: `[echo] hello`. Needs no network and no key. It may be made to
/// take its time ([`EchoProvider::with_delay`]), to see progress reports,
/// timeouts and cancellation without a model.
#[derive(Debug, Default, Clone)]
pub struct EchoProvider {
    delay: std::time::Duration,
}

impl EchoProvider {
    /// The one model this provider serves.
    pub const MODEL: &'static str = "echo";

    /// An echo that answers after `delay`.
    pub fn with_delay(delay: std::time::Duration) -> Self {
        EchoProvider { delay }
    }
}

#[async_trait]
impl Provider for EchoProvider {
    fn name(&self) -> &str {
        "echo"
    }

    fn models(&self) -> Vec<String> {
        vec![Self::MODEL.to_owned()]
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        if request.model != Self::MODEL {
            return Err(ProviderError::UnknownModel(request.model));
        }
        let prompt = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .ok_or_else(|| ProviderError::InvalidRequest("no user message".to_owned()))?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let words = |s: &str| s.split_whitespace().count() as u64;
        Ok(ChatResponse {
            content: format!("[{}] {}", request.model, prompt.content),
            usage: Some(Usage {
                prompt_tokens: request.messages.iter().map(|m| words(&m.content)).sum(),
                completion_tokens: words(&prompt.content) + 1,
            }),
            model: request.model,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatMessage;

    #[tokio::test]
    async fn echoes_the_last_user_message_tagged_with_the_model() {
        let request = ChatRequest::new(
            "echo",
            vec![
                ChatMessage::new(Role::System, "be brief"),
                ChatMessage::new(Role::User, "hello there"),
            ],
        );
        let answer = EchoProvider::default().chat(request).await.unwrap();
        assert_eq!(answer.content, "[echo] hello there");
        assert_eq!(answer.usage.unwrap().prompt_tokens, 4);
    }

    #[tokio::test]
    async fn refuses_other_models_and_empty_prompts() {
        let err = EchoProvider::default()
            .chat(ChatRequest::new("gpt", vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "unknown model 'gpt'");
        let err = EchoProvider::default()
            .chat(ChatRequest::new("echo", vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "invalid request: no user message");
    }
}
