//! Usage in PostgreSQL: `mcp_record_usage` for each provider call, and a
//! user's totals per model.

use async_trait::async_trait;
use exai_auth::Principal;
use tokio_postgres::Row;

use super::{PostgresStore, store_error, unavailable};
use crate::{ModelUsage, SessionId, StoreError, UsageRecord, UsageStore};

#[async_trait]
impl UsageStore for PostgresStore {
    async fn record_usage(
        &self,
        principal: &Principal,
        record: UsageRecord,
    ) -> Result<(), StoreError> {
        let user = principal.user_id.as_uuid();
        let session = record.session_id.as_ref().map(SessionId::as_str);
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let latency = i32::try_from(record.latency.as_millis()).unwrap_or(i32::MAX);
        self.with_client(async |client| {
            client
                .execute(
                    "SELECT public.mcp_record_usage($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &user,
                        &session,
                        &record.tool,
                        &record.provider,
                        &record.model,
                        &tokens(record.prompt_tokens),
                        &tokens(record.completion_tokens),
                        &latency,
                        &record.outcome,
                    ],
                )
                .await
                .map_err(|e| store_error(e, 0, None))?;
            Ok(())
        })
        .await
    }

    async fn usage(&self, principal: &Principal) -> Result<Vec<ModelUsage>, StoreError> {
        let user = principal.user_id.as_uuid();
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT model, calls, errors, prompt_tokens, completion_tokens \
                     FROM public.mcp_usage_totals($1)",
                    &[&user],
                )
                .await
                .map_err(|e| store_error(e, 0, None))?;
            let count = |row: &Row, i: usize| -> Result<u64, StoreError> {
                let n: i64 = row.try_get(i).map_err(unavailable)?;
                Ok(u64::try_from(n).unwrap_or_default())
            };
            rows.iter()
                .map(|row| {
                    let mut usage =
                        ModelUsage::new(row.try_get::<_, String>(0).map_err(unavailable)?);
                    usage.calls = count(row, 1)?;
                    usage.errors = count(row, 2)?;
                    usage.prompt_tokens = count(row, 3)?;
                    usage.completion_tokens = count(row, 4)?;
                    Ok(usage)
                })
                .collect()
        })
        .await
    }
}
