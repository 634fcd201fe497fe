//! One WebSocket connection: a reader, a writer and the `rmcp` service,
//! joined by bounded queues, in one task tree per connection.
//!
//! ```text
//!  socket ──read_loop──▶ inbound queue ──▶ rmcp service (the daemon's handler)
//!     ▲                                          │
//!     └───write_loop◀── outbound queue ◀─────────┘ (and framing errors)
//! ```
//!
//! The `rmcp` service runs only while the connection has something to do
//! ([`Mcp`]): it starts with the first message, is suspended once nothing
//! has been in flight for [`EdgeConfig::service_idle`](crate::EdgeConfig),
//! and is started again, with the client's `initialize` replayed, by its
//! next message. An idle connection is then a socket, a reader and a
//! writer — most of what a connection costs in memory is the service.
//!
//! A fault in one connection (a panic, a bad frame) never reaches another:
//! each runs in its own tasks and owns its own state. JSON-RPC ids are only
//! ever matched inside one connection's `rmcp` service.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use exai_auth::{Access, AuthError, Authenticator, Credential, Principal, UserId};
use exai_sessions::SessionId;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rmcp::model::{
    ClientJsonRpcMessage, ClientRequest, ErrorCode, ErrorData, GetMeta, RequestId,
    ServerJsonRpcMessage,
};
use rmcp::service::{RoleServer, serve_server_with_ct};
use rmcp::transport::Transport;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::error::{close, jsonrpc};
use crate::framing::{self, Decoded};
use crate::legacy::{self, Hello, Legacy};
use crate::lifecycle::{Ended, Lifecycle, LiveSession};
use crate::metrics::Metrics;

/// Messages read but not yet taken by the MCP service.
const INBOUND_QUEUE: usize = 32;
/// How long the writer may take to flush its last frames.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// The requests the MCP service is working on: taken in by the reader,
/// done when their response goes out or the client cancels them. At
/// shutdown a connection waits (up to the grace period) until none is left.
#[derive(Default)]
struct InFlight {
    ids: std::sync::Mutex<std::collections::HashSet<RequestId>>,
    idle: tokio::sync::Notify,
}

impl InFlight {
    fn ids(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<RequestId>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a message on its way to the service.
    fn inbound(&self, message: &ClientJsonRpcMessage) {
        if let ClientJsonRpcMessage::Request(request) = message {
            self.ids().insert(request.id.clone());
        } else if let Some(id) = framing::cancelled_id(message) {
            self.done(id);
        }
    }

    /// Request `id` was answered, or cancelled.
    fn done(&self, id: &RequestId) {
        let mut ids = self.ids();
        if ids.remove(id) && ids.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Returns when no request is in flight.
    async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            if self.ids().is_empty() {
                return;
            }
            idle.await;
        }
    }
}

/// The id under which a resumed service is sent the client's `initialize`
/// again; its answer is not passed on. `rmcp` answers `initialize` before it
/// reads anything else, so the first answer with this id is that one, even
/// if the client uses the same id.
const RESUME_ID: &str = "exai/resume";

/// What brings a suspended service back to where the client left it.
enum Resume {
    /// No lifecycle yet: the next message starts one, as on a new connection.
    Fresh,
    /// The client's `initialize` (under [`RESUME_ID`]).
    Initialize(Box<ClientJsonRpcMessage>),
    /// The legacy protocol's handshake, whose answers it never sends.
    Legacy,
    /// Metadata on every request (2026-07-28): each request starts the
    /// lifecycle itself.
    Inline,
}

/// The MCP service of one connection, running or suspended.
///
/// Suspended, it holds only the handler to clone and what to replay; the
/// handler's clones share its per-connection state (the in-flight cap, the
/// log level), so a resumed service carries on where the last one stopped.
struct Mcp<S> {
    handler: S,
    running: Option<Running>,
    resume: Resume,
    /// When the last message went to the service.
    last_message: Instant,
    outbound: Outbound,
    legacy: Arc<std::sync::OnceLock<Arc<Legacy>>>,
    in_flight: Arc<InFlight>,
    batches: Arc<Batches>,
    metrics: Arc<Metrics>,
}

/// The queue of frames for the writer. Boxed: every connection holds a
/// block of 32 slots, and a frame is 48 bytes where a box is 8.
type Outbound = mpsc::Sender<Box<Message>>;

