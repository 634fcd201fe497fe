//! The in-memory store: no IO, one process. The embedded default.
//!
//! This file holds sessions, usage and API keys; `conversations` the
//! conversations, bounded in count and in bytes; `budgets` the per-user
//! call budgets.

mod budgets;
mod conversations;

use budgets::Budgets;
use conversations::Conversations;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use exai_auth::{ApiKeyRecord, ApiKeyStore, KeyStoreError, Principal, UserId};

use crate::{
    Heartbeat, Lease, LeaseRequest, ModelUsage, OpenSession, Page, SessionAdmin, SessionClient,
    SessionFilter, SessionId, SessionLifecycle, SessionRecord, SessionStatus, Sessions, StoreError,
    UsageRecord, UsageStore, UserBudgets, is_admin,
};

/// How many ended sessions a user keeps in memory (for `list` and resume);
/// older ones are dropped when the user opens a new session.
const ENDED_SESSIONS_KEPT_PER_USER: usize = 64;

/// Sessions in a `Mutex<HashMap>`, indexed by user; API keys by id;
/// conversations by handle; usage as per-user, per-model totals (nothing in
/// the daemon reads single calls back, and totals stay small).
#[derive(Debug, Default)]
pub struct MemoryStore {
    users: Mutex<HashMap<UserId, Vec<SessionRecord>>>,
    api_keys: Mutex<HashMap<String, ApiKeyRecord>>,
    conversations: Mutex<Conversations>,
    usage: Mutex<HashMap<UserId, BTreeMap<String, ModelUsage>>>,
    budgets: Mutex<Budgets>,
}

/// Whether the live ones of `sessions` leave room for one more; exactly at
/// the cap, the least recently used idle one is expired to make it (as
/// `mcp_take_idle_session`).
fn make_room(sessions: &mut [SessionRecord], max_connections: u32) -> Result<(), StoreError> {
    let live = |sessions: &[SessionRecord]| {
        sessions
            .iter()
            .filter(|s| s.status == SessionStatus::Connected)
            .count()
    };
    let max = max_connections as usize;
    if live(sessions) == max
        && let Some(idle) = sessions
            .iter_mut()
            .filter(|s| s.status == SessionStatus::Connected && s.idle_since.is_some())
            .min_by_key(|s| s.idle_since)
    {
        idle.status = SessionStatus::Expired;
        idle.idle_since = None;
    }
    if live(sessions) >= max {
        return Err(StoreError::LimitReached {
            limit: max_connections,
        });
    }
    Ok(())
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn api_keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, ApiKeyRecord>> {
        self.api_keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_session<T>(
        &self,
        principal: &Principal,
        session: &SessionId,
        f: impl FnOnce(&mut SessionRecord) -> T,
    ) -> Result<T, StoreError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .get_mut(&principal.user_id)
            .and_then(|sessions| sessions.iter_mut().find(|s| s.session_id == *session))
            .map(f)
            .ok_or(StoreError::NotFound)
    }
}

/// One daemon, one node: the budgets are this daemon's alone.
#[async_trait]
impl UserBudgets for MemoryStore {
    async fn lease(&self, user: &UserId, request: LeaseRequest) -> Result<Lease, StoreError> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        Ok(budgets.lease(*user, request))
    }

    async fn release_slots(&self, slots: &[(UserId, u32)]) -> Result<(), StoreError> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets.release(slots);
        Ok(())
    }
}

