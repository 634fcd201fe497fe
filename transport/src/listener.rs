//! Accepting connections within bounds: at most
//! [`EdgeConfig::max_connections`](crate::EdgeConfig) open at once (the
//! next waits in the kernel's backlog until one closes), `TCP_NODELAY` on
//! each, and HTTP/1 served by hyper with a header-read timeout, so that a
//! connection that sends half a request line (or sits idle between
//! requests) is closed after [`EdgeConfig::header_read_timeout`](crate::EdgeConfig)
//! instead of holding a descriptor forever.
//!
//! This is axum's own serve loop (`axum::serve`) with those bounds added:
//! axum offers no way to set a timer, a header timeout or a cap.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::EdgeMetrics;

/// How a listener bounds what it accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// How long a request's headers (or the next request on an idle
    /// keep-alive connection) may take to arrive.
    pub(crate) header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets the requests
/// being answered finish (HTTP connections end once their response is
/// sent) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        // Small writes (an SSE event, a frame) go out at once, not after
        // the peer's delayed ACK.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let service = router.clone().layer(axum::Extension(ConnectInfo(peer)));
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let _permit = permit;
            metrics.tcp_opened();
            let _closed = scopeguard(move || metrics.tcp_closed());
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_read_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .with_upgrades();
            let mut connection = pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended");
                    }
                    return;
                }
                () = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Runs `f` when dropped, however the task ends.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The next connection. Errors that concern one connection are skipped;
/// running out of descriptors waits a moment rather than spinning.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
