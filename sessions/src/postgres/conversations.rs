//! Conversations in PostgreSQL: an exchange is one call of
//! `mcp_start_conversation` or `mcp_append_turns`, all or none.

use async_trait::async_trait;
use exai_auth::Principal;

use super::{PostgresStore, seconds, store_error, unavailable};
use crate::{ConversationId, ConversationLimits, ConversationStore, StoreError, Turn};

/// Turns as the two arrays the SQL functions take.
fn columns(turns: &[Turn]) -> (Vec<&str>, Vec<&str>) {
    turns
        .iter()
        .map(|t| (t.role.as_str(), t.content.as_str()))
        .unzip()
}

fn max_turns(limits: &ConversationLimits) -> i32 {
    i32::try_from(limits.max_turns).unwrap_or(i32::MAX)
}

#[async_trait]
impl ConversationStore for PostgresStore {
    async fn create_conversation(
        &self,
        principal: &Principal,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<ConversationId, StoreError> {
        let user = principal.user_id.as_uuid();
        let id = ConversationId::generate();
        let (roles, contents) = columns(turns);
        self.with_client(async |client| {
            client
                .execute(
                    "SELECT public.mcp_start_conversation($1, $2, $3, $4, $5, $6)",
                    &[
                        &user,
                        &id.as_str(),
                        &roles,
                        &contents,
                        &max_turns(limits),
                        &seconds(limits.timeout),
                    ],
                )
                .await
                .map_err(|e| store_error(e, 0, Some(limits)))?;
            Ok(())
        })
        .await?;
        Ok(id)
    }

    async fn append_turns(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<usize, StoreError> {
        let user = principal.user_id.as_uuid();
        let (roles, contents) = columns(turns);
        self.with_client(async |client| {
            let row = client
                .query_one(
                    "SELECT public.mcp_append_turns($1, $2, $3, $4, $5, $6)",
                    &[
                        &user,
                        &conversation.as_str(),
                        &roles,
                        &contents,
                        &max_turns(limits),
                        &seconds(limits.timeout),
                    ],
                )
                .await
                .map_err(|e| store_error(e, 0, Some(limits)))?;
            let count: i32 = row.try_get(0).map_err(unavailable)?;
            Ok(usize::try_from(count).unwrap_or_default())
        })
        .await
    }

    async fn read_conversation(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        limits: &ConversationLimits,
    ) -> Result<Vec<Turn>, StoreError> {
        let user = principal.user_id.as_uuid();
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT role, content FROM public.mcp_read_conversation($1, $2, $3)",
                    &[&user, &conversation.as_str(), &seconds(limits.timeout)],
                )
                .await
                .map_err(|e| store_error(e, 0, Some(limits)))?;
            Ok(rows
                .iter()
                .map(|r| Turn::new(r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect())
        })
        .await
    }
}
