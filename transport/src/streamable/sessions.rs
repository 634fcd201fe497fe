//! The HTTP sessions this daemon holds: `rmcp`'s in-memory sessions (its
//! `LocalSessionManager`), each bound to the user and store session it was
//! opened for, with the streams open in it counted.
//!
//! A session with no stream open and no request for
//! [`EdgeConfig::service_idle`](crate::EdgeConfig) has its `rmcp` service
//! suspended, as an idle WebSocket's is: its worker, queues and handler
//! task are dropped and only the binding stays (a few KiB). Its next
//! request restores it through `rmcp`'s own session restore: this type is
//! also the `SessionStore` rmcp loads the client's `initialize` from, and
//! rmcp replays that handshake to a clone of the session's handler, so
//! what the handler keeps (the log level) survives. A session whose
//! request stream broke before its answer is never suspended: the answer
//! waits in rmcp for the client to resume the stream.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use exai_auth::UserId;
use futures::{Stream, StreamExt as _};
use rmcp::model::{ClientJsonRpcMessage, InitializeRequestParams, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};
use rmcp::transport::streamable_http_server::session::{
    RestoreOutcome, ServerSseMessage, SessionId as RmcpSessionId, SessionManager,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{REQUEST, TRANSPORT, lock};
use crate::admission::{Opened, SessionGuard};
use crate::lifecycle::LiveSession;
use crate::{ConnectionContext, EdgeMetrics};

/// The HTTP sessions this daemon holds: `rmcp`'s in-memory sessions, each
/// bound to the user and store session it was opened for.
pub(crate) struct HttpSessions {
    local: LocalSessionManager,
    /// Boxed: the map's spare capacity then costs a pointer, not a binding.
    bound: Mutex<HashMap<RmcpSessionId, Box<Bound>>>,
    metrics: Arc<EdgeMetrics>,
    /// Counts open sessions, so shutdown waits for their closes.
    tracker: tokio_util::task::TaskTracker,
    /// How long unused before a session's service is suspended.
    service_idle: Duration,
    /// Cancelled when the HTTP sessions end (shutdown).
    shutdown: CancellationToken,
    this: Weak<HttpSessions>,
}

/// A session's handler, kept across suspension (type-erased: the handler
/// type is the edge's `ServiceFactory::Service`).
pub(super) type KeptHandler = Arc<dyn Any + Send + Sync>;

struct Bound {
    user: UserId,
    context: ConnectionContext,
    /// Streams open in this session (a request's answer, the GET stream):
    /// while any is, the session is in use.
    streams: Arc<AtomicUsize>,
    /// The protocol version the client asked for in `initialize`.
    protocol: Option<String>,
    live: LiveSession,
    guard: SessionGuard,
    span: tracing::Span,
    _counted: TaskTrackerToken,
    /// The client's `initialize`, replayed when the service is restored.
    initialize: Option<InitializeRequestParams>,
    /// A clone of the session's handler.
    handler: Option<KeptHandler>,
    /// The service is stopped; the next request restores it.
    suspended: bool,
    /// A suspension's worker ending still to come: its `close_session` is
    /// not the session's end.
    worker_ends_expected: u32,
    /// A request stream ended before its answer.
    unsettled: Arc<AtomicBool>,
    /// Held while the service is being stopped or restored.
    transition: Arc<tokio::sync::Mutex<()>>,
    /// Told when the service is restored (the watcher waits for it).
    restored: Arc<Notify>,
}

impl HttpSessions {
    pub(crate) fn new(
        metrics: Arc<EdgeMetrics>,
        tracker: tokio_util::task::TaskTracker,
        service_idle: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let mut local = LocalSessionManager::default();
        // Idle sessions are expired by the lifecycle (MCP_SESSION_TIMEOUT),
        // which also records it; rmcp's own idle timer would not.
        local.session_config.keep_alive = None;
        Arc::new_cyclic(|this| HttpSessions {
            local,
            bound: Mutex::default(),
            metrics,
            tracker,
            service_idle,
            shutdown,
            this: this.clone(),
        })
    }

    /// Stops session `id`'s service if it is unused: no stream open, no
    /// answer pending, no request for `service_idle`.
    async fn suspend_if_idle(&self, id: &RmcpSessionId) {
        let transition = {
            let mut bound = lock(&self.bound);
            let Some(session) = bound.get_mut(id) else {
                return;
            };
            if session.suspended
                || session.initialize.is_none()
                || session.handler.is_none()
                || session.unsettled.load(Ordering::Acquire)
                || session.streams.load(Ordering::Acquire) != 0
                || session.live.idle_for() < self.service_idle
            {
                return;
            }
            session.suspended = true;
            session.worker_ends_expected += 1;
            session.transition.clone()
        };
        let _stopping = transition.lock().await;
        let _ = self.local.close_session(id).await;
        self.metrics.service_stopped();
    }

    /// Watches session `id` until it ends: suspends its service when it is
    /// unused, and ends the session when the lifecycle does (expired,
    /// killed, key revoked) or at shutdown.
    async fn watch(self: Arc<Self>, id: RmcpSessionId, ended: CancellationToken) {
        loop {
            let (suspended, in_use, idle_for, restored) = {
                let bound = lock(&self.bound);
                let Some(session) = bound.get(&id) else {
                    return;
                };
                (
                    session.suspended,
                    session.streams.load(Ordering::Acquire) != 0
                        || session.unsettled.load(Ordering::Acquire),
                    session.live.idle_for(),
                    session.restored.clone(),
                )
            };
            // A session in use is looked at again now and then; a
            // suspended one only when it is restored.
            let wait = if in_use {
                self.service_idle.max(Duration::from_secs(5))
            } else {
                self.service_idle
                    .saturating_sub(idle_for)
                    .max(Duration::from_millis(50))
            };
            tokio::select! {
                () = ended.cancelled() => break,
                () = self.shutdown.cancelled() => break,
                () = restored.notified(), if suspended => {}
                () = tokio::time::sleep(wait), if !suspended => self.suspend_if_idle(&id).await,
            }
        }
        let _ = self.close_session(&id).await;
    }

    /// Closes `user`'s least recently used session held here that has had
    /// no stream open and no request for `grace`, to make room for a new
    /// connection at the user's cap; whether one was closed.
    pub(crate) async fn close_idle(&self, user: UserId, grace: Duration) -> bool {
        let oldest = lock(&self.bound)
            .iter()
            .filter(|(_, s)| s.user == user && s.streams.load(Ordering::Acquire) == 0)
            .map(|(id, s)| (s.live.idle_for(), id.clone(), s.span.clone()))
            .filter(|(idle, _, _)| *idle >= grace)
            .max_by_key(|(idle, _, _)| *idle);
        let Some((idle, id, span)) = oldest else {
            return false;
        };
        span.in_scope(|| {
            tracing::info!(
                idle_secs = idle.as_secs(),
                "closing an idle http session to make room at its user's connection limit"
            );
        });
        self.metrics.session_event("idle_http_closed");
        let _ = self.close_session(&id).await;
        true
    }

    /// `stream`, counted among session `id`'s open streams until dropped.
    /// A request's stream (`answers`) that ends before an answer went out
    /// leaves the session unsettled.
    fn counted<S: Stream<Item = ServerSseMessage> + Send + Sync + 'static>(
        &self,
        id: &RmcpSessionId,
        stream: S,
        answers: bool,
    ) -> impl Stream<Item = S::Item> + Send + Sync + 'static {
        let open = lock(&self.bound).get(id).map(|s| OpenStream {
            streams: {
                s.streams.fetch_add(1, Ordering::AcqRel);
                s.streams.clone()
            },
            unsettled: answers.then(|| s.unsettled.clone()),
            answered: false,
        });
        let mut open = open;
        stream.inspect(move |message| {
            if let Some(open) = &mut open
                && message.message.as_deref().is_some_and(|m| {
                    matches!(
                        m,
                        ServerJsonRpcMessage::Response(_) | ServerJsonRpcMessage::Error(_)
                    )
                })
            {
                open.answered = true;
            }
        })
    }

    /// The context and protocol version of session `id` if it is
    /// `user`'s, recording activity; with its handler when its service is
    /// suspended (for the restore).
    pub(super) fn context(
        &self,
        user: UserId,
        id: &str,
    ) -> Option<(ConnectionContext, Option<String>, Option<KeptHandler>)> {
        let bound = lock(&self.bound);
        let session = bound.get(id).filter(|s| s.user == user)?;
        session.live.record_activity();
        let kept = session.suspended.then(|| session.handler.clone()).flatten();
        Some((session.context.clone(), session.protocol.clone(), kept))
    }
}

