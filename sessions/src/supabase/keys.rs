//! API keys through Supabase's REST API (`mcp_api_keys`, as the service
//! role).

use std::time::SystemTime;

use async_trait::async_trait;
use exai_auth::{ApiKeyRecord, ApiKeyStore, KeyStoreError, UserId};
use serde_json::{Value, json};

use super::{RestError, SupabaseStore, format_timestamp, timestamp};

const KEY_COLUMNS: &str =
    "key_id,user_id,name,secret_hash,created_at,expires_at,revoked_at,last_used_at";

fn key_from_json(row: &Value) -> Result<ApiKeyRecord, RestError> {
    let bad = |what: &str| RestError::Unexpected(format!("an API key row with a bad {what}"));
    // PostgREST writes bytea as "\x" followed by hex digits.
    let hex = row["secret_hash"]
        .as_str()
        .and_then(|h| h.strip_prefix("\\x"))
        .ok_or_else(|| bad("hash"))?;
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad("hash"))?;
    let hash: [u8; 32] = bytes.try_into().map_err(|_| bad("hash"))?;
    let mut record = ApiKeyRecord::new(
        row["key_id"].as_str().ok_or_else(|| bad("id"))?.to_owned(),
        row["user_id"]
            .as_str()
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| bad("user"))?,
        hash,
        timestamp(&row["created_at"])?.ok_or_else(|| bad("creation time"))?,
    );
    record.name = row["name"].as_str().map(str::to_owned);
    record.expires_at = timestamp(&row["expires_at"])?;
    record.revoked_at = timestamp(&row["revoked_at"])?;
    record.last_used_at = timestamp(&row["last_used_at"])?;
    Ok(record)
}

fn key_error(error: RestError) -> KeyStoreError {
    KeyStoreError(Box::new(error))
}

#[async_trait]
impl ApiKeyStore for SupabaseStore {
    async fn insert_api_key(&self, record: ApiKeyRecord) -> Result<(), KeyStoreError> {
        let hash: String = record
            .secret_hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let row = json!({
            "key_id": record.key_id,
            "user_id": record.user_id,
            "name": record.name,
            "secret_hash": format!("\\x{hash}"),
            "created_at": format_timestamp(record.created_at),
            "expires_at": record.expires_at.map(format_timestamp),
            "revoked_at": record.revoked_at.map(format_timestamp),
        });
        self.send(self.client.from("mcp_api_keys").insert(row.to_string()))
            .await
            .map_err(key_error)?;
        Ok(())
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreError> {
        let query = self
            .client
            .from("mcp_api_keys")
            .select(KEY_COLUMNS)
            .eq("key_id", key_id);
        let rows = self.send(query).await.map_err(key_error)?;
        rows.as_array()
            .and_then(|rows| rows.first())
            .map(key_from_json)
            .transpose()
            .map_err(key_error)
    }

    async fn revoke_api_key(&self, key_id: &str, at: SystemTime) -> Result<bool, KeyStoreError> {
        let query = self
            .client
            .from("mcp_api_keys")
            .eq("key_id", key_id)
            .is("revoked_at", "null")
            .update(json!({ "revoked_at": format_timestamp(at) }).to_string());
        let changed = self.send(query).await.map_err(key_error)?;
        if changed.as_array().is_some_and(|rows| !rows.is_empty()) {
            return Ok(true);
        }
        // Already revoked is still "revoked"; only a missing key is false.
        Ok(self.find_api_key(key_id).await?.is_some())
    }

    async fn record_api_key_use(&self, key_id: &str, at: SystemTime) -> Result<(), KeyStoreError> {
        let query = self
            .client
            .from("mcp_api_keys")
            .eq("key_id", key_id)
            .update(json!({ "last_used_at": format_timestamp(at) }).to_string());
        self.send(query).await.map_err(key_error)?;
        Ok(())
    }

    async fn list_api_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
        let query = self
            .client
            .from("mcp_api_keys")
            .select(KEY_COLUMNS)
            .eq("user_id", user_id.to_string())
            .order("created_at.desc");
        let rows = self.send(query).await.map_err(key_error)?;
        rows.as_array()
            .into_iter()
            .flatten()
            .map(key_from_json)
            .collect::<Result<_, _>>()
            .map_err(key_error)
    }
}
