//! Accepting connections within bounds: at most
//! [`EdgeConfig::max_connections`](crate::EdgeConfig) open at once (the
//! next waits in the kernel's backlog until one closes), at most
//! [`EdgeConfig::max_unauthenticated_per_address`](crate::EdgeConfig) from
//! one address that have not authenticated yet (more are closed at once;
//! a connection leaves that count when admission authenticates it, through
//! its [`Standing`]), `TCP_NODELAY` on
//! each, and HTTP/1 served by hyper with a header-read timeout, so that a
//! connection that sends half a request line (or sits idle between
//! requests) is closed after [`EdgeConfig::header_read_timeout`](crate::EdgeConfig)
//! instead of holding a descriptor forever.
//!
//! This is axum's own serve loop (`axum::serve`) with those bounds added:
//! axum offers no way to set a timer, a header timeout or a cap.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Connections of one address not yet authenticated.
    pub(crate) max_unauthenticated_per_address: usize,
    /// At shutdown, how long connections may take to finish the request
    /// they are on; then they are dropped (one still sending its headers
    /// would otherwise hold the stop for the header-read timeout).
    pub(crate) drain: Duration,
}

/// How many connections of each address have not authenticated yet.
#[derive(Debug)]
struct Strangers {
    by_address: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

impl Strangers {
    /// Counts one more connection of `address`, unless it has as many as
    /// it may.
    fn enter(&self, address: IpAddr) -> bool {
        let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let count = by_address.entry(address).or_default();
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    fn leave(&self, address: IpAddr) {
        let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = by_address.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&address);
            }
        }
    }
}

/// One connection's standing, in each of its requests' extensions: a
/// stranger until admission authenticates it
/// ([`Standing::authenticated`]); a stranger's place is given back when
/// the connection, and whatever holds a clone (a socket waiting for its
/// legacy `hello`), is gone.
#[derive(Clone, Debug)]
pub(crate) struct Standing(Arc<StandingOf>);

#[derive(Debug)]
struct StandingOf {
    address: IpAddr,
    strangers: Arc<Strangers>,
    known: AtomicBool,
}

impl Standing {
    /// The connection has authenticated: it is no stranger any more.
    pub(crate) fn authenticated(&self) {
        if !self.0.known.swap(true, Ordering::AcqRel) {
            self.0.strangers.leave(self.0.address);
        }
    }
}

impl Drop for StandingOf {
    fn drop(&mut self) {
        if !self.known.load(Ordering::Acquire) {
            self.strangers.leave(self.address);
        }
    }
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
    let strangers = Arc::new(Strangers {
        by_address: Mutex::default(),
        max: bounds.max_unauthenticated_per_address.max(1),
    });
    let connections = TaskTracker::new();
    // Cancelled once the drain is over: what is still open is dropped.
    let hard_stop = CancellationToken::new();
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
        // One address may not hold more than its share of connections
        // that have not shown a credential: refused by closing at once.
        if !strangers.enter(peer.ip()) {
            metrics.refused("unauthenticated_per_address");
            tracing::debug!(address = %peer.ip(), "too many unauthenticated connections");
            continue;
        }
        let standing = Standing(Arc::new(StandingOf {
            address: peer.ip(),
            strangers: strangers.clone(),
            known: AtomicBool::new(false),
        }));
        let service = router
            .clone()
            .layer(axum::Extension(ConnectInfo(peer)))
            .layer(axum::Extension(standing));
        let shutdown = shutdown.clone();
        let hard_stop = hard_stop.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let _permit = permit;
            metrics.tcp_opened();
            // However the task ends (done, dropped at the hard stop).
            let _closed = scopeguard::guard((), move |()| metrics.tcp_closed());
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
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended");
                    }
                }
                () = hard_stop.cancelled() => {}
            }
        });
    }
    connections.close();
    if tokio::time::timeout(bounds.drain, connections.wait())
        .await
        .is_err()
    {
        hard_stop.cancel();
        connections.wait().await;
    }
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
