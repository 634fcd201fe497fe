//! API keys in PostgreSQL (`mcp_api_keys`), and the user lookups the
//! administrators' tooling makes (`auth.users`).

use std::time::SystemTime;

use async_trait::async_trait;
use exai_auth::{ApiKeyRecord, ApiKeyStore, KeyStoreError, UserId};
use tokio_postgres::Row;

use super::{PostgresStore, Problem, unavailable};
use crate::StoreError;

impl PostgresStore {
    /// The ids of the users with these emails (admin tooling).
    pub async fn user_ids_by_email(&self, email: &str) -> Result<Vec<UserId>, StoreError> {
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT id FROM auth.users WHERE lower(email) = lower($1)",
                    &[&email],
                )
                .await
                .map_err(unavailable)?;
            Ok(rows.iter().map(|r| UserId::new(r.get(0))).collect())
        })
        .await
    }

    /// Every user who holds an API key (admin tooling).
    pub async fn all_api_key_users(&self) -> Result<Vec<UserId>, StoreError> {
        self.with_client(async |client| {
            let rows = client
                .query("SELECT DISTINCT user_id FROM public.mcp_api_keys", &[])
                .await
                .map_err(unavailable)?;
            Ok(rows.iter().map(|r| UserId::new(r.get(0))).collect())
        })
        .await
    }

    /// The emails of these users, where known (admin tooling).
    pub async fn emails(
        &self,
        users: &[UserId],
    ) -> Result<std::collections::HashMap<UserId, String>, StoreError> {
        let ids: Vec<uuid::Uuid> = users.iter().map(|u| u.as_uuid()).collect();
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT id, email FROM auth.users WHERE id = ANY($1) AND email IS NOT NULL",
                    &[&ids],
                )
                .await
                .map_err(unavailable)?;
            Ok(rows
                .iter()
                .map(|r| (UserId::new(r.get(0)), r.get(1)))
                .collect())
        })
        .await
    }
}

fn key_from_row(row: &Row) -> Result<ApiKeyRecord, KeyStoreError> {
    let key_error = |e: tokio_postgres::Error| KeyStoreError(Box::new(e));
    let hash: Vec<u8> = row.try_get("secret_hash").map_err(key_error)?;
    let secret_hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| KeyStoreError(Box::new(Problem("a stored key hash is not 32 bytes"))))?;
    let mut record = ApiKeyRecord::new(
        row.try_get("key_id").map_err(key_error)?,
        UserId::new(row.try_get("user_id").map_err(key_error)?),
        secret_hash,
        row.try_get("created_at").map_err(key_error)?,
    );
    record.name = row.try_get("name").map_err(key_error)?;
    record.expires_at = row.try_get("expires_at").map_err(key_error)?;
    record.revoked_at = row.try_get("revoked_at").map_err(key_error)?;
    record.last_used_at = row.try_get("last_used_at").map_err(key_error)?;
    Ok(record)
}

fn key_store_error(error: StoreError) -> KeyStoreError {
    KeyStoreError(Box::new(error))
}

#[async_trait]
impl ApiKeyStore for PostgresStore {
    async fn insert_api_key(&self, record: ApiKeyRecord) -> Result<(), KeyStoreError> {
        self.with_client(async |client| {
            client
                .execute(
                    "INSERT INTO public.mcp_api_keys
                       (key_id, user_id, name, secret_hash, created_at, expires_at, revoked_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &record.key_id,
                        &record.user_id.as_uuid(),
                        &record.name,
                        &record.secret_hash.as_slice(),
                        &record.created_at,
                        &record.expires_at,
                        &record.revoked_at,
                    ],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
        .map_err(key_store_error)
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreError> {
        let row = self
            .with_client(async |client| {
                client
                    .query_opt(
                        "SELECT * FROM public.mcp_api_keys WHERE key_id = $1",
                        &[&key_id],
                    )
                    .await
                    .map_err(unavailable)
            })
            .await
            .map_err(key_store_error)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn revoke_api_key(&self, key_id: &str, at: SystemTime) -> Result<bool, KeyStoreError> {
        self.with_client(async |client| {
            let updated = client
                .execute(
                    "UPDATE public.mcp_api_keys SET revoked_at = coalesce(revoked_at, $2)
                      WHERE key_id = $1",
                    &[&key_id, &at],
                )
                .await
                .map_err(unavailable)?;
            Ok(updated == 1)
        })
        .await
        .map_err(key_store_error)
    }

    async fn record_api_key_use(&self, key_id: &str, at: SystemTime) -> Result<(), KeyStoreError> {
        self.with_client(async |client| {
            client
                .execute(
                    "UPDATE public.mcp_api_keys SET last_used_at = $2 WHERE key_id = $1",
                    &[&key_id, &at],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
        .map_err(key_store_error)
    }

    async fn list_api_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        "SELECT * FROM public.mcp_api_keys WHERE user_id = $1 ORDER BY created_at DESC",
                        &[&user_id.as_uuid()],
                    )
                    .await
                    .map_err(unavailable)
            })
            .await
            .map_err(key_store_error)?;
        rows.iter().map(key_from_row).collect()
    }
}