struct Running {
    /// Boxed messages: a queue block holds 32, and an unboxed one is ~360
    /// bytes.
    tx: mpsc::Sender<Box<ClientJsonRpcMessage>>,
    ct: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

/// However a service is let go (suspended, stopped, or with its
/// connection's task), it is cancelled and no longer counted.
impl Drop for Running {
    fn drop(&mut self) {
        self.ct.cancel();
        self.metrics.service_stopped();
    }
}

/// The service is gone: it ended, or failed to start.
struct ServiceGone;

impl<S: rmcp::ServerHandler + Clone> Mcp<S> {
    /// Sends `message` to the service, starting it if it is suspended.
    /// Boxed, as the queue wants it: this future is part of every
    /// connection's, and a message is ~360 bytes.
    async fn send(&mut self, message: Box<ClientJsonRpcMessage>) -> Result<(), ServiceGone> {
        if self.running.is_none() {
            if !self.wakes(&message) {
                tracing::debug!("dropped a notification for a suspended service");
                return Ok(());
            }
            self.start();
        }
        self.note_lifecycle(&message);
        self.last_message = Instant::now();
        self.in_flight.inbound(&message);
        let Some(running) = &self.running else {
            return Err(ServiceGone);
        };
        running.tx.send(message).await.map_err(|_| ServiceGone)
    }

    /// Whether `message` is worth starting a suspended service for: any
    /// request is; a cancellation is not (nothing is in flight); other
    /// notifications only once a handshake made them part of a lifecycle.
    fn wakes(&self, message: &ClientJsonRpcMessage) -> bool {
        match message {
            ClientJsonRpcMessage::Request(_) => true,
            _ if framing::cancelled_id(message).is_some() => false,
            _ => matches!(self.resume, Resume::Initialize(_) | Resume::Legacy),
        }
    }

    /// Remembers how the client started its lifecycle, to replay it.
    fn note_lifecycle(&mut self, message: &ClientJsonRpcMessage) {
        if !matches!(self.resume, Resume::Fresh) {
            return;
        }
        let ClientJsonRpcMessage::Request(request) = message else {
            return;
        };
        if let ClientRequest::InitializeRequest(_) = &request.request {
            let mut replay = request.clone();
            replay.id = RequestId::String(RESUME_ID.into());
            self.resume = Resume::Initialize(Box::new(ClientJsonRpcMessage::Request(replay)));
        } else if starts_lifecycle(&request.request) {
            self.resume = Resume::Inline;
        }
    }

    /// The client's connection now speaks the legacy protocol.
    fn speaks_legacy(&mut self) {
        self.resume = Resume::Legacy;
    }

