//! Tools that ask models: one model with a system prompt (`chat`,
//! `thinkdeep`, …), several at once (`consensus`).
//!
//! Every provider call goes through [`ExaiServer::call_model`], which keeps
//! the per-call budget (`EXAI_MAX_PROVIDER_CALLS_PER_TOOL`), observes the
//! call in the metrics and records it in the caller's usage — also when the
//! call is cancelled or times out, as `cancelled`. Conversations are the
//! caller's own: a `continuation_id` is minted by the store for this user,
//! and another user's is answered exactly like one that never existed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use exai_auth::Principal;
use exai_providers::{ChatMessage, ChatRequest, ChatResponse, Provider, ProviderError, Role};
use exai_sessions::{ConversationId, SessionStore, StoreError, Turn, UsageRecord};
use rmcp::ErrorData as McpError;
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Map, Value, json};

use super::catalog::{CONSENSUS_JUDGE, CONSENSUS_VOICE};
use super::{Call, ExaiServer, Level, store_trouble, tool_error};

/// The longest model name or handle quoted back in an error.
const QUOTED: usize = 64;

fn quoted(text: &str) -> String {
    text.chars().take(QUOTED).collect()
}

fn string_argument<'a>(
    arguments: &'a Map<String, Value>,
    name: &str,
    tool: &str,
) -> Result<Option<&'a str>, McpError> {
    match arguments.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(McpError::invalid_params(
            format!("{tool}: '{name}' must be a string"),
            None,
        )),
    }
}

fn prompt<'a>(arguments: &'a Map<String, Value>, tool: &str) -> Result<&'a str, McpError> {
    string_argument(arguments, "prompt", tool)?.ok_or_else(|| {
        McpError::invalid_params(format!("{tool} needs a string argument 'prompt'"), None)
    })
}

/// Records a provider call in the caller's usage when dropped unfinished:
/// a cancelled or timed-out call is still a call.
struct Unfinished<'a> {
    server: &'a ExaiServer,
    record: Option<UsageRecord>,
    start: Instant,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        record.latency = self.start.elapsed();
        let store: Arc<dyn SessionStore> = self.server.tools.store.clone();
        let principal: Arc<Principal> = self.server.connection.principal.clone();
        tokio::spawn(async move {
            if let Err(error) = store.record_usage(&principal, record).await {
                tracing::warn!(error = %error, "could not record a cancelled provider call");
            }
        });
    }
}

impl ExaiServer {
    /// The provider serving `model`, or the tool error naming what can be asked.
    fn route(&self, model: &str) -> Result<Arc<dyn Provider>, CallToolResult> {
        let providers = &self.tools.providers;
        providers.route(model).cloned().ok_or_else(|| {
            let models: Vec<String> = providers.all().iter().flat_map(|p| p.models()).collect();
            tool_error(format!(
                "unknown model '{}' (available: {})",
                quoted(model),
                models.join(", ")
            ))
        })
    }

    /// One provider call, within the call's budget; observed, logged, and
    /// recorded in the caller's usage however it ends.
    async fn call_model(
        &self,
        call: &Call<'_>,
        provider: &dyn Provider,
        request: ChatRequest,
        stream: bool,
    ) -> Result<ChatResponse, ProviderError> {
        // A provider's slots are shared fairly between the users asking.
        let request = request.for_party(self.connection.principal.user_id.as_uuid().as_u128());
        let max = self.limits().max_provider_calls;
        if call
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_err()
        {
            return Err(ProviderError::InvalidRequest(format!(
                "this request already made {max} provider calls, the most one tool call may \
                 make (EXAI_MAX_PROVIDER_CALLS_PER_TOOL)"
            )));
        }
        // A routed model is one of the provider's own: a bounded label.
        let model = request.model.clone();
        let principal = &self.connection.principal;
        let mut unfinished = Unfinished {
            server: self,
            record: Some(
                UsageRecord::new(call.tool, provider.name(), &model, "cancelled")
                    .in_session(self.connection.session_id.clone()),
            ),
            start: Instant::now(),
        };
        let answer = match (&call.deltas, stream) {
            (Some(deltas), true) => {
                let on_delta = |piece: &str| {
                    let _ = deltas.send(piece.to_owned());
                };
                provider.chat_streamed(request, &on_delta).await
            }
            _ => provider.chat(request).await,
        };
        let took = unfinished.start.elapsed();
        let outcome = if answer.is_ok() { "ok" } else { "error" };
        let tokens = answer
            .as_ref()
            .ok()
            .and_then(|a| a.usage)
            .map(|u| (u.prompt_tokens, u.completion_tokens));
        let mut record = unfinished.record.take().expect("set above");
        record.latency = took;
        record.outcome = outcome.to_owned();
        if let Some((prompt, completion)) = tokens {
            record = record.with_tokens(prompt, completion);
        }
        self.tools
            .metrics
            .provider_call(provider.name(), &model, outcome, took, tokens);
        if let Err(error) = self.tools.store.record_usage(principal, record).await {
            tracing::warn!(error = %error, "could not record a provider call");
        }
        self.log(
            call.context,
            Level::Info,
            json!({"tool": call.tool, "model": model, "outcome": outcome, "ms": took.as_millis() as u64}),
        )
        .await;
        answer
    }