#[async_trait]
impl Sessions for MemoryStore {
    async fn open(
        &self,
        principal: &Principal,
        request: OpenSession,
    ) -> Result<SessionRecord, StoreError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = users.entry(principal.user_id).or_default();
        make_room(sessions, request.max_connections)?;
        let live = sessions
            .iter()
            .filter(|s| s.status == SessionStatus::Connected)
            .count();
        let ended = sessions.len() - live;
        if ended >= ENDED_SESSIONS_KEPT_PER_USER {
            // Sessions are appended in creation order: drop the oldest ended ones.
            let mut to_drop = ended + 1 - ENDED_SESSIONS_KEPT_PER_USER;
            sessions.retain(|s| {
                let drop = to_drop > 0 && s.status != SessionStatus::Connected;
                to_drop -= usize::from(drop);
                !drop
            });
        }
        let now = SystemTime::now();
        let record = SessionRecord {
            session_id: SessionId::generate(),
            user_id: principal.user_id,
            status: SessionStatus::Connected,
            created_at: now,
            last_active: now,
            metadata: request.metadata,
            node_id: None,
            idle_since: None,
        };
        sessions.push(record.clone());
        Ok(record)
    }

    async fn touch(&self, principal: &Principal, session: &SessionId) -> Result<(), StoreError> {
        self.with_session(principal, session, |s| match s.status {
            SessionStatus::Connected => {
                s.last_active = SystemTime::now();
                Ok(())
            }
            other => Err(StoreError::Conflict(other)),
        })?
    }

    async fn close(&self, principal: &Principal, session: &SessionId) -> Result<(), StoreError> {
        self.with_session(principal, session, |s| {
            if s.status == SessionStatus::Connected {
                s.status = SessionStatus::Disconnected;
                s.last_active = SystemTime::now();
            }
        })
    }

    async fn get(
        &self,
        principal: &Principal,
        session: &SessionId,
    ) -> Result<SessionRecord, StoreError> {
        self.with_session(principal, session, |s| s.clone())
    }

    async fn list(
        &self,
        principal: &Principal,
        page: Page,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = users.get(&principal.user_id).map_or(&[][..], Vec::as_slice);
        Ok(sessions
            .iter()
            .rev()
            .skip(page.offset)
            .take(page.limit)
            .cloned()
            .collect())
    }

    async fn resume(
        &self,
        principal: &Principal,
        session: &SessionId,
        max_connections: u32,
    ) -> Result<SessionRecord, StoreError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = users
            .get_mut(&principal.user_id)
            .ok_or(StoreError::NotFound)?;
        let status = sessions
            .iter()
            .find(|s| s.session_id == *session)
            .ok_or(StoreError::NotFound)?
            .status;
        match status {
            SessionStatus::Disconnected => {}
            SessionStatus::Connected => return Err(StoreError::Conflict(SessionStatus::Connected)),
            _ => return Err(StoreError::NotFound),
        }
        make_room(sessions, max_connections)?;
        let record = sessions
            .iter_mut()
            .find(|s| s.session_id == *session)
            .ok_or(StoreError::NotFound)?;
        record.status = SessionStatus::Connected;
        record.last_active = SystemTime::now();
        record.idle_since = None;
        Ok(record.clone())
    }
}

#[async_trait]
impl SessionLifecycle for MemoryStore {
    async fn touch_batch(&self, sessions: &[(UserId, SessionId)]) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for (user, id) in sessions {
            if let Some(record) = users
                .get_mut(user)
                .and_then(|all| all.iter_mut().find(|s| s.session_id == *id))
                && record.status == SessionStatus::Connected
            {
                record.last_active = now;
            }
        }
        Ok(())
    }

    async fn describe_clients(
        &self,
        sessions: &[(UserId, SessionId, SessionClient)],
    ) -> Result<(), StoreError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for (user, id, client) in sessions {
            if let Some(record) = users
                .get_mut(user)
                .and_then(|all| all.iter_mut().find(|s| s.session_id == *id))
            {
                record.metadata.client_name = Some(client.name.clone());
                record.metadata.client_version = Some(client.version.clone());
            }
        }
        Ok(())
    }

    /// One daemon, one node: nothing to register.
    async fn register_node(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Only this daemon holds the sessions, so no other can fall silent:
    /// the heartbeat is the activity alone.
    async fn heartbeat(
        &self,
        sessions: &[(UserId, SessionId)],
        _node_timeout: Duration,
    ) -> Result<Heartbeat, StoreError> {
        self.touch_batch(sessions).await?;
        Ok(Heartbeat::default())
    }

    /// Never reaped, so never asked; nothing to refuse.
    async fn reassert(
        &self,
        _sessions: &[(UserId, SessionId)],
        _max_connections: u32,
    ) -> Result<Vec<SessionId>, StoreError> {
        Ok(Vec::new())
    }

    async fn ended_among(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<(SessionId, SessionStatus)>, StoreError> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Ok(users
            .values()
            .flatten()
            .filter(|s| matches!(s.status, SessionStatus::Killed | SessionStatus::Expired))
            .filter(|s| sessions.contains(&s.session_id))
            .map(|s| (s.session_id.clone(), s.status))
            .collect())
    }

    async fn mark_idle(
        &self,
        sessions: &[(UserId, SessionId, Option<SystemTime>)],
    ) -> Result<(), StoreError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for (user, id, idle_since) in sessions {
            if let Some(record) = users
                .get_mut(user)
                .and_then(|all| all.iter_mut().find(|s| s.session_id == *id))
                && record.status == SessionStatus::Connected
            {
                record.idle_since = *idle_since;
            }
        }
        Ok(())
    }

    async fn expire_idle(&self, idle: Duration) -> Result<Vec<SessionRecord>, StoreError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let mut expired = Vec::new();
        for record in users.values_mut().flatten() {
            let idle_for = record.last_active.elapsed().unwrap_or_default();
            if matches!(
                record.status,
                SessionStatus::Connected | SessionStatus::Disconnected
            ) && idle_for > idle
            {
                record.status = SessionStatus::Expired;
                expired.push(record.clone());
            }
        }
        Ok(expired)
    }
}