    /// Starts a service and replays the lifecycle to it.
    fn start(&mut self) {
        let (tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let replay: Vec<ClientJsonRpcMessage> = match &self.resume {
            Resume::Fresh | Resume::Inline => Vec::new(),
            Resume::Initialize(initialize) => vec![(**initialize).clone()],
            Resume::Legacy => Legacy::handshake(),
        };
        let transport = WsTransport {
            inbound,
            outbound: self.outbound.clone(),
            legacy: self.legacy.clone(),
            in_flight: self.in_flight.clone(),
            batches: self.batches.clone(),
            swallow: matches!(self.resume, Resume::Initialize(_))
                .then(|| RequestId::String(RESUME_ID.into())),
        };
        for message in replay {
            // A new queue has room for the handshake.
            let _ = tx.try_send(Box::new(message));
        }
        let ct = CancellationToken::new();
        let task =
            tokio::spawn(serve_mcp(self.handler.clone(), transport, ct.clone()).in_current_span());
        self.metrics.service_started();
        self.running = Some(Running {
            tx,
            ct,
            task,
            metrics: self.metrics.clone(),
        });
    }

    /// Suspends the service if nothing is in flight and it has had no
    /// message for `idle`; otherwise says when to look again.
    fn suspend_if_idle(&mut self, idle: Duration) -> Instant {
        let due = self.last_message + idle;
        if Instant::now() < due || !self.in_flight.ids().is_empty() || self.batches.any() {
            return due.max(Instant::now() + idle / 4);
        }
        if self.running.take().is_some() {
            self.in_flight.ids().shrink_to_fit();
            tracing::debug!("idle: MCP service suspended");
        }
        Instant::now() + idle
    }

    /// Resolves when the running service ends by itself.
    async fn ended(&mut self) {
        match &mut self.running {
            Some(running) => {
                let _ = (&mut running.task).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the service, if it runs, and waits for it to end.
    async fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            running.ct.cancel();
            let _ = (&mut running.task).await;
        }
    }
}

/// JSON-RPC batches (protocol version 2025-03-26 only): the answers to a
/// batch's requests are held until the last one is there, then sent as one
/// array. A request the client cancels gets no answer, so it no longer
/// holds its batch back. Connections without a batch open pay one atomic
/// load per message.
#[derive(Default)]
struct Batches {
    state: std::sync::Mutex<BatchState>,
    /// Whether any batch is open: the fast path when none is.
    any_open: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct BatchState {
    next: u64,
    /// Which batch each pending request belongs to.
    by_id: std::collections::HashMap<RequestId, u64>,
    open: std::collections::HashMap<u64, Batch>,
}

struct Batch {
    pending: usize,
    answers: Vec<ServerJsonRpcMessage>,
}

/// What to do with a message from the service.
#[allow(
    clippy::large_enum_variant,
    reason = "short-lived, on the stack; boxing would allocate per message"
)]
enum Held {
    /// Not part of a batch: send it.
    No(ServerJsonRpcMessage),
    /// Kept for its batch.
    Yes,
    /// The batch's last answer: send them all.
    Complete(Vec<ServerJsonRpcMessage>),
}

impl BatchState {
    /// Request `id` of a batch is settled (with `answer`, or cancelled).
    /// `None` when `id` is in no batch; `Some(answers)` once its batch is
    /// complete, `Some(empty)` while it still waits.
    fn settle(
        &mut self,
        id: &RequestId,
        answer: Option<ServerJsonRpcMessage>,
    ) -> Option<Vec<ServerJsonRpcMessage>> {
        let batch = self.by_id.remove(id)?;
        let open = self.open.get_mut(&batch)?;
        open.pending -= 1;
        open.answers.extend(answer);
        if open.pending > 0 {
            return Some(Vec::new());
        }
        self.open.remove(&batch).map(|done| done.answers)
    }
}

impl Batches {
    fn state(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a batch waits for answers.
    fn any(&self) -> bool {
        self.any_open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Opens a batch of requests `ids` whose invalid members were already
    /// answered with `answers`. Returns the answers to send now when there
    /// is no request to wait for.
    fn open(
        &self,
        ids: Vec<RequestId>,
        answers: Vec<ServerJsonRpcMessage>,
    ) -> Option<Vec<ServerJsonRpcMessage>> {
        if ids.is_empty() {
            return (!answers.is_empty()).then_some(answers);
        }
        let mut state = self.state();
        let batch = state.next;
        state.next += 1;
        let pending = ids.len();
        for id in ids {
            state.by_id.insert(id, batch);
        }
        state.open.insert(batch, Batch { pending, answers });
        self.any_open
            .store(true, std::sync::atomic::Ordering::Release);
        None
    }

    /// Holds `message` if it answers a batched request.
    fn hold(&self, message: ServerJsonRpcMessage) -> Held {
        if !self.any_open.load(std::sync::atomic::Ordering::Acquire) {
            return Held::No(message);
        }
        let Some(id) = framing::answered_id(&message).cloned() else {
            return Held::No(message);
        };
        let mut state = self.state();
        if !state.by_id.contains_key(&id) {
            return Held::No(message);
        }
        let settled = state.settle(&id, Some(message)).unwrap_or_default();
        self.any_open
            .store(!state.open.is_empty(), std::sync::atomic::Ordering::Release);
        if settled.is_empty() {
            Held::Yes
        } else {
            Held::Complete(settled)
        }
    }

    /// The client cancelled request `id`: it no longer holds its batch.
    /// Returns the batch's answers if that completed it.
    fn cancelled(&self, id: &RequestId) -> Option<Vec<ServerJsonRpcMessage>> {
        if !self.any_open.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let mut state = self.state();
        let settled = state.settle(id, None);
        self.any_open
            .store(!state.open.is_empty(), std::sync::atomic::Ordering::Release);
        settled.filter(|answers| !answers.is_empty())
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    Shutdown,
    BinaryFrame,
    ServiceEnded,
    SocketError,
    TokenExpired,
    OtherUser,
    TimedOut,
    Killed,
    KeyRevoked,
    TooBig,
    InvalidUtf8,
    PingTimeout,
    LegacyUnauthorized,
}

impl End {
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::Shutdown => (close::GOING_AWAY, "server shutting down"),
            End::BinaryFrame => (close::UNSUPPORTED_DATA, "MCP messages are text frames"),
            End::ServiceEnded => (close::NORMAL, "MCP session ended"),
            End::TokenExpired => (close::TOKEN_EXPIRED, "token expired"),
            End::OtherUser => (close::OTHER_USER, "token is for another user"),
            End::TimedOut => (close::SESSION_TIMED_OUT, "session timed out"),
            End::Killed => (close::SESSION_KILLED, "session killed by an administrator"),
            End::KeyRevoked => (close::TOKEN_EXPIRED, "API key revoked"),
            End::TooBig => (close::MESSAGE_TOO_BIG, "message too big"),
            End::InvalidUtf8 => (close::INVALID_PAYLOAD, "text frame is not UTF-8"),
            End::PingTimeout => (close::PING_TIMEOUT, "ping timeout"),
            End::LegacyUnauthorized => (close::LEGACY_UNAUTHORIZED, "unauthorized"),
            End::ClientClosed | End::SocketError => return None,
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

/// What a connection task needs besides its socket and MCP service.
pub(crate) struct Connection {
    pub(crate) guard: SessionGuard,
    /// Where activity is recorded, and how the lifecycle ends the session.
    pub(crate) live: LiveSession,
    pub(crate) shutdown: CancellationToken,
    pub(crate) outbound_queue: usize,
    /// For in-band `auth/refresh`.
    pub(crate) auth: Arc<Authenticator>,
    /// Who opened the connection.
    pub(crate) principal: Principal,
    pub(crate) metrics: Arc<Metrics>,
    /// How often to ping the client, and how long its pong may take.
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    /// The session's id, for the legacy protocol's `hello_ack`.
    pub(crate) session_id: SessionId,
    /// How long requests in flight may take to finish at shutdown.
    pub(crate) shutdown_grace: Duration,
    /// How long the MCP service may sit idle before it is suspended.
    pub(crate) service_idle: Duration,
}

/// Serves one connection. `hello_received`: the legacy protocol's `hello`
/// was already read and accepted (by [`crate::http`], for a client that
/// authenticated in it), so the connection speaks that protocol from the
/// start; otherwise the first frame decides.
///
/// The future is what every connection, idle or not, holds for as long as
/// it is open, so it is kept small: everything is set up before it starts,
/// and the end, which needs more, is boxed when it comes.
pub(crate) fn run<S: rmcp::ServerHandler + Clone>(
    socket: WebSocket,
    handler: S,
    connection: Connection,
    hello_received: bool,
    counted: Counted,
) -> impl Future<Output = ()> + Send {
    let Connection {
        guard,
        live,
        shutdown,
        outbound_queue,
        auth,
        principal,
        metrics,
        ping_interval,
        ping_timeout,
        session_id,
        shutdown_grace,
        service_idle,
    } = connection;
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(outbound_queue.max(1));
    let writer = tokio::spawn(write_loop(sink, out_rx));
    let mcp = Mcp {
        handler,
        running: None,
        resume: Resume::Fresh,
        last_message: Instant::now(),
        outbound: out_tx,
        legacy: Arc::default(),
        in_flight: Arc::default(),
        batches: Arc::default(),
        metrics,
    };
    let ending = live.clone();
    let mut reader = Reader {
        live,
        mcp,
        stream,
        auth,
        user: principal.user_id,
        ping_interval,
        ping_timeout,
        service_idle,
        deadline: deadline(principal.expires_at),
        session_id,
        protocol: None,
    };
    async move {
        let _counted = counted;
        let end = tokio::select! {
            end = reader.serve(hello_received) => end,
            () = shutdown.cancelled() => End::Shutdown,
            () = ending.ended.cancelled() => match ending.reason() {
                Some(Ended::TimedOut) | None => End::TimedOut,
                Some(Ended::Killed) => End::Killed,
                Some(Ended::KeyRevoked) => End::KeyRevoked,
            },
        };
        // The reader's socket half goes now, so the socket closes once the
        // writer is done, not after the session's close is recorded.
        let mcp = reader.into_mcp();
        Box::pin(finish(end, mcp, writer, guard, shutdown_grace)).await;
    }
}

/// Ends a connection: at shutdown, calls in flight get `shutdown_grace` to
/// answer; then the service stops, the close frame goes out, the writer
/// drains and the session is recorded as closed.
async fn finish<S: rmcp::ServerHandler + Clone>(
    end: End,
    mut mcp: Mcp<S>,
    mut writer: tokio::task::JoinHandle<()>,
    guard: SessionGuard,
    shutdown_grace: Duration,
) {
    tracing::info!(reason = ?end, "connection closing");
    if matches!(end, End::Shutdown) {
        // Reading has stopped; calls already running get the grace period
        // to finish and send their answers, then are cancelled.
        let in_flight = mcp.in_flight.clone();
        let settled = tokio::select! {
            () = in_flight.settled() => true,
            () = tokio::time::sleep(shutdown_grace) => false,
            () = mcp.ended() => true,
        };
        if !settled {
            tracing::info!("requests still running after the shutdown grace period: cancelled");
        }
    }
    mcp.stop().await;
    if let Some(frame) = end.close_frame() {
        // The queue may be full of frames for a client that stopped reading;
        // then the close frame is dropped with the rest when we abort.
        let _ = mcp.outbound.try_send(Box::new(Message::Close(Some(frame))));
    }
    // The last sender: the writer ends once it has written what is queued.
    drop(mcp);
    if tokio::time::timeout(WRITER_DRAIN, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    guard.close().await;
}

async fn serve_mcp<S: rmcp::ServerHandler>(
    service: S,
    transport: WsTransport,
    ct: CancellationToken,
) {
    match serve_server_with_ct(service, transport, ct).await {
        Ok(running) => {
            let _ = running.waiting().await;
        }
        Err(error) => tracing::debug!(%error, "MCP session ended before initialization"),
    }
}

/// A frame that could not be read: too large (1009), a text frame that is
/// not UTF-8 (1007), or a broken socket (no close frame to send).
fn read_error(error: axum::Error) -> End {
    use tokio_tungstenite::tungstenite::Error;
    match error.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Capacity(_)) => End::TooBig,
        Ok(Error::Utf8(_)) => End::InvalidUtf8,
        Ok(error) => {
            tracing::debug!(%error, "socket error");
            End::SocketError
        }
        Err(error) => {
            tracing::debug!(%error, "socket error");
            End::SocketError
        }
    }
}

/// The instant a credential expiring at `expires_at` (Unix seconds) expires.
fn deadline(expires_at: Option<u64>) -> Option<Instant> {
    let expires_at = expires_at?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Some(Instant::now() + Duration::from_secs(expires_at.saturating_sub(now)))
}

/// Reads frames until the connection ends, and says why it ended.
struct Reader<S> {
    live: LiveSession,
    mcp: Mcp<S>,
    stream: SplitStream<WebSocket>,
    /// For in-band `auth/refresh` and a `hello` with a credential.
    auth: Arc<Authenticator>,
    /// Who opened the connection.
    user: UserId,
    ping_interval: Duration,
    ping_timeout: Duration,
    service_idle: Duration,
    /// When the credential that admitted the connection expires.
    deadline: Option<Instant>,
    /// The session's id, for the legacy protocol's `hello_ack`.
    session_id: SessionId,
    /// The protocol version the client asked for in `initialize`.
    protocol: Option<String>,
}

impl<S: rmcp::ServerHandler + Clone> Reader<S> {
    /// The service, once reading is over; the rest is dropped.
    fn into_mcp(self) -> Mcp<S> {
        self.mcp
    }

    async fn serve(&mut self, hello_received: bool) -> End {
        if hello_received && let Some(end) = Box::pin(self.engage_legacy()).await {
            return end;
        }
        self.read(hello_received).await
    }

    async fn read(&mut self, mut decided: bool) -> End {
        // Until the client starts a lifecycle (initialize, or a request
        // carrying its protocol version), rmcp accepts only requests; a stray
        // notification would end the session, so it is dropped here instead.
        let mut lifecycle_started = false;
        // Two timers, made once and reset (not re-armed per frame): the
        // credential's expiry, and the keep-alive, which fires for the next
        // ping or, once a ping is out, at its `ping_timeout`.
        let expiry = tokio::time::sleep_until(self.deadline.unwrap_or_else(Instant::now));
        let keepalive = tokio::time::sleep(self.ping_interval);
        // When to see whether the service is idle.
        let idle = tokio::time::sleep(self.service_idle);
        tokio::pin!(expiry, keepalive, idle);
        let mut ping_sent: Option<Instant> = None;
        loop {
            let running = self.mcp.running.is_some();
            let frame = tokio::select! {
                frame = self.stream.next() => frame,
                () = self.mcp.ended(), if running => return End::ServiceEnded,
                () = &mut idle, if running => {
                    let next = self.mcp.suspend_if_idle(self.service_idle);
                    idle.as_mut().reset(next);
                    continue;
                }
                () = &mut expiry, if self.deadline.is_some() => return End::TokenExpired,
                () = &mut keepalive => {
                    if ping_sent.is_some() {
                        return End::PingTimeout;
                    }
                    let now = Instant::now();
                    ping_sent = Some(now);
                    // A full queue means the client is not reading; the
                    // pong will not come and the timeout ends it.
                    let _ = self
                        .mcp
                        .outbound
                        .try_send(Box::new(Message::Ping(Default::default())));
                    keepalive.as_mut().reset(now + self.ping_timeout);
                    continue;
                }
            };
            let text = match frame {
                None | Some(Ok(Message::Close(_))) => return End::ClientClosed,
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Binary(_))) => return End::BinaryFrame,
                Some(Ok(Message::Pong(_))) => {
                    if let Some(sent) = ping_sent.take() {
                        keepalive.as_mut().reset(sent + self.ping_interval);
                    }
                    continue;
                }
                Some(Ok(Message::Ping(_))) => continue,
                Some(Err(error)) => return read_error(error),
            };
            // The first frame decides the protocol: the legacy one starts
            // with `hello`.
            if !decided {
                decided = true;
                if let Some(hello) = Hello::parse(text.as_str()) {
                    if let Some(end) = Box::pin(self.check_hello(hello)).await {
                        return end;
                    }
                    if let Some(end) = Box::pin(self.engage_legacy()).await {
                        return end;
                    }
                    continue;
                }
            }
            if let Some(legacy) = self.mcp.legacy.get() {
                let step = legacy.on_frame(text.as_str());
                if step.active {
                    self.live.record_activity();
                }
                for reply in step.replies {
                    if !self.send(&reply).await {
                        return End::SocketError;
                    }
                }
                for message in step.to_server.into_iter().map(Box::new) {
                    if self.mcp.send(message).await.is_err() {
                        return End::ServiceEnded;
                    }
                }
                continue;
            }
            if self.protocol.as_deref() == Some(framing::BATCH_VERSION)
                && text.trim_start().starts_with('[')
            {
                if let Some(end) = Box::pin(self.batch(text.as_str())).await {
                    return end;
                }
                continue;
            }
            let message = match framing::decode(text.as_str()) {
                Decoded::Message(message) => message,
                Decoded::Reply(reply) => {
                    if !self.send(&reply).await {
                        return End::SocketError;
                    }
                    continue;
                }
                Decoded::Drop(why) => {
                    tracing::debug!(why, "dropped a frame");
                    continue;
                }
            };
            // `auth/refresh` is the edge's own method, never the MCP server's.
            if let ClientJsonRpcMessage::Request(request) = &*message
                && let ClientRequest::CustomRequest(custom) = &request.request
                && custom.method == "auth/refresh"
            {
                match Box::pin(self.refresh(request.id.clone(), custom.params.as_ref())).await {
                    Some(end) => return end,
                    None => {
                        if let Some(at) = self.deadline {
                            expiry.as_mut().reset(at);
                        }
                        continue;
                    }
                }
            }
            if matches!(&*message, ClientJsonRpcMessage::Request(_)) {
                self.live.record_activity();
            }
            if let ClientJsonRpcMessage::Request(request) = &*message
                && let ClientRequest::InitializeRequest(initialize) = &request.request
            {
                self.protocol = Some(initialize.params.protocol_version.as_str().to_owned());
            }
            if !lifecycle_started {
                match &*message {
                    ClientJsonRpcMessage::Request(request) => {
                        lifecycle_started = starts_lifecycle(&request.request);
                    }
                    _ => {
                        tracing::debug!("dropped a notification sent before initialize");
                        continue;
                    }
                }
            }
            if let Some(id) = framing::cancelled_id(&message)
                && let Some(done) = self.mcp.batches.cancelled(id)
                && !self.send(&done).await
            {
                return End::SocketError;
            }
            if self.mcp.send(message).await.is_err() {
                return End::ServiceEnded;
            }
        }
    }

    /// A `hello` on a connection that authenticated with headers: a
    /// credential in it must be valid and name the same user.
    async fn check_hello(&self, hello: Hello) -> Option<End> {
        let credential = hello.credential?;
        match self
            .auth
            .authenticate(Some(Credential::Bearer(&credential)), Access::User)
            .await
        {
            Ok(p) if p.user_id == self.user => None,
            _ => {
                self.send(&legacy::hello_refused("unauthorized")).await;
                Some(End::LegacyUnauthorized)
            }
        }
    }

    /// Switches to the legacy protocol: the MCP handshake the client never
    /// sends, then `hello_ack`.
    async fn engage_legacy(&mut self) -> Option<End> {
        let _ = self.mcp.legacy.set(Arc::new(Legacy::default()));
        self.mcp.speaks_legacy();
        for message in Legacy::handshake() {
            if self.mcp.send(Box::new(message)).await.is_err() {
                return Some(End::ServiceEnded);
            }
        }
        let ack = legacy::hello_ack(self.session_id.as_str());
        (!self.send(&ack).await).then_some(End::SocketError)
    }

    /// `auth/refresh {"token": "…"}`: a fresh credential for the same user
    /// moves the connection's expiry; another user's ends the connection.
    async fn refresh(&mut self, id: RequestId, params: Option<&serde_json::Value>) -> Option<End> {
        let token = params
            .and_then(|p| p.get("token"))
            .and_then(serde_json::Value::as_str);
        let Some(token) = token else {
            let error = ErrorData::invalid_params("auth/refresh needs a string 'token'", None);
            return (!self
                .send(&ServerJsonRpcMessage::error(error, Some(id)))
                .await)
                .then_some(End::SocketError);
        };
        let result = self
            .auth
            .authenticate(Some(Credential::Bearer(token)), Access::User)
            .await;
        let reply = match result {
            Ok(fresh) if fresh.user_id == self.user => {
                self.mcp.metrics.credential_refresh("ok");
                self.deadline = deadline(fresh.expires_at);
                tracing::info!(expires_at = ?fresh.expires_at, "credential refreshed in band");
                serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "result": { "expires_at": fresh.expires_at },
                })
            }
            Ok(_) => {
                self.mcp.metrics.credential_refresh("other_user");
                tracing::warn!("auth/refresh offered another user's token; closing");
                let error = auth_error(&AuthError::OtherUser);
                self.send(&ServerJsonRpcMessage::error(error, Some(id)))
                    .await;
                return Some(End::OtherUser);
            }
            Err(refused) => {
                self.mcp.metrics.credential_refresh("refused");
                let error = ServerJsonRpcMessage::error(auth_error(&refused), Some(id));
                match serde_json::to_value(error) {
                    Ok(value) => value,
                    Err(_) => return None,
                }
            }
        };
        (!self.send(&reply).await).then_some(End::SocketError)
    }

