//! What the edge counts: connections, MCP services, authentication,
//! sessions and the per-user connection limit, registered into a
//! Prometheus [`Registry`] the caller owns (which other parts of a service
//! fill too) and served as `GET /metrics`.
//!
//! No label ever carries a user: a per-user label would grow without
//! bound; per-user figures come from the store (`mcp_usage`, `exai
//! sessions list`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The edge's metrics.
#[derive(Default)]
pub struct EdgeMetrics {
    tcp_connections_open: Gauge,
    connections_open: Family<Labels, Gauge>,
    connections_opened: Family<Labels, Counter>,
    services_running: Gauge,
    services_started: Counter,
    auth_failures: Family<Labels, Counter>,
    credential_refreshes: Family<Labels, Counter>,
    session_events: Family<Labels, Counter>,
    sessions: Family<Labels, Gauge>,
    refusals: Family<Labels, Counter>,
}

impl std::fmt::Debug for EdgeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeMetrics").finish_non_exhaustive()
    }
}

impl EdgeMetrics {
    /// The edge's metrics, registered into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = EdgeMetrics::default();
        registry.register(
            "tcp_connections_open",
            "TCP connections open now on the public listener, of any kind (at most EXAI_MAX_CONNECTIONS)",
            m.tcp_connections_open.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open now, by transport",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_opened",
            "Connections accepted, by transport",
            m.connections_opened.clone(),
        );
        registry.register(
            "mcp_services_running",
            "WebSocket connections and HTTP sessions whose MCP service runs; the others are idle, their service suspended",
            m.services_running.clone(),
        );
        registry.register(
            "mcp_services_started",
            "MCP services started for WebSocket connections and HTTP sessions, first or resumed after idling",
            m.services_started.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused credentials, by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "credential_refreshes",
            "In-band auth/refresh requests, by outcome (ok, refused, other_user)",
            m.credential_refreshes.clone(),
        );
        registry.register(
            "session_events",
            "Sessions opened, resumed, closed and expired",
            m.session_events.clone(),
        );
        registry.register(
            "sessions",
            "Sessions this daemon holds, by status (connected); ended ones are counted in session_events",
            m.sessions.clone(),
        );
        registry.register(
            "refusals",
            "Requests refused by a limit, by limit",
            m.refusals.clone(),
        );
        m
    }

    pub(crate) fn tcp_opened(&self) {
        self.tcp_connections_open.inc();
    }

    pub(crate) fn tcp_closed(&self) {
        self.tcp_connections_open.dec();
    }

    pub(crate) fn connection_opened(&self, transport: &'static str) {
        let labels = vec![("transport", transport.to_owned())];
        self.connections_opened.get_or_create(&labels).inc();
        self.connections_open.get_or_create(&labels).inc();
    }

    pub(crate) fn connection_closed(&self, transport: &'static str) {
        let labels = vec![("transport", transport.to_owned())];
        self.connections_open.get_or_create(&labels).dec();
    }

    pub(crate) fn service_started(&self) {
        self.services_started.inc();
        self.services_running.inc();
    }

    pub(crate) fn service_stopped(&self) {
        self.services_running.dec();
    }

    pub(crate) fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    pub(crate) fn credential_refresh(&self, outcome: &'static str) {
        self.credential_refreshes
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    pub(crate) fn session_event(&self, event: &'static str) {
        self.session_events
            .get_or_create(&vec![("event", event.to_owned())])
            .inc();
    }

    /// Live sessions of silent daemons this daemon's heartbeat freed.
    pub(crate) fn sessions_reaped(&self, count: u64) {
        self.session_events
            .get_or_create(&vec![("event", "reaped".to_owned())])
            .inc_by(count);
    }

    pub(crate) fn session_attached(&self) {
        self.sessions
            .get_or_create(&vec![("status", "connected".to_owned())])
            .inc();
    }

    pub(crate) fn session_detached(&self) {
        self.sessions
            .get_or_create(&vec![("status", "connected".to_owned())])
            .dec();
    }

    pub(crate) fn refused(&self, limit: &'static str) {
        self.refusals
            .get_or_create(&vec![("limit", limit.to_owned())])
            .inc();
    }
}
