//! Conversations and usage through Supabase's REST API: the same SQL
//! functions as the PostgreSQL backend, called at `/rest/v1/rpc/<name>`.

use async_trait::async_trait;
use exai_auth::Principal;
use serde_json::{Value, json};

use super::{RestError, SupabaseStore, seconds, store_error, unavailable};
use crate::{
    ConversationId, ConversationLimits, ConversationStore, ModelUsage, StoreError, Turn,
    UsageRecord, UsageStore,
};

#[async_trait]
impl ConversationStore for SupabaseStore {
    async fn create_conversation(
        &self,
        principal: &Principal,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<ConversationId, StoreError> {
        let id = ConversationId::generate();
        let args = json!({
            "p_user_id": principal.user_id,
            "p_continuation_id": id,
            "p_roles": turns.iter().map(|t| &t.role).collect::<Vec<_>>(),
            "p_contents": turns.iter().map(|t| &t.content).collect::<Vec<_>>(),
            "p_max_turns": limits.max_turns,
            "p_timeout_secs": seconds(limits.timeout),
        });
        self.rpc("mcp_start_conversation", args)
            .await
            .map_err(|e| store_error(e, 0, Some(limits)))?;
        Ok(id)
    }

    async fn append_turns(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<usize, StoreError> {
        let args = json!({
            "p_user_id": principal.user_id,
            "p_continuation_id": conversation,
            "p_roles": turns.iter().map(|t| &t.role).collect::<Vec<_>>(),
            "p_contents": turns.iter().map(|t| &t.content).collect::<Vec<_>>(),
            "p_max_turns": limits.max_turns,
            "p_timeout_secs": seconds(limits.timeout),
        });
        let count = self
            .rpc("mcp_append_turns", args)
            .await
            .map_err(|e| store_error(e, 0, Some(limits)))?;
        count
            .as_u64()
            .map(|c| usize::try_from(c).unwrap_or(usize::MAX))
            .ok_or_else(|| unavailable(RestError::Unexpected("a turn count".into())))
    }

    async fn read_conversation(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        limits: &ConversationLimits,
    ) -> Result<Vec<Turn>, StoreError> {
        let args = json!({
            "p_user_id": principal.user_id,
            "p_continuation_id": conversation,
            "p_timeout_secs": seconds(limits.timeout),
        });
        let rows = self
            .rpc("mcp_read_conversation", args)
            .await
            .map_err(|e| store_error(e, 0, Some(limits)))?;
        Ok(rows
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                Turn::new(
                    row["role"].as_str().unwrap_or_default(),
                    row["content"].as_str().unwrap_or_default(),
                )
            })
            .collect())
    }
}

#[async_trait]
impl UsageStore for SupabaseStore {
    async fn record_usage(
        &self,
        principal: &Principal,
        record: UsageRecord,
    ) -> Result<(), StoreError> {
        let args = json!({
            "p_user_id": principal.user_id,
            "p_session_id": record.session_id,
            "p_tool": record.tool,
            "p_provider": record.provider,
            "p_model": record.model,
            "p_prompt_tokens": record.prompt_tokens,
            "p_completion_tokens": record.completion_tokens,
            "p_latency_ms": u64::try_from(record.latency.as_millis()).unwrap_or(u64::MAX),
            "p_outcome": record.outcome,
        });
        self.rpc("mcp_record_usage", args)
            .await
            .map_err(|e| store_error(e, 0, None))?;
        Ok(())
    }

    async fn usage(&self, principal: &Principal) -> Result<Vec<ModelUsage>, StoreError> {
        let rows = self
            .rpc(
                "mcp_usage_totals",
                json!({ "p_user_id": principal.user_id }),
            )
            .await
            .map_err(|e| store_error(e, 0, None))?;
        let Value::Array(rows) = rows else {
            return Err(unavailable(RestError::Unexpected("usage rows".into())));
        };
        rows.into_iter()
            .map(|row| {
                serde_json::from_value(row)
                    .map_err(|_| unavailable(RestError::Unexpected("a usage row".into())))
            })
            .collect()
    }
}
