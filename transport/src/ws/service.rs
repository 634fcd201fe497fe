//! The MCP service of one WebSocket connection, running or suspended.
//!
//! The `rmcp` service runs only while the connection has something to do
//! ([`Mcp`]): it starts with the first message, is suspended once nothing
//! has been in flight for [`EdgeConfig::service_idle`](crate::EdgeConfig),
//! and is started again, with the client's `initialize` replayed, by its
//! next message, and only while nothing is in flight ([`InFlight`]).

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetMeta, RequestId};
use rmcp::service::serve_server_with_ct;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::Outbound;
use super::batch::Batches;
use super::in_flight::InFlight;
use super::rmcp_io::WsTransport;
use crate::framing;
use crate::legacy::Legacy;
use crate::metrics::EdgeMetrics;

/// Messages read but not yet taken by the MCP service.
const INBOUND_QUEUE: usize = 32;

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
pub(super) struct Mcp<S> {
    handler: S,
    running: Option<Running>,
    resume: Resume,
    /// When the last message went to the service.
    last_message: Instant,
    pub(super) outbound: Outbound,
    pub(super) legacy: Arc<std::sync::OnceLock<Arc<Legacy>>>,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) batches: Arc<Batches>,
    pub(super) metrics: Arc<EdgeMetrics>,
}

struct Running {
    /// Boxed messages: a queue block holds 32, and an unboxed one is ~360
    /// bytes.
    tx: mpsc::Sender<Box<ClientJsonRpcMessage>>,
    ct: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<EdgeMetrics>,
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
pub(super) struct ServiceGone;

impl<S: rmcp::ServerHandler + Clone> Mcp<S> {
    /// A suspended service for a new connection: it starts with the first
    /// message.
    pub(super) fn new(handler: S, outbound: Outbound, metrics: Arc<EdgeMetrics>) -> Self {
        Mcp {
            handler,
            running: None,
            resume: Resume::Fresh,
            last_message: Instant::now(),
            outbound,
            legacy: Arc::default(),
            in_flight: Arc::default(),
            batches: Arc::default(),
            metrics,
        }
    }

    /// Whether the service runs now.
    pub(super) fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Sends `message` to the service, starting it if it is suspended.
    /// Boxed, as the queue wants it: this future is part of every
    /// connection's, and a message is ~360 bytes.
    pub(super) async fn send(
        &mut self,
        message: Box<ClientJsonRpcMessage>,
    ) -> Result<(), ServiceGone> {
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
    pub(super) fn speaks_legacy(&mut self) {
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
    pub(super) fn suspend_if_idle(&mut self, idle: Duration) -> Instant {
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
    pub(super) async fn ended(&mut self) {
        match &mut self.running {
            Some(running) => {
                let _ = (&mut running.task).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the service, if it runs, and waits for it to end.
    pub(super) async fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            running.ct.cancel();
            let _ = (&mut running.task).await;
        }
    }
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

/// Whether `request` starts a lifecycle: `initialize`, or a request
/// carrying its protocol version in its metadata (2026-07-28).
pub(super) fn starts_lifecycle(request: &ClientRequest) -> bool {
    match request {
        ClientRequest::InitializeRequest(_) => true,
        ClientRequest::PingRequest(_) | ClientRequest::DiscoverRequest(_) => false,
        other => other.get_meta().protocol_version().is_some(),
    }
}
