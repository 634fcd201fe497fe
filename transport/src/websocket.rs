//! The WebSocket handshake (RFC 6455 §4.2) over hyper's upgrade, and the
//! socket under every WebSocket this crate serves: hyper's upgraded
//! connection read within a [`ReadBudget`], and closed by [`close`], which
//! reads what the client is still sending before the socket goes so that
//! the close frame is not lost to a TCP reset.
//!
//! axum's `WebSocketUpgrade` fixes its socket's limits at the upgrade and
//! hides the raw connection; a connection that authenticates in its first
//! frame (the legacy protocol's `hello`) needs a smaller limit until it
//! has, and every close path needs the raw connection to drain it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures::SinkExt as _;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// A WebSocket this crate serves.
pub(crate) type Socket = WebSocketStream<Io>;

/// Initial size of the per-connection read buffer (it grows for a larger
/// message); tungstenite's default (128 KiB) would dominate the memory of an
/// idle connection. MCP requests are mostly well under 1 KiB; a larger one
/// takes a few more reads.
const READ_BUFFER_BYTES: usize = 1024;

/// How long [`close`] waits for the client to stop sending, and how much
/// of what it sends meanwhile it reads.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
const CLOSE_DRAIN_BYTES: usize = 64 << 20;

/// A valid upgrade request, not yet answered.
pub(crate) struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// What a request to `/mcp` is, as far as WebSocket goes.
pub(crate) enum Upgrade {
    /// A valid upgrade.
    Valid(Handshake),
    /// It asks for a WebSocket but is not a valid upgrade (a missing key
    /// or version, not a GET).
    Invalid,
    /// An ordinary HTTP request.
    No,
}

impl Upgrade {
    /// Classifies `request`, taking its upgrade handle when it is valid.
    pub(crate) fn of(request: &mut Request) -> Upgrade {
        let headers = request.headers();
        if !header_is(headers, header::UPGRADE, "websocket") {
            return Upgrade::No;
        }
        let valid = request.method() == Method::GET
            && header_has_token(headers, header::CONNECTION, "upgrade")
            && header_is(headers, header::SEC_WEBSOCKET_VERSION, "13");
        let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        match (valid, key, request.extensions_mut().remove::<OnUpgrade>()) {
            (true, Some(key), Some(on_upgrade)) => Upgrade::Valid(Handshake { key, on_upgrade }),
            _ => Upgrade::Invalid,
        }
    }
}

/// Limits of one socket.
pub(crate) struct Limits {
    /// Largest message (and frame), in bytes.
    pub(crate) max_message_bytes: usize,
    /// What may be read from the socket until [`ReadBudget::lift`].
    pub(crate) budget: ReadBudget,
}

impl Handshake {
    /// Answers 101 (with the `mcp` subprotocol when `mcp`) and serves the
    /// socket with `serve` once hyper hands it over.
    pub(crate) fn accept<Fut>(
        self,
        mcp: bool,
        limits: Limits,
        serve: impl FnOnce(Socket) -> Fut + Send + 'static,
    ) -> Response
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Handshake { key, on_upgrade } = self;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = Io {
                inner: TokioIo::new(upgraded),
                budget: limits.budget,
            };
            let config = WebSocketConfig::default()
                .max_message_size(Some(limits.max_message_bytes))
                .max_frame_size(Some(limits.max_message_bytes))
                .read_buffer_size(READ_BUFFER_BYTES);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            serve(socket).await;
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if mcp {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static("mcp"),
            );
        }
        response
    }
}

/// Whether header `name` equals `value`, ignoring ASCII case.
fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether the comma-separated header `name` holds the token `value`.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(value))
}

/// How many more bytes may be read from a socket: [`ReadBudget::unlimited`]
/// for a connection that authenticated in its upgrade, a few KiB for one
/// that must authenticate in its first frame. Past it a read fails, and
/// [`ReadBudget::spent`] says why.
#[derive(Clone, Debug)]
pub(crate) struct ReadBudget(Arc<AtomicUsize>);

impl ReadBudget {
    const UNLIMITED: usize = usize::MAX;

    pub(crate) fn unlimited() -> Self {
        ReadBudget(Arc::new(AtomicUsize::new(Self::UNLIMITED)))
    }

    pub(crate) fn limited(bytes: usize) -> Self {
        ReadBudget(Arc::new(AtomicUsize::new(bytes.min(Self::UNLIMITED - 1))))
    }

    /// No limit from now on.
    pub(crate) fn lift(&self) {
        self.0.store(Self::UNLIMITED, Ordering::Relaxed);
    }

    /// Whether reading stopped at the budget.
    pub(crate) fn spent(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
}

/// The raw connection under a [`Socket`].
pub(crate) struct Io {
    inner: TokioIo<Upgraded>,
    budget: ReadBudget,
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = self.budget.0.load(Ordering::Relaxed);
        if left == ReadBudget::UNLIMITED {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        if left == 0 {
            return Poll::Ready(Err(io::Error::other(
                "read budget spent before authentication",
            )));
        }
        // Only while limited (before a `hello`): read at most what is left.
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(left.min(buf.remaining())));
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        let read = limited.filled().len();
        buf.advance(read);
        let _ = self
            .budget
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left != ReadBudget::UNLIMITED).then(|| left.saturating_sub(read))
            });
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Closes a socket whose close frame (if any) was sent: flushes, ends the
/// sending side, then reads and discards what the client still sends,
/// until it closes, for at most [`CLOSE_DRAIN`] and [`CLOSE_DRAIN_BYTES`].
/// A connection closed with unread bytes would be reset, and a reset
/// discards the close frame on its way to the client (a client still
/// sending a message over the limit would never see its 1009).
pub(crate) async fn close(mut socket: Socket) {
    let _ = tokio::time::timeout(CLOSE_DRAIN, socket.flush()).await;
    let io = socket.get_mut();
    io.budget.lift();
    let drain = async {
        let _ = io.shutdown().await;
        let mut discard = [0u8; 8192];
        let mut left = CLOSE_DRAIN_BYTES;
        while left > 0 {
            match io.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(read) => left = left.saturating_sub(read),
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
}

/// A close frame with a code of [`crate::close`].
pub(crate) fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }
}