/// One open stream of a session, counted while it lives.
struct OpenStream {
    streams: Arc<AtomicUsize>,
    /// For a request's stream: the session's flag, set if the stream ends
    /// before its answer went out.
    unsettled: Option<Arc<AtomicBool>>,
    answered: bool,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if let Some(unsettled) = &self.unsettled
            && !self.answered
        {
            unsettled.store(true, Ordering::Release);
        }
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why an HTTP session could not be made or used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpSessionError {
    #[error("no session was opened for this request")]
    NotOpened,
    #[error("a session with this id already exists")]
    Duplicate,
    #[error(transparent)]
    Local(
        #[from] rmcp::transport::streamable_http_server::session::local::LocalSessionManagerError,
    ),
}

impl SessionManager for HttpSessions {
    type Error = HttpSessionError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(RmcpSessionId, Self::Transport), Self::Error> {
        let (opened, protocol, handler) = REQUEST
            .try_with(|request| {
                lock(&request.opening).take().map(|opened| {
                    let handler = lock(&request.handler).take();
                    (opened, request.protocol.clone(), handler)
                })
            })
            .ok()
            .flatten()
            .ok_or(HttpSessionError::NotOpened)?;
        let id: RmcpSessionId = opened.session_id.as_str().into();
        let transport = match self.local.restore_session(id.clone()).await? {
            RestoreOutcome::Restored(transport) => transport,
            _ => {
                opened.guard.close().await;
                return Err(HttpSessionError::Duplicate);
            }
        };
        let ended = opened.live.ended.clone();
        let context = opened.context();
        let Opened {
            principal,
            live,
            guard,
            span,
            ..
        } = opened;
        span.in_scope(|| tracing::info!("http session opened"));
        self.metrics.connection_opened(TRANSPORT);
        lock(&self.bound).insert(
            id.clone(),
            Box::new(Bound {
                user: principal.user_id,
                context,
                streams: live.streams.clone(),
                protocol,
                live,
                guard,
                span,
                _counted: self.tracker.token(),
                initialize: None,
                handler,
                suspended: false,
                worker_ends_expected: 0,
                unsettled: Arc::default(),
                transition: Arc::default(),
                restored: Arc::default(),
            }),
        );
        self.metrics.service_started();
        if let Some(this) = self.this.upgrade() {
            tokio::spawn(this.watch(id.clone(), ended));
        }
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &RmcpSessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.local.initialize_session(id, message).await?)
    }

