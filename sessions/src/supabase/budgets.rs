//! Per-user budgets through the REST API: the same two functions as the
//! PostgreSQL backend (`mcp_lease_budget`, `mcp_release_slots`), as RPCs.

use std::time::Duration;

use async_trait::async_trait;
use exai_auth::UserId;
use serde_json::json;

use super::{RestError, SupabaseStore, unavailable};
use crate::{Lease, LeaseRequest, StoreError, UserBudgets};

#[async_trait]
impl UserBudgets for SupabaseStore {
    async fn lease(&self, user: &UserId, request: LeaseRequest) -> Result<Lease, StoreError> {
        let Some(node) = &self.node else {
            return Ok(request.granted());
        };
        let args = json!({
            "p_node_id": node.id, "p_user_id": user.as_uuid(),
            "p_rpm": request.rpm, "p_calls": request.calls,
            "p_max_in_flight": request.max_in_flight, "p_slots": request.slots,
        });
        let rows = self
            .rpc("mcp_lease_budget", args)
            .await
            .map_err(unavailable)?;
        // A set-returning function: an array of its one row.
        let row = &rows[0];
        let count = |name: &str| row[name].as_u64().and_then(|n| u32::try_from(n).ok());
        match (
            count("granted_calls"),
            count("granted_slots"),
            row["retry_after_ms"].as_u64(),
        ) {
            (Some(calls), Some(slots), Some(retry_ms)) => Ok(Lease {
                calls,
                slots,
                retry_after: Duration::from_millis(retry_ms),
            }),
            _ => Err(unavailable(RestError::Unexpected(
                "mcp_lease_budget answered without its row".into(),
            ))),
        }
    }

    async fn release_slots(&self, slots: &[(UserId, u32)]) -> Result<(), StoreError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        if slots.is_empty() {
            return Ok(());
        }
        let users: Vec<uuid::Uuid> = slots.iter().map(|(user, _)| user.as_uuid()).collect();
        let counts: Vec<u32> = slots.iter().map(|&(_, n)| n).collect();
        let args = json!({ "p_node_id": node.id, "p_user_ids": users, "p_slots": counts });
        self.rpc("mcp_release_slots", args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