    /// Asks a model `prompt`, after `system` when the tool has one, in a
    /// new conversation or the caller's own `continuation_id`.
    pub(super) async fn ask(
        &self,
        call: &Call<'_>,
        system: Option<&'static str>,
        arguments: &Map<String, Value>,
    ) -> Result<CallToolResult, McpError> {
        let tool = call.tool;
        let prompt = prompt(arguments, tool)?;
        let model = string_argument(arguments, "model", tool)?
            .unwrap_or_else(|| self.tools.providers.default_model());
        let continuation = string_argument(arguments, "continuation_id", tool)?;
        let provider = match self.route(model) {
            Ok(provider) => provider,
            Err(unknown) => return Ok(unknown),
        };
        let principal = &self.connection.principal;
        let store = &self.tools.store;
        let limits = &self.limits().conversations;
        let history = match continuation {
            None => Vec::new(),
            Some(id) => {
                let id = ConversationId::from_client(id);
                match store.read_conversation(principal, &id, limits).await {
                    Ok(turns) => turns,
                    Err(StoreError::NotFound) => {
                        return Ok(tool_error(format!(
                            "unknown continuation_id '{}': no such conversation of yours (they \
                             end {} h after their last turn); leave continuation_id out to start \
                             a new one",
                            quoted(id.as_str()),
                            limits.timeout.as_secs() / 3600
                        )));
                    }
                    Err(error) => return Ok(store_trouble(&error)),
                }
            }
        };
        // A question and its answer are two turns.
        if history.len() + 2 > limits.max_turns {
            return Ok(tool_error(format!(
                "this conversation has reached its limit of {} turns (MAX_CONVERSATION_TURNS); \
                 leave continuation_id out to start a new one",
                limits.max_turns
            )));
        }
        let mut messages = Vec::with_capacity(history.len() + 2);
        if let Some(system) = system {
            messages.push(ChatMessage::new(Role::System, system));
        }
        for turn in &history {
            let role = if turn.role == "assistant" {
                Role::Assistant
            } else {
                Role::User
            };
            messages.push(ChatMessage::new(role, turn.content.clone()));
        }
        messages.push(ChatMessage::new(Role::User, prompt));
        let answer = match self
            .call_model(
                call,
                provider.as_ref(),
                ChatRequest::new(model, messages),
                true,
            )
            .await
        {
            Ok(answer) => answer,
            Err(error) => return Ok(tool_error(error.to_string())),
        };
        let saved = self
            .remember(
                continuation.map(ConversationId::from_client),
                prompt,
                &answer.content,
            )
            .await;
        let (note, continuation_id, turns) = match saved {
            Ok((id, turns)) => (
                format!(
                    "continuation_id: {id} (pass it back as continuation_id to continue this \
                     conversation; {turns} of {} turns used)",
                    limits.max_turns
                ),
                Some(id),
                Some(turns),
            ),
            Err(StoreError::ConversationTooLarge { max }) => (
                format!(
                    "this exchange was not saved, so no continuation_id is offered: it is larger \
                     than all of a user's conversations may be ({max} bytes, \
                     EXAI_USER_CONVERSATION_BYTES)"
                ),
                None,
                None,
            ),
            Err(error) => {
                tracing::warn!(error = %error, "could not save a conversation turn");
                (
                    "this exchange could not be saved (the session store is unavailable), so no \
                     continuation_id is offered"
                        .to_owned(),
                    None,
                    None,
                )
            }
        };
        let mut result = CallToolResult::success(vec![
            ContentBlock::text(answer.content.clone()),
            ContentBlock::text(note),
        ]);
        result.structured_content = Some(json!({
            "answer": answer.content,
            "model": answer.model,
            "continuation_id": continuation_id,
            "turns": turns,
            "usage": answer.usage.map(|u| json!({
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
            })),
        }));
        Ok(result)
    }