    /// A suspended session is not here for rmcp, which then restores it
    /// (`restore_session`).
    async fn has_session(&self, id: &RmcpSessionId) -> Result<bool, Self::Error> {
        if lock(&self.bound).get(id).is_some_and(|s| s.suspended) {
            return Ok(false);
        }
        Ok(self.local.has_session(id).await?)
    }

    /// A suspended session's service started again, under its id.
    async fn restore_session(
        &self,
        id: RmcpSessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        let transition = {
            let bound = lock(&self.bound);
            match bound.get(&id) {
                Some(session) if session.suspended => session.transition.clone(),
                _ => return Ok(RestoreOutcome::NotSupported),
            }
        };
        let _starting = transition.lock().await;
        let outcome = self.local.restore_session(id.clone()).await?;
        if matches!(outcome, RestoreOutcome::Restored(_)) {
            if let Some(session) = lock(&self.bound).get_mut(&id) {
                session.suspended = false;
                session.restored.notify_one();
            }
            self.metrics.service_started();
        }
        Ok(outcome)
    }

    /// Ends session `id`: on `DELETE`, when the lifecycle ended it, when
    /// its rmcp worker stopped, and at shutdown. Safe to call twice. The
    /// worker of a suspended service ending is not the session's end.
    async fn close_session(&self, id: &RmcpSessionId) -> Result<(), Self::Error> {
        let bound = {
            let mut bound = lock(&self.bound);
            if let Some(session) = bound.get_mut(id)
                && session.worker_ends_expected > 0
            {
                session.worker_ends_expected -= 1;
                return Ok(());
            }
            bound.remove(id).map(|bound| *bound)
        };
        let result = self.local.close_session(id).await;
        if let Some(bound) = bound {
            if !bound.suspended {
                self.metrics.service_stopped();
            }
            bound.live.ended.cancel();
            bound
                .span
                .in_scope(|| tracing::info!("http session closed"));
            self.metrics.connection_closed(TRANSPORT);
            bound.guard.close().await;
        }
        Ok(result?)
    }

    async fn create_stream(
        &self,
        id: &RmcpSessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.local.create_stream(id, message).await?;
        Ok(self.counted(id, stream, true))
    }

    async fn accept_message(
        &self,
        id: &RmcpSessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        Ok(self.local.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &RmcpSessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.local.create_standalone_stream(id).await?;
        Ok(self.counted(id, stream, false))
    }

    async fn resume(
        &self,
        id: &RmcpSessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.local.resume(id, last_event_id).await?;
        Ok(self.counted(id, stream, false))
    }
}

/// What rmcp keeps of a session to restore it: the client's `initialize`,
/// held in the session's binding here (never outside the daemon).
#[async_trait::async_trait]
impl SessionStore for HttpSessions {
    /// A suspended session's `initialize`; nothing for any other id, so a
    /// session that ended (or never was) is 404.
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let bound = lock(&self.bound);
        Ok(bound
            .get(session_id)
            .filter(|s| s.suspended)
            .and_then(|s| s.initialize.clone())
            .map(SessionState::new))
    }

    /// After the handshake: the `initialize` to replay.
    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        if let Some(session) = lock(&self.bound).get_mut(session_id) {
            session.initialize = Some(state.initialize_params.clone());
        }
        Ok(())
    }

    /// The binding goes with the session (`close_session`).
    async fn delete(&self, _session_id: &str) -> Result<(), SessionStoreError> {
        Ok(())
    }
}
