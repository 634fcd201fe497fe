//! Per-user budgets in PostgreSQL: `mcp_lease_budget` when a daemon's
//! slice runs out, `mcp_release_slots` for the slots it gives back
//! (migration `0011_user_budgets`).

use std::time::Duration;

use async_trait::async_trait;
use exai_auth::UserId;

use super::{PostgresStore, unavailable};
use crate::{Lease, LeaseRequest, StoreError, UserBudgets};

/// A count as the functions take it.
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A count as the functions return it.
fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

#[async_trait]
impl UserBudgets for PostgresStore {
    async fn lease(&self, user: &UserId, request: LeaseRequest) -> Result<Lease, StoreError> {
        let Some(node) = &self.node else {
            return Ok(request.granted());
        };
        self.with_client(async |client| {
            let row = client
                .query_one(
                    "SELECT granted_calls, granted_slots, retry_after_ms
                       FROM public.mcp_lease_budget($1, $2, $3, $4, $5, $6)",
                    &[
                        &node.id,
                        &user.as_uuid(),
                        &int(request.rpm),
                        &int(request.calls),
                        &int(request.max_in_flight),
                        &int(request.slots),
                    ],
                )
                .await
                .map_err(unavailable)?;
            let get = |name: &str| row.try_get::<_, i32>(name).map_err(unavailable);
            Ok(Lease {
                calls: count(get("granted_calls")?),
                slots: count(get("granted_slots")?),
                retry_after: Duration::from_millis(u64::from(count(get("retry_after_ms")?))),
            })
        })
        .await
    }

    async fn release_slots(&self, slots: &[(UserId, u32)]) -> Result<(), StoreError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        if slots.is_empty() {
            return Ok(());
        }
        let users: Vec<uuid::Uuid> = slots.iter().map(|(user, _)| user.as_uuid()).collect();
        let counts: Vec<i32> = slots.iter().map(|&(_, n)| int(n)).collect();
        self.with_client(async |client| {
            client
                .execute(
                    "SELECT public.mcp_release_slots($1, $2, $3)",
                    &[&node.id, &users, &counts],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}