    /// Appends the exchange to the conversation (a new one when `into` is
    /// `None`); returns its handle and how many turns it holds.
    async fn remember(
        &self,
        into: Option<ConversationId>,
        prompt: &str,
        answer: &str,
    ) -> Result<(ConversationId, usize), StoreError> {
        let principal = &self.connection.principal;
        let store = &self.tools.store;
        let limits = &self.limits().conversations;
        let exchange = [Turn::new("user", prompt), Turn::new("assistant", answer)];
        match into {
            Some(id) => {
                let turns = store
                    .append_turns(principal, &id, &exchange, limits)
                    .await?;
                Ok((id, turns))
            }
            None => {
                let id = store
                    .create_conversation(principal, &exchange, limits)
                    .await?;
                Ok((id, exchange.len()))
            }
        }
    }

    /// Asks each model once, at the same time, then has one combine the answers.
    pub(super) async fn consensus(
        &self,
        call: &Call<'_>,
        arguments: &Map<String, Value>,
    ) -> Result<CallToolResult, McpError> {
        let tool = call.tool;
        let prompt = prompt(arguments, tool)?;
        let providers = &self.tools.providers;
        let models: Vec<String> = match arguments.get("models") {
            None | Some(Value::Null) => providers
                .all()
                .iter()
                .filter_map(|p| {
                    let models = p.models();
                    let default = providers.default_model();
                    if models.iter().any(|m| m == default) {
                        Some(default.to_owned())
                    } else {
                        models.into_iter().next()
                    }
                })
                .collect(),
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|m| m.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    McpError::invalid_params("consensus: 'models' must be strings", None)
                })?,
            Some(_) => {
                return Err(McpError::invalid_params(
                    "consensus: 'models' must be a non-empty array of model names",
                    None,
                ));
            }
        };
        let judge =
            string_argument(arguments, "model", tool)?.unwrap_or_else(|| providers.default_model());
        let mut routed = Vec::with_capacity(models.len());
        for model in &models {
            match self.route(model) {
                Ok(provider) => routed.push((model.as_str(), provider)),
                Err(unknown) => return Ok(unknown),
            }
        }
        let judge_provider = match self.route(judge) {
            Ok(provider) => provider,
            Err(unknown) => return Ok(unknown),
        };
        // Refuse before asking anyone rather than stop halfway.
        let needed = models.len() + usize::from(models.len() > 1);
        let max = self.limits().max_provider_calls;
        if needed > max {
            return Ok(tool_error(format!(
                "consensus over {} models needs {needed} provider calls; one tool call may make \
                 at most {max} (EXAI_MAX_PROVIDER_CALLS_PER_TOOL)",
                models.len()
            )));
        }
        let asked = routed.iter().map(|(model, provider)| {
            let request = ChatRequest::new(
                *model,
                vec![
                    ChatMessage::new(Role::System, CONSENSUS_VOICE),
                    ChatMessage::new(Role::User, prompt),
                ],
            );
            self.call_model(call, provider.as_ref(), request, false)
        });
        let answers = futures::future::join_all(asked).await;
        let mut text = String::new();
        let mut listed = Vec::with_capacity(answers.len());
        let mut heard = Vec::new();
        for ((model, _), answer) in routed.iter().zip(&answers) {
            match answer {
                Ok(a) => {
                    text.push_str(&format!("## {model}\n{}\n\n", a.content));
                    listed.push(json!({"model": model, "answer": a.content}));
                    heard.push((*model, a.content.as_str()));
                }
                Err(e) => {
                    text.push_str(&format!("## {model}\n(no answer: {e})\n\n"));
                    listed.push(json!({"model": model, "error": e.to_string()}));
                }
            }
        }
        if heard.is_empty() {
            return Ok(tool_error(format!(
                "consensus: no model answered\n\n{}",
                text.trim_end()
            )));
        }
        let combined = if heard.len() > 1 {
            let mut question = format!("Question:\n{prompt}\n\n");
            for (model, answer) in &heard {
                question.push_str(&format!("Answer of {model}:\n{answer}\n\n"));
            }
            let request = ChatRequest::new(
                judge,
                vec![
                    ChatMessage::new(Role::System, CONSENSUS_JUDGE),
                    ChatMessage::new(Role::User, question),
                ],
            );
            match self
                .call_model(call, judge_provider.as_ref(), request, false)
                .await
            {
                Ok(a) => {
                    text.push_str(&format!("## Combined by {judge}\n{}", a.content));
                    Some(Ok(a.content))
                }
                Err(e) => {
                    text.push_str(&format!("## Combined by {judge}\n(failed: {e})"));
                    Some(Err(e.to_string()))
                }
            }
        } else {
            None
        };
        let mut result = CallToolResult::success(vec![ContentBlock::text(text.trim_end())]);
        result.structured_content = Some(json!({
            "answers": listed,
            "combined_by": combined.as_ref().map(|_| judge),
            "combined": combined.as_ref().and_then(|c| c.as_ref().ok()),
            "combine_error": combined.as_ref().and_then(|c| c.as_ref().err()),
        }));
        Ok(result)
    }
}
