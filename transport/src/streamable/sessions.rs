//! The HTTP sessions this daemon holds: `rmcp`'s in-memory sessions (its
//! `LocalSessionManager`), each bound to the user and store session it was
//! opened for, with the streams open in it counted; an idle session's
//! service is suspended and restored by its next request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use exai_auth::UserId;
use futures::{Stream, StreamExt as _};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::{
    RestoreOutcome, ServerSseMessage, SessionId as RmcpSessionId, SessionManager,
};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{REQUEST, TRANSPORT, lock};
use crate::admission::{Opened, SessionGuard};
use crate::lifecycle::LiveSession;
use crate::{ConnectionContext, EdgeMetrics};

/// The HTTP sessions this daemon holds: `rmcp`'s in-memory sessions, each
/// bound to the user and store session it was opened for.
pub(crate) struct HttpSessions {
    local: LocalSessionManager,
    bound: Mutex<HashMap<RmcpSessionId, Bound>>,
    metrics: Arc<EdgeMetrics>,
    /// Counts open sessions, so shutdown waits for their closes.
    tracker: tokio_util::task::TaskTracker,
    this: Weak<HttpSessions>,
}

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
}

impl HttpSessions {
    pub(crate) fn new(
        metrics: Arc<EdgeMetrics>,
        tracker: tokio_util::task::TaskTracker,
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
            this: this.clone(),
        })
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
    fn counted<S: Stream + Send + Sync + 'static>(
        &self,
        id: &RmcpSessionId,
        stream: S,
    ) -> impl Stream<Item = S::Item> + Send + Sync + 'static {
        let open = lock(&self.bound)
            .get(id)
            .map(|s| OpenStream::new(&s.streams));
        stream.inspect(move |_| {
            let _ = &open;
        })
    }

    /// The context and protocol version of session `id` if it is
    /// `user`'s, recording activity.
    pub(super) fn context(
        &self,
        user: UserId,
        id: &str,
    ) -> Option<(ConnectionContext, Option<String>)> {
        let bound = lock(&self.bound);
        let session = bound.get(id).filter(|s| s.user == user)?;
        session.live.record_activity();
        Some((session.context.clone(), session.protocol.clone()))
    }
}

/// One open stream of a session, counted while it lives.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::AcqRel);
        OpenStream(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        let (opened, protocol) = REQUEST
            .try_with(|request| {
                lock(&request.opening)
                    .take()
                    .map(|opened| (opened, request.protocol.clone()))
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
        // When the lifecycle ends the session (expired, killed, key
        // revoked), end rmcp's too; from then on its id is unknown.
        let ended = opened.live.ended.clone();
        let this = self.this.clone();
        let watched = id.clone();
        tokio::spawn(async move {
            ended.cancelled().await;
            if let Some(sessions) = this.upgrade() {
                let _ = sessions.close_session(&watched).await;
            }
        });
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
            Bound {
                user: principal.user_id,
                context,
                streams: live.streams.clone(),
                protocol,
                live,
                guard,
                span,
                _counted: self.tracker.token(),
            },
        );
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &RmcpSessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.local.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &RmcpSessionId) -> Result<bool, Self::Error> {
        Ok(self.local.has_session(id).await?)
    }

    /// Ends session `id`: on `DELETE`, when the lifecycle ended it, when
    /// its rmcp worker stopped, and at shutdown. Safe to call twice.
    async fn close_session(&self, id: &RmcpSessionId) -> Result<(), Self::Error> {
        let bound = lock(&self.bound).remove(id);
        let result = self.local.close_session(id).await;
        if let Some(bound) = bound {
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
        Ok(self.counted(id, stream))
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
        Ok(self.counted(id, stream))
    }

    async fn resume(
        &self,
        id: &RmcpSessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.local.resume(id, last_event_id).await?;
        Ok(self.counted(id, stream))
    }
}