    /// Queues `message` for the client; `false` when the writer is gone.
    /// A batch (2025-03-26): its valid members go to the service, invalid
    /// ones are answered in the batch's reply; the reply is one array, sent
    /// when the last request is answered.
    async fn batch(&mut self, text: &str) -> Option<End> {
        let batch = match framing::split_batch(text, &["initialize", "auth/refresh"]) {
            Ok(batch) => batch,
            Err(error) => return (!self.send(&error).await).then_some(End::SocketError),
        };
        let ids = batch
            .messages
            .iter()
            .filter_map(|message| match message {
                ClientJsonRpcMessage::Request(request) => Some(request.id.clone()),
                _ => None,
            })
            .collect();
        if let Some(now) = self.mcp.batches.open(ids, batch.answers)
            && !self.send(&now).await
        {
            return Some(End::SocketError);
        }
        for message in batch.messages {
            if matches!(message, ClientJsonRpcMessage::Request(_)) {
                self.live.record_activity();
            }
            if let Some(id) = framing::cancelled_id(&message)
                && let Some(done) = self.mcp.batches.cancelled(id)
                && !self.send(&done).await
            {
                return Some(End::SocketError);
            }
            if self.mcp.send(Box::new(message)).await.is_err() {
                return Some(End::ServiceEnded);
            }
        }
        None
    }