#[async_trait]
impl SessionAdmin for MemoryStore {
    async fn admin_list(
        &self,
        admin: &Principal,
        filter: SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        if !is_admin(admin) {
            return Err(StoreError::Forbidden);
        }
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<SessionRecord> = users
            .values()
            .flatten()
            .filter(|s| filter.matches(s))
            .cloned()
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(all
            .into_iter()
            .skip(filter.page.offset)
            .take(filter.page.limit)
            .collect())
    }

    async fn admin_kill(
        &self,
        admin: &Principal,
        session: &SessionId,
    ) -> Result<SessionRecord, StoreError> {
        if !is_admin(admin) {
            return Err(StoreError::Forbidden);
        }
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let record = users
            .values_mut()
            .flatten()
            .find(|s| s.session_id == *session)
            .ok_or(StoreError::NotFound)?;
        record.status = SessionStatus::Killed;
        Ok(record.clone())
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn record_usage(
        &self,
        principal: &Principal,
        record: UsageRecord,
    ) -> Result<(), StoreError> {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage
            .entry(principal.user_id)
            .or_default()
            .entry(record.model.clone())
            .or_insert_with(|| ModelUsage::new(record.model.clone()))
            .add(&record);
        Ok(())
    }

    async fn usage(&self, principal: &Principal) -> Result<Vec<ModelUsage>, StoreError> {
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        Ok(usage
            .get(&principal.user_id)
            .map(|models| models.values().cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl ApiKeyStore for MemoryStore {
    async fn insert_api_key(&self, record: ApiKeyRecord) -> Result<(), KeyStoreError> {
        self.api_keys().insert(record.key_id.clone(), record);
        Ok(())
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreError> {
        Ok(self.api_keys().get(key_id).cloned())
    }

    async fn revoke_api_key(&self, key_id: &str, at: SystemTime) -> Result<bool, KeyStoreError> {
        Ok(self
            .api_keys()
            .get_mut(key_id)
            .map(|key| {
                key.revoked_at.get_or_insert(at);
            })
            .is_some())
    }

    async fn record_api_key_use(&self, key_id: &str, at: SystemTime) -> Result<(), KeyStoreError> {
        if let Some(key) = self.api_keys().get_mut(key_id) {
            key.last_used_at = Some(at);
        }
        Ok(())
    }

    async fn list_api_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
        let mut keys: Vec<ApiKeyRecord> = self
            .api_keys()
            .values()
            .filter(|key| key.user_id == user_id)
            .cloned()
            .collect();
        keys.sort_by_key(|key| std::cmp::Reverse(key.created_at));
        Ok(keys)
    }
}
