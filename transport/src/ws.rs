//! One WebSocket connection: a reader, a writer and the `rmcp` service,
//! joined by bounded queues, in one task tree per connection.
//!
//! ```text
//!  socket ──read_loop──▶ inbound queue ──▶ rmcp service (the daemon's handler)
//!     ▲                                          │
//!     └───write_loop◀── outbound queue ◀─────────┘ (and framing errors)
//! ```
//!
//! A fault in one connection (a panic, a bad frame) never reaches another:
//! each runs in its own tasks and owns its own state. JSON-RPC ids are only
//! ever matched inside one connection's `rmcp` service.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use exai_auth::Principal;
use exai_sessions::{SessionId, SessionStore};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetMeta, ServerJsonRpcMessage};
use rmcp::service::{RoleServer, serve_server_with_ct};
use rmcp::transport::Transport;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::close;
use crate::framing::{self, Decoded};

/// Messages read but not yet taken by the MCP service.
const INBOUND_QUEUE: usize = 32;
/// How long the writer may take to flush its last frames.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// Why a connection ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    Shutdown,
    BinaryFrame,
    ServiceEnded,
    SocketError,
}

impl End {
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::Shutdown => (close::GOING_AWAY, "server shutting down"),
            End::BinaryFrame => (close::UNSUPPORTED_DATA, "MCP messages are text frames"),
            End::ServiceEnded => (close::NORMAL, "MCP session ended"),
            End::ClientClosed | End::SocketError => return None,
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

pub(crate) async fn run<S: rmcp::ServerHandler>(
    socket: WebSocket,
    service: S,
    guard: SessionGuard,
    shutdown: CancellationToken,
    outbound_queue: usize,
) {
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(outbound_queue.max(1));
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let service_ct = CancellationToken::new();
    let transport = WsTransport {
        inbound: in_rx,
        outbound: out_tx.clone(),
    };
    let mut mcp = tokio::spawn(serve_mcp(service, transport, service_ct.clone()));
    let mut writer = tokio::spawn(write_loop(sink, out_rx));

    let end = tokio::select! {
        end = read_loop(stream, in_tx, &out_tx) => end,
        () = shutdown.cancelled() => End::Shutdown,
        _ = &mut mcp => End::ServiceEnded,
    };
    tracing::info!(reason = ?end, "connection closing");

    service_ct.cancel();
    if !mcp.is_finished() {
        let _ = mcp.await;
    }
    if let Some(frame) = end.close_frame() {
        // The queue may be full of frames for a client that stopped reading;
        // then the close frame is dropped with the rest when we abort.
        let _ = out_tx.try_send(Message::Close(Some(frame)));
    }
    drop(out_tx);
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

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    inbound: mpsc::Sender<ClientJsonRpcMessage>,
    outbound: &mpsc::Sender<Message>,
) -> End {
    // Until the client starts a lifecycle (initialize, or a request carrying
    // its protocol version), rmcp accepts only requests; a stray
    // notification would end the session, so it is dropped here instead.
    let mut lifecycle_started = false;
    while let Some(frame) = stream.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Binary(_)) => return End::BinaryFrame,
            Ok(Message::Close(_)) => return End::ClientClosed,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Err(error) => {
                tracing::debug!(%error, "socket error");
                return End::SocketError;
            }
        };
        match framing::decode(text.as_str()) {
            Decoded::Message(message) => {
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
                if inbound.send(*message).await.is_err() {
                    return End::ServiceEnded;
                }
            }
            Decoded::Reply(reply) => {
                let Ok(text) = serde_json::to_string(&reply) else {
                    continue;
                };
                if outbound.send(Message::Text(text.into())).await.is_err() {
                    return End::SocketError;
                }
            }
            Decoded::Drop(why) => tracing::debug!(why, "dropped a frame"),
        }
    }
    End::ClientClosed
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
    mut outbound: mpsc::Receiver<Message>,
) {
    while let Some(message) = outbound.recv().await {
        let closing = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

/// The socket as `rmcp` sees it.
struct WsTransport {
    inbound: mpsc::Receiver<ClientJsonRpcMessage>,
    outbound: mpsc::Sender<Message>,
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
        async move {
            let text = serde_json::to_string(&item).map_err(|_| ConnectionClosed)?;
            outbound
                .send(Message::Text(text.into()))
                .await
                .map_err(|_| ConnectionClosed)
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        self.inbound.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inbound.close();
        Ok(())
    }
}

/// Closes a session in the store when the connection ends, however it ends:
/// explicitly through [`SessionGuard::close`], or on drop (a panic, a failed
/// upgrade) through a task the edge waits for at shutdown.
pub(crate) struct SessionGuard {
    session: Option<(Arc<dyn SessionStore>, Principal, SessionId)>,
    tracker: TaskTracker,
}

impl SessionGuard {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        principal: Principal,
        session: SessionId,
        tracker: TaskTracker,
    ) -> Self {
        SessionGuard {
            session: Some((store, principal, session)),
            tracker,
        }
    }

    pub(crate) async fn close(mut self) {
        if let Some((store, principal, session)) = self.session.take() {
            close_session(store, principal, session).await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some((store, principal, session)) = self.session.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.tracker
                    .spawn_on(close_session(store, principal, session), &runtime);
            }
            Err(_) => tracing::warn!(
                session_id = %session,
                "no runtime to record the session as closed"
            ),
        }
    }
}

async fn close_session(store: Arc<dyn SessionStore>, principal: Principal, session: SessionId) {
    match store.close(&principal, &session).await {
        Ok(()) => {
            tracing::info!(user_id = %principal.user_id, session_id = %session, "session closed")
        }
        Err(error) => tracing::warn!(
            user_id = %principal.user_id,
            session_id = %session,
            %error,
            "could not record the session as closed"
        ),
    }
}
