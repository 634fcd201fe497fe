//! One WebSocket connection: a reader, a writer and the `rmcp` service,
//! joined by bounded queues, in one task tree per connection.
//!
//! ```text
//!  socket ──read_loop──▶ inbound queue ──▶ rmcp service (the daemon's handler)
//!     ▲                                          │
//!     └───write_loop◀── outbound queue ◀─────────┘ (and framing errors)
//! ```
//!
//! - [`reader`]: the select loop over the socket and the timers, which
//!   classifies each frame and dispatches it;
//! - [`service`]: the `rmcp` service, which runs only while the connection
//!   has something to do: suspended once nothing has been in flight for
//!   [`EdgeConfig::service_idle`](crate::EdgeConfig), started again (the
//!   client's `initialize` replayed) by the next message. An idle
//!   connection is then a socket, a reader and a writer;
//! - [`batch`]: 2025-03-26 batches, answered as one array;
//! - [`rmcp_io`]: the socket as `rmcp` sees it;
//! - here: [`run`] and [`finish`], and [`End`], why a connection ended and
//!   the close frame that says so.
//!
//! A fault in one connection (a panic, a bad frame) never reaches another:
//! each runs in its own tasks and owns its own state. JSON-RPC ids are only
//! ever matched inside one connection's `rmcp` service.

mod batch;
mod in_flight;
mod reader;
mod rmcp_io;
mod service;

use std::sync::Arc;
use std::time::Duration;

use exai_auth::{Authenticator, Principal};
use exai_sessions::SessionId;
use futures::SinkExt as _;
use futures::StreamExt as _;
use futures::stream::SplitSink;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_util::sync::CancellationToken;

use crate::admission::SessionGuard;
use crate::error::close;
use crate::lifecycle::{Ended, LiveSession};
use crate::metrics::EdgeMetrics;
use crate::websocket::{self, Socket};
use reader::Reader;
use service::Mcp;

/// How long the writer may take to flush its last frames.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// The queue of frames for the writer. Boxed: every connection holds a
/// block of 32 slots, and a frame is 48 bytes where a box is 8.
type Outbound = mpsc::Sender<Box<Message>>;

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum End {
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
    Reaped,
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
            End::Reaped => (
                close::TRY_AGAIN_LATER,
                "this daemon lost its sessions while unreachable; reconnect",
            ),
            End::TooBig => (close::MESSAGE_TOO_BIG, "message too big"),
            End::InvalidUtf8 => (close::INVALID_PAYLOAD, "text frame is not UTF-8"),
            End::PingTimeout => (close::PING_TIMEOUT, "ping timeout"),
            End::LegacyUnauthorized => (close::LEGACY_UNAUTHORIZED, "unauthorized"),
            End::ClientClosed | End::SocketError => return None,
        };
        Some(websocket::close_frame(code, reason))
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
    pub(crate) principal: Arc<Principal>,
    pub(crate) metrics: Arc<EdgeMetrics>,
    /// How often to ping the client, and how long its pong may take.
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    /// The session's id, for the legacy protocol's `hello_ack`.
    pub(crate) session_id: SessionId,
    /// How long requests in flight may take to finish at shutdown.
    pub(crate) shutdown_grace: Duration,
    /// How long the MCP service may sit idle before it is suspended.
    pub(crate) service_idle: Duration,
    /// Slows reading while the handler keeps refusing requests.
    pub(crate) pace: crate::Pace,
    /// The most messages one batch may hold.
    pub(crate) max_batch_members: usize,
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
    socket: Socket,
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
        pace,
        max_batch_members,
    } = connection;
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(outbound_queue.max(1));
    let writer = tokio::spawn(write_loop(sink, out_rx));
    let mcp = Mcp::new(handler, out_tx, metrics);
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
        deadline: crate::deadline(principal.expires_at),
        session_id,
        protocol: None,
        decided: false,
        lifecycle_started: false,
        pace,
        max_batch_members,
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
                Some(Ended::Reaped) => End::Reaped,
            },
        };
        let (mcp, stream) = reader.into_parts();
        Box::pin(finish(end, mcp, stream, writer, guard, shutdown_grace)).await;
    }
}

/// Ends a connection: at shutdown, calls in flight get `shutdown_grace` to
/// answer; then the service stops, the close frame goes out, the writer
/// drains; the session is recorded as closed while the socket is closed
/// ([`websocket::close`]).
async fn finish<S: rmcp::ServerHandler + Clone>(
    end: End,
    mut mcp: Mcp<S>,
    stream: futures::stream::SplitStream<Socket>,
    mut writer: tokio::task::JoinHandle<SplitSink<Socket, Message>>,
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
    let socket = match tokio::time::timeout(WRITER_DRAIN, &mut writer).await {
        Ok(Ok(sink)) => stream.reunite(sink).ok(),
        Ok(Err(_)) => None,
        Err(_) => {
            writer.abort();
            None
        }
    };
    match socket {
        Some(socket) => {
            tokio::join!(guard.close(), websocket::close(socket));
        }
        None => guard.close().await,
    }
}

/// A frame that could not be read: too large (1009), a text frame that is
/// not UTF-8 (1007), or a broken socket (no close frame to send).
pub(super) fn read_error(error: tokio_tungstenite::tungstenite::Error) -> End {
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::Capacity(_) => End::TooBig,
        Error::Utf8(_) => End::InvalidUtf8,
        error => {
            tracing::debug!(%error, "socket error");
            End::SocketError
        }
    }
}

/// Writes what is queued until the queue closes or a close frame went
/// out, and hands the sink back for the close.
async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    mut outbound: mpsc::Receiver<Box<Message>>,
) -> SplitSink<Socket, Message> {
    while let Some(message) = outbound.recv().await {
        let closing = matches!(*message, Message::Close(_));
        if sink.send(*message).await.is_err() || closing {
            break;
        }
    }
    sink
}

/// Counts a connection as open, in the metrics and for the shutdown that
/// waits for connections, until it is dropped.
pub(crate) struct Counted {
    metrics: Arc<EdgeMetrics>,
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Counted {
    pub(crate) fn new(
        metrics: Arc<EdgeMetrics>,
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
