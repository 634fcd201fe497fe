//! The sessions this daemon holds open, and what happens to them over time.
//!
//! - **Activity** is recorded per MCP request in an atomic, never written
//!   per message; a background task flushes it to the store in one batch,
//!   at most once per session per [`EdgeConfig::activity_flush`].
//! - **Expiry**: the same task asks the store to expire sessions idle for
//!   longer than [`EdgeConfig::session_timeout`] and closes the sockets of
//!   the ones held here with 4408.
//! - **Outage**: a close that the store could not record is kept and
//!   retried until it is, so the table ends up telling the truth; activity
//!   that could not be flushed stays pending likewise.
//! - **Node liveness**: every [`EdgeConfig::node_timeout`] / 3 the activity
//!   batch goes out as this daemon's heartbeat, which also reaps the live
//!   sessions of daemons silent for longer than the timeout. A daemon that
//!   finds itself reaped (it was paused) re-asserts the sessions it still
//!   holds, each within its user's cap, and closes the rest with 1013.
//!
//! [`EdgeConfig::activity_flush`]: crate::EdgeConfig::activity_flush
//! [`EdgeConfig::session_timeout`]: crate::EdgeConfig::session_timeout
//! [`EdgeConfig::node_timeout`]: crate::EdgeConfig::node_timeout

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use exai_auth::{Principal, UserId};
use exai_sessions::{ConnectionStore, Heartbeat, SessionClient, SessionId, SessionStatus};
use tokio_util::sync::CancellationToken;

/// Why the lifecycle ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Idle past the session timeout.
    TimedOut,
    /// An administrator killed the session.
    Killed,
    /// The API key that opened the connection was revoked or expired.
    KeyRevoked,
    /// This daemon was reaped while it was silent, and the session could
    /// not be kept (resumed elsewhere, or its user is at the cap).
    Reaped,
}

/// What a connection holds: where to record activity, and how it is told
/// to end.
#[derive(Clone)]
pub(crate) struct LiveSession {
    activity: Arc<AtomicU64>,
    epoch: Instant,
    pub(crate) ended: CancellationToken,
    reason: Arc<Mutex<Option<Ended>>>,
    /// The client its `initialize` named, until written to the store.
    client: Arc<Mutex<Option<SessionClient>>>,
    /// Its open streams (an HTTP session's answers and GET stream): while
    /// any is open, it is in use.
    pub(crate) streams: Arc<AtomicUsize>,
}

impl LiveSession {
    /// The client's `initialize` named it: recorded with the next batch.
    pub(crate) fn describe(&self, client: &rmcp::model::Implementation) {
        let client = SessionClient::new(&client.name, &client.version);
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
    }

    /// Records an MCP request now. One relaxed atomic store.
    pub(crate) fn record_activity(&self) {
        self.activity
            .store(millis_since(self.epoch), Ordering::Relaxed);
    }

    /// How long since the last MCP request.
    pub(crate) fn idle_for(&self) -> Duration {
        let last = self.activity.load(Ordering::Relaxed);
        Duration::from_millis(millis_since(self.epoch).saturating_sub(last))
    }

    /// Why the connection was told to end, once it was.
    pub(crate) fn reason(&self) -> Option<Ended> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

struct Entry {
    user: UserId,
    /// The API key that opened the connection, if one did.
    api_key: Option<String>,
    activity: Arc<AtomicU64>,
    /// The activity value last written to the store.
    flushed: u64,
    /// When it was written.
    flushed_at: Instant,
    ended: CancellationToken,
    reason: Arc<Mutex<Option<Ended>>>,
    client: Arc<Mutex<Option<SessionClient>>>,
    streams: Arc<AtomicUsize>,
    /// For an HTTP session: how long unused before it is marked idle (the
    /// first to go at its user's cap, on any daemon); `None` for a
    /// WebSocket, live while its socket is open.
    idle_grace: Option<Duration>,
    /// Whether the store has it marked idle.
    marked_idle: bool,
}

/// The registry and its background work. One per edge.
pub(crate) struct Lifecycle {
    store: Arc<dyn ConnectionStore>,
    auth: Arc<exai_auth::Authenticator>,
    metrics: Arc<crate::EdgeMetrics>,
    epoch: Instant,
    live: Mutex<HashMap<SessionId, Entry>>,
    unrecorded_closes: Mutex<Vec<(Arc<Principal>, SessionId)>>,
    activity_flush: Duration,
    session_timeout: Duration,
    node_timeout: Duration,
    max_connections_per_user: u32,
    /// When the last heartbeat was written (at first, when this began).
    heartbeat: Mutex<Instant>,
    /// This node was reaped and has not yet re-asserted its sessions.
    reassert_pending: AtomicBool,
}

/// The timings and the cap the lifecycle works to (from [`EdgeConfig`]).
///
/// [`EdgeConfig`]: crate::EdgeConfig
pub(crate) struct Timings {
    pub(crate) activity_flush: Duration,
    pub(crate) session_timeout: Duration,
    pub(crate) node_timeout: Duration,
    pub(crate) max_connections_per_user: u32,
}

impl Lifecycle {
    pub(crate) fn new(
        store: Arc<dyn ConnectionStore>,
        auth: Arc<exai_auth::Authenticator>,
        timings: Timings,
        metrics: Arc<crate::EdgeMetrics>,
    ) -> Self {
        Lifecycle {
            store,
            auth,
            metrics,
            epoch: Instant::now(),
            live: Mutex::default(),
            unrecorded_closes: Mutex::default(),
            activity_flush: timings.activity_flush,
            session_timeout: timings.session_timeout,
            node_timeout: timings.node_timeout,
            max_connections_per_user: timings.max_connections_per_user,
            heartbeat: Mutex::new(Instant::now()),
            reassert_pending: AtomicBool::new(false),
        }
    }

