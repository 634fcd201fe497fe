//! A store that times every call into the daemon's metrics: sessions,
//! conversations, usage, and the API-key lookups authentication makes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::metrics::DaemonMetrics;
use async_trait::async_trait;
use exai_auth::{ApiKeyRecord, ApiKeyStore, KeyStoreError, Principal, UserId};
use exai_sessions::{
    ConversationId, ConversationLimits, ConversationStore, Heartbeat, Lease, LeaseRequest,
    ModelUsage, OpenSession, Page, SessionAdmin, SessionClient, SessionFilter, SessionId,
    SessionLifecycle, SessionRecord, SessionStatus, SessionStore, Sessions, StoreError, Turn,
    UsageRecord, UsageStore, UserBudgets,
};

/// Wraps a store; every call is observed as `store_operation_duration_seconds`
/// and, when it fails for the store's own reasons, `store_errors`.
#[derive(Debug)]
pub(crate) struct MeteredStore {
    inner: Arc<dyn SessionStore>,
    keys: Arc<dyn ApiKeyStore>,
    metrics: Arc<DaemonMetrics>,
}

impl MeteredStore {
    pub(crate) fn new(
        inner: Arc<dyn SessionStore>,
        keys: Arc<dyn ApiKeyStore>,
        metrics: Arc<DaemonMetrics>,
    ) -> Self {
        MeteredStore {
            inner,
            keys,
            metrics,
        }
    }

    async fn timed_key<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, KeyStoreError>>,
    ) -> Result<T, KeyStoreError> {
        let start = Instant::now();
        let result = call.await;
        self.metrics
            .store_operation(operation, start.elapsed(), result.is_err());
        result
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = call.await;
        // A refusal (not found, limit) is the store working; only an
        // unavailable store counts as an error.
        let failed = matches!(result, Err(StoreError::Unavailable(_)));
        self.metrics
            .store_operation(operation, start.elapsed(), failed);
        result
    }
}

#[async_trait]
impl Sessions for MeteredStore {
    async fn check(&self) -> Result<(), StoreError> {
        self.timed("check", self.inner.check()).await
    }

    async fn open(&self, p: &Principal, r: OpenSession) -> Result<SessionRecord, StoreError> {
        self.timed("open", self.inner.open(p, r)).await
    }

    async fn touch(&self, p: &Principal, s: &SessionId) -> Result<(), StoreError> {
        self.timed("touch", self.inner.touch(p, s)).await
    }

    async fn close(&self, p: &Principal, s: &SessionId) -> Result<(), StoreError> {
        self.timed("close", self.inner.close(p, s)).await
    }

    async fn get(&self, p: &Principal, s: &SessionId) -> Result<SessionRecord, StoreError> {
        self.timed("get", self.inner.get(p, s)).await
    }

    async fn list(&self, p: &Principal, page: Page) -> Result<Vec<SessionRecord>, StoreError> {
        self.timed("list", self.inner.list(p, page)).await
    }

    async fn resume(
        &self,
        p: &Principal,
        s: &SessionId,
        max: u32,
    ) -> Result<SessionRecord, StoreError> {
        self.timed("resume", self.inner.resume(p, s, max)).await
    }
}

#[async_trait]
impl SessionLifecycle for MeteredStore {
    async fn touch_batch(&self, sessions: &[(UserId, SessionId)]) -> Result<(), StoreError> {
        self.timed("touch_batch", self.inner.touch_batch(sessions))
            .await
    }

    async fn describe_clients(
        &self,
        sessions: &[(UserId, SessionId, SessionClient)],
    ) -> Result<(), StoreError> {
        self.timed("describe_clients", self.inner.describe_clients(sessions))
            .await
    }