    async fn send(&self, message: &impl serde::Serialize) -> bool {
        let Ok(text) = serde_json::to_string(message) else {
            return true;
        };
        self.mcp
            .outbound
            .send(Box::new(Message::Text(text.into())))
            .await
            .is_ok()
    }
}

fn auth_error(error: &AuthError) -> ErrorData {
    ErrorData::new(
        ErrorCode(jsonrpc::INVALID_CREDENTIAL),
        format!("credential refused: {}", error.reason()),
        None,
    )
}

fn starts_lifecycle(request: &ClientRequest) -> bool {
    match request {
        ClientRequest::InitializeRequest(_) => true,
        ClientRequest::PingRequest(_) | ClientRequest::DiscoverRequest(_) => false,
        other => other.get_meta().protocol_version().is_some(),
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbound: mpsc::Receiver<Box<Message>>,
) {
    while let Some(message) = outbound.recv().await {
        let closing = matches!(*message, Message::Close(_));
        if sink.send(*message).await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

/// The socket as `rmcp` sees it.
struct WsTransport {
    inbound: mpsc::Receiver<Box<ClientJsonRpcMessage>>,
    outbound: Outbound,
    /// Set once the connection speaks the legacy protocol: messages are
    /// translated into its frames.
    legacy: Arc<std::sync::OnceLock<Arc<Legacy>>>,
    in_flight: Arc<InFlight>,
    batches: Arc<Batches>,
    /// The replayed `initialize` of a resumed service, whose answer the
    /// client already had.
    swallow: Option<RequestId>,
}

#[derive(Debug, thiserror::Error)]
#[error("connection closed")]
struct ConnectionClosed;

impl Transport<RoleServer> for WsTransport {
    type Error = ConnectionClosed;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let outbound = self.outbound.clone();
        let legacy = self.legacy.get().cloned();
        let in_flight = self.in_flight.clone();
        let mut answered = framing::answered_id(&item).cloned();
        let held = if self.swallow.is_some() && answered == self.swallow {
            // The replayed `initialize`: the client had its answer.
            self.swallow = None;
            answered = None;
            Held::Yes
        } else {
            self.batches.hold(item)
        };
        async move {
            let text = match (&legacy, held) {
                (_, Held::Yes) => {
                    if let Some(id) = &answered {
                        in_flight.done(id);
                    }
                    return Ok(());
                }
                (_, Held::Complete(answers)) => serde_json::to_string(&answers).ok(),
                (Some(legacy), Held::No(item)) => {
                    legacy.encode(&item).map(|frame| frame.to_string())
                }
                (None, Held::No(item)) => serde_json::to_string(&item).ok(),
            };
            let sent = match text {
                Some(text) => outbound
                    .send(Box::new(Message::Text(text.into())))
                    .await
                    .map_err(|_| ConnectionClosed),
                // Nothing to say in the legacy protocol.
                None if legacy.is_some() => Ok(()),
                None => Err(ConnectionClosed),
            };
            // A request is done once its answer is queued for the socket.
            if let Some(id) = &answered {
                in_flight.done(id);
            }
            sent
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        let next = self.inbound.recv();
        async move { next.await.map(|message| *message) }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inbound.close();
        Ok(())
    }
}

/// Counts a connection as open, in the metrics and for the shutdown that
/// waits for connections, until it is dropped.
pub(crate) struct Counted {
    metrics: Arc<Metrics>,
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Counted {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        tracked: tokio_util::task::task_tracker::TaskTrackerToken,
    ) -> Self {
        metrics.connection_opened("websocket");
        Counted {
            metrics,
            _tracked: tracked,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.connection_closed("websocket");
    }
}

/// Ends a session when the connection ends, however it ends: explicitly
/// through [`SessionGuard::close`], or on drop (a panic, a failed upgrade)
/// through a task the edge waits for at shutdown.
pub(crate) struct SessionGuard {
    session: Option<(Arc<Lifecycle>, Principal, SessionId)>,
    tracker: TaskTracker,
}

impl SessionGuard {
    pub(crate) fn new(
        lifecycle: Arc<Lifecycle>,
        principal: Principal,
        session: SessionId,
        tracker: TaskTracker,
    ) -> Self {
        SessionGuard {
            session: Some((lifecycle, principal, session)),
            tracker,
        }
    }

    pub(crate) async fn close(mut self) {
        if let Some((lifecycle, principal, session)) = self.session.take() {
            lifecycle.detach(principal, session).await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some((lifecycle, principal, session)) = self.session.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.tracker.spawn_on(
                    async move { lifecycle.detach(principal, session).await },
                    &runtime,
                );
            }
            Err(_) => tracing::warn!(
                session_id = %session,
                "no runtime to record the session as closed"
            ),
        }
    }
}