    /// How long ago this daemon's heartbeat was last written, and whether
    /// that is within the node timeout (past it, other daemons may reap
    /// its sessions).
    pub(crate) fn heartbeat_age(&self) -> (Duration, bool) {
        let age = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        (age, age < self.node_timeout)
    }

    /// How often the heartbeat is written: a third of the node timeout,
    /// so two may be lost before anyone reaps this daemon.
    fn heartbeat_interval(&self) -> Duration {
        (self.node_timeout / 3).max(Duration::from_millis(50))
    }

    /// Registers a session this daemon now holds open; one with an
    /// `idle_grace` (HTTP) is marked idle in the store once unused for it.
    pub(crate) fn attach(
        &self,
        principal: &Principal,
        session: &SessionId,
        idle_grace: Option<Duration>,
    ) -> LiveSession {
        let user = principal.user_id;
        let api_key = match &principal.method {
            exai_auth::AuthMethod::ApiKey { key_id } => Some(key_id.clone()),
            _ => None,
        };
        let activity = Arc::new(AtomicU64::new(millis_since(self.epoch)));
        let ended = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let client = Arc::new(Mutex::new(None));
        let streams = Arc::new(AtomicUsize::new(0));
        let entry = Entry {
            client: client.clone(),
            streams: streams.clone(),
            idle_grace,
            marked_idle: false,
            user,
            api_key,
            activity: activity.clone(),
            flushed: activity.load(Ordering::Relaxed),
            flushed_at: Instant::now(),
            ended: ended.clone(),
            reason: reason.clone(),
        };
        self.live().insert(session.clone(), entry);
        self.metrics.session_attached();
        LiveSession {
            activity,
            epoch: self.epoch,
            ended,
            reason,
            client,
            streams,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection ended: records the close (or keeps it for a retry).
    pub(crate) async fn detach(&self, principal: Arc<Principal>, session: SessionId) {
        let pending = self.live().remove(&session);
        self.metrics.session_event("closed");
        self.metrics.session_detached();
        if let Some(entry) = pending
            && entry.activity.load(Ordering::Relaxed) > entry.flushed
        {
            // Last activity first, so last_active is true after the close.
            let _ = self
                .store
                .touch_batch(&[(entry.user, session.clone())])
                .await;
        }
        if let Err(error) = self.store.close(&principal, &session).await {
            tracing::warn!(
                %error,
                session_id = %session,
                "could not record the session as closed; will retry"
            );
            self.unrecorded_closes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((principal, session));
        } else {
            tracing::info!(session_id = %session, "session closed");
        }
    }

    /// Writes the activity not yet written, for sessions whose last write is
    /// at least `activity_flush` old (or all of them, when `force`); as
    /// this daemon's heartbeat when one is due.
    async fn flush_activity(&self, force: bool) {
        let mut batch = Vec::new();
        {
            let live = self.live();
            for (session, entry) in live.iter() {
                let seen = entry.activity.load(Ordering::Relaxed);
                if seen > entry.flushed
                    && (force || entry.flushed_at.elapsed() >= self.activity_flush)
                {
                    batch.push((entry.user, session.clone(), seen));
                }
            }
        }
        // Ticks come every interval (or more often): a tenth of slack, so
        // a tick a little early still beats rather than waiting a whole
        // interval more.
        let heartbeat_due = self.heartbeat_age().0 >= self.heartbeat_interval() * 9 / 10;
        if batch.is_empty() && !heartbeat_due {
            return;
        }
        let sessions: Vec<(UserId, SessionId)> =
            batch.iter().map(|(u, s, _)| (*u, s.clone())).collect();
        let written = if heartbeat_due {
            let beat = self.store.heartbeat(&sessions, self.node_timeout).await;
            beat.map(|beat| self.beat(beat))
        } else {
            self.store.touch_batch(&sessions).await
        };
        match written {
            Ok(()) => {
                let mut live = self.live();
                for (_, session, seen) in batch {
                    if let Some(entry) = live.get_mut(&session) {
                        entry.flushed = seen;
                        entry.flushed_at = Instant::now();
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not record activity; will retry"),
        }
    }

    /// Writes the clients named by `initialize` since the last tick, in
    /// one write (kept for the next tick when it fails).
    async fn describe_clients(&self) {
        let described: Vec<(UserId, SessionId, SessionClient)> = self
            .live()
            .iter()
            .filter_map(|(session, entry)| {
                let client = entry
                    .client
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()?;
                Some((entry.user, session.clone(), client))
            })
            .collect();
        if described.is_empty() {
            return;
        }
        if let Err(error) = self.store.describe_clients(&described).await {
            tracing::debug!(%error, "could not record which clients hold sessions; will retry");
            let live = self.live();
            for (_, session, client) in described {
                if let Some(entry) = live.get(&session) {
                    let mut pending = entry.client.lock().unwrap_or_else(|e| e.into_inner());
                    pending.get_or_insert(client);
                }
            }
        }
    }

    /// After a session of `user` was opened: if this daemon holds sessions
    /// of theirs marked idle, ends at once the one the store may have taken
    /// to make room (rather than at the next tick).
    pub(crate) async fn settle_idle(&self, user: UserId) {
        let marked: Vec<SessionId> = self
            .live()
            .iter()
            .filter(|(_, entry)| entry.user == user && entry.marked_idle)
            .map(|(session, _)| session.clone())
            .collect();
        if marked.is_empty() {
            return;
        }
        if let Ok(ended) = self.store.ended_among(&marked).await {
            let taken: Vec<SessionId> = ended.into_iter().map(|(id, _)| id).collect();
            for _ in &taken {
                self.metrics.session_event("idle_http_closed");
            }
            self.end(&taken, Ended::TimedOut);
        }
    }

    /// Marks the HTTP sessions unused for their grace idle in the store,
    /// and those used again since in use, in one write.
    async fn mark_idle(&self) {
        let now = SystemTime::now();
        let changed: Vec<(UserId, SessionId, Option<SystemTime>)> = self
            .live()
            .iter()
            .filter_map(|(session, entry)| {
                let grace = entry.idle_grace?;
                let idle_for = Duration::from_millis(
                    millis_since(self.epoch).saturating_sub(entry.activity.load(Ordering::Relaxed)),
                );
                let idle = entry.streams.load(Ordering::Acquire) == 0 && idle_for >= grace;
                (idle != entry.marked_idle).then(|| {
                    let since = idle.then(|| now.checked_sub(idle_for).unwrap_or(now));
                    (entry.user, session.clone(), since)
                })
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        match self.store.mark_idle(&changed).await {
            Ok(()) => {
                let mut live = self.live();
                for (_, session, since) in changed {
                    if let Some(entry) = live.get_mut(&session) {
                        entry.marked_idle = since.is_some();
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "could not mark idle sessions; will retry"),
        }
    }

    /// A heartbeat was written: note it, and what it found.
    fn beat(&self, beat: Heartbeat) {
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        if beat.reaped_sessions > 0 {
            tracing::info!(
                sessions = beat.reaped_sessions,
                "freed the live sessions of daemons silent past the node timeout"
            );
            self.metrics.sessions_reaped(beat.reaped_sessions);
        }
        if beat.was_reaped {
            tracing::warn!(
                "this daemon was silent past the node timeout and other daemons reaped its \
                 sessions; re-asserting the ones it still holds"
            );
            self.reassert_pending.store(true, Ordering::Relaxed);
        }
    }

    /// After being reaped: claims the sessions held here again, within
    /// their users' caps, and ends the ones that cannot be kept.
    async fn reassert(&self) {
        if !self.reassert_pending.load(Ordering::Relaxed) {
            return;
        }
        let held: Vec<(UserId, SessionId)> = self
            .live()
            .iter()
            .map(|(session, entry)| (entry.user, session.clone()))
            .collect();
        match self
            .store
            .reassert(&held, self.max_connections_per_user)
            .await
        {
            Ok(refused) => {
                self.reassert_pending.store(false, Ordering::Relaxed);
                tracing::info!(
                    kept = held.len() - refused.len().min(held.len()),
                    ended = refused.len(),
                    "re-asserted the sessions held here"
                );
                self.end(&refused, Ended::Reaped);
            }
            Err(error) => tracing::warn!(%error, "could not re-assert sessions; will retry"),
        }
    }

    async fn retry_closes(&self) {
        let pending = std::mem::take(
            &mut *self
                .unrecorded_closes
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (principal, session) in pending {
            if let Err(error) = self.store.close(&principal, &session).await {
                tracing::debug!(%error, session_id = %session, "close still not recorded");
                self.unrecorded_closes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((principal, session));
            } else {
                tracing::info!(session_id = %session, "recorded a close that had failed");
            }
        }
    }

    /// Ends the connections in `sessions` for `reason`.
    fn end(&self, sessions: &[SessionId], reason: Ended) {
        let live = self.live();
        for session in sessions {
            if let Some(entry) = live.get(session) {
                *entry.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                entry.ended.cancel();
            }
        }
    }

    /// Closes the sessions an administrator killed, and the connections of
    /// API keys revoked since they were opened.
    async fn end_revoked(&self) {
        let (sessions, keys): (Vec<SessionId>, Vec<(SessionId, String)>) = {
            let live = self.live();
            let sessions = live.keys().cloned().collect();
            let keys = live
                .iter()
                .filter_map(|(s, e)| e.api_key.clone().map(|k| (s.clone(), k)))
                .collect();
            (sessions, keys)
        };
        match self.store.ended_among(&sessions).await {
            Ok(ended) => {
                let (killed, expired): (Vec<_>, Vec<_>) = ended
                    .into_iter()
                    .partition(|(_, status)| *status == SessionStatus::Killed);
                let ids = |ended: Vec<(SessionId, SessionStatus)>| -> Vec<SessionId> {
                    ended.into_iter().map(|(id, _)| id).collect()
                };
                self.end(&ids(killed), Ended::Killed);
                let expired = ids(expired);
                for _ in &expired {
                    self.metrics.session_event("expired");
                }
                self.end(&expired, Ended::TimedOut);
            }
            Err(error) => tracing::warn!(%error, "could not check for sessions ended elsewhere"),
        }
        let mut checked: HashMap<String, bool> = HashMap::new();
        let mut revoked = Vec::new();
        for (session, key) in keys {
            let valid = match checked.get(&key) {
                Some(valid) => *valid,
                None => {
                    // A failed check leaves the connection open.
                    let valid = self.auth.api_key_valid(&key).await.unwrap_or(true);
                    checked.insert(key, valid);
                    valid
                }
            };
            if !valid {
                revoked.push(session);
            }
        }
        self.end(&revoked, Ended::KeyRevoked);
    }

    async fn expire(&self) {
        match self.store.expire_idle(self.session_timeout).await {
            Ok(expired) => {
                let live = self.live();
                for record in expired {
                    self.metrics.session_event("expired");
                    if let Some(entry) = live.get(&record.session_id) {
                        *entry.reason.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Ended::TimedOut);
                        entry.ended.cancel();
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not expire idle sessions"),
        }
    }

    /// The background work, until `shutdown`; then one last flush and
    /// retry, so the store is left as true as it can be made.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if let Err(error) = self.store.register_node().await {
            // The first heartbeat registers it as well.
            tracing::warn!(%error, "could not register this daemon's node; will retry");
        }
        let tick = self
            .activity_flush
            .min(self.session_timeout / 4)
            .min(self.heartbeat_interval())
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = shutdown.cancelled() => break,
            }
            self.flush_activity(false).await;
            self.describe_clients().await;
            self.mark_idle().await;
            self.reassert().await;
            self.retry_closes().await;
            self.expire().await;
            self.end_revoked().await;
        }
    }

    /// At shutdown, after the connections are gone: record what is pending.
    pub(crate) async fn finish(&self) {
        self.flush_activity(true).await;
        self.retry_closes().await;
    }
}