    async fn ended_among(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<(SessionId, SessionStatus)>, StoreError> {
        self.timed("ended_among", self.inner.ended_among(sessions))
            .await
    }

    async fn mark_idle(
        &self,
        sessions: &[(UserId, SessionId, Option<SystemTime>)],
    ) -> Result<(), StoreError> {
        self.timed("mark_idle", self.inner.mark_idle(sessions))
            .await
    }

    async fn expire_idle(&self, idle: Duration) -> Result<Vec<SessionRecord>, StoreError> {
        self.timed("expire_idle", self.inner.expire_idle(idle))
            .await
    }

    async fn register_node(&self) -> Result<(), StoreError> {
        self.timed("register_node", self.inner.register_node())
            .await
    }

    async fn heartbeat(
        &self,
        sessions: &[(UserId, SessionId)],
        node_timeout: Duration,
    ) -> Result<Heartbeat, StoreError> {
        self.timed("heartbeat", self.inner.heartbeat(sessions, node_timeout))
            .await
    }

    async fn reassert(
        &self,
        sessions: &[(UserId, SessionId)],
        max_connections: u32,
    ) -> Result<Vec<SessionId>, StoreError> {
        self.timed("reassert", self.inner.reassert(sessions, max_connections))
            .await
    }
}

#[async_trait]
impl SessionAdmin for MeteredStore {
    async fn admin_list(
        &self,
        a: &Principal,
        f: SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.timed("admin_list", self.inner.admin_list(a, f)).await
    }

    async fn admin_kill(&self, a: &Principal, s: &SessionId) -> Result<SessionRecord, StoreError> {
        self.timed("admin_kill", self.inner.admin_kill(a, s)).await
    }
}

#[async_trait]
impl ConversationStore for MeteredStore {
    async fn create_conversation(
        &self,
        p: &Principal,
        t: &[Turn],
        l: &ConversationLimits,
    ) -> Result<ConversationId, StoreError> {
        self.timed(
            "create_conversation",
            self.inner.create_conversation(p, t, l),
        )
        .await
    }

    async fn append_turns(
        &self,
        p: &Principal,
        c: &ConversationId,
        t: &[Turn],
        l: &ConversationLimits,
    ) -> Result<usize, StoreError> {
        self.timed("append_turns", self.inner.append_turns(p, c, t, l))
            .await
    }

    async fn read_conversation(
        &self,
        p: &Principal,
        c: &ConversationId,
        l: &ConversationLimits,
    ) -> Result<Vec<Turn>, StoreError> {
        self.timed("read_conversation", self.inner.read_conversation(p, c, l))
            .await
    }
}

#[async_trait]
impl UsageStore for MeteredStore {
    async fn record_usage(&self, p: &Principal, r: UsageRecord) -> Result<(), StoreError> {
        self.timed("record_usage", self.inner.record_usage(p, r))
            .await
    }

    async fn usage(&self, p: &Principal) -> Result<Vec<ModelUsage>, StoreError> {
        self.timed("usage", self.inner.usage(p)).await
    }
}

#[async_trait]
impl UserBudgets for MeteredStore {
    async fn lease(&self, u: &UserId, r: LeaseRequest) -> Result<Lease, StoreError> {
        self.timed("lease", self.inner.lease(u, r)).await
    }

    async fn release_slots(&self, s: &[(UserId, u32)]) -> Result<(), StoreError> {
        self.timed("release_slots", self.inner.release_slots(s))
            .await
    }
}

#[async_trait]
impl ApiKeyStore for MeteredStore {
    async fn insert_api_key(&self, record: ApiKeyRecord) -> Result<(), KeyStoreError> {
        self.timed_key("insert_api_key", self.keys.insert_api_key(record))
            .await
    }

    async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreError> {
        self.timed_key("find_api_key", self.keys.find_api_key(key_id))
            .await
    }

    async fn revoke_api_key(&self, key_id: &str, at: SystemTime) -> Result<bool, KeyStoreError> {
        self.timed_key("revoke_api_key", self.keys.revoke_api_key(key_id, at))
            .await
    }

    async fn record_api_key_use(&self, key_id: &str, at: SystemTime) -> Result<(), KeyStoreError> {
        self.timed_key(
            "record_api_key_use",
            self.keys.record_api_key_use(key_id, at),
        )
        .await
    }

    async fn list_api_keys(&self, user_id: UserId) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
        self.timed_key("list_api_keys", self.keys.list_api_keys(user_id))
            .await
    }
}
