//! What the daemon counts, in the Prometheus text format (`GET /metrics`).
//!
//! One registry per edge (no process-wide state), filled by the transport
//! (connections, authentication, sessions, refusals), the daemon's tools
//! and providers, and its store wrapper. No label ever carries a user: a
//! per-user label would grow without bound; per-user figures come from the
//! store (`mcp_usage`, `exai sessions list`). Labels whose values come from
//! outside (tool and model names) are reduced to a known set by the caller.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 100 µs to about 100 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    connections_open: Family<Labels, Gauge>,
    connections_opened: Family<Labels, Counter>,
    services_running: Gauge,
    services_started: Counter,
    auth_failures: Family<Labels, Counter>,
    credential_refreshes: Family<Labels, Counter>,
    session_events: Family<Labels, Counter>,
    sessions: Family<Labels, Gauge>,
    refusals: Family<Labels, Counter>,
    tool_calls: Family<Labels, Counter>,
    tool_latency: Family<Labels, Histogram, fn() -> Histogram>,
    provider_calls: Family<Labels, Counter>,
    provider_latency: Family<Labels, Histogram, fn() -> Histogram>,
    provider_tokens: Family<Labels, Counter>,
    store_latency: Family<Labels, Histogram, fn() -> Histogram>,
    store_errors: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// An empty registry with every metric declared.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("exai");
        let metrics = Metrics {
            connections_open: Family::default(),
            connections_opened: Family::default(),
            services_running: Gauge::default(),
            services_started: Counter::default(),
            auth_failures: Family::default(),
            credential_refreshes: Family::default(),
            session_events: Family::default(),
            sessions: Family::default(),
            refusals: Family::default(),
            tool_calls: Family::default(),
            tool_latency: Family::new_with_constructor(latency_histogram),
            provider_calls: Family::default(),
            provider_latency: Family::new_with_constructor(latency_histogram),
            provider_tokens: Family::default(),
            store_latency: Family::new_with_constructor(latency_histogram),
            store_errors: Family::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
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
            "WebSocket connections whose MCP service runs; the others are idle, their service suspended",
            m.services_running.clone(),
        );
        registry.register(
            "mcp_services_started",
            "MCP services started for WebSocket connections, first or resumed after idling",
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
        registry.register(
            "tool_calls",
            "Tool calls, by tool and outcome",
            m.tool_calls.clone(),
        );
        registry.register(
            "tool_call_duration_seconds",
            "Tool call latency, by tool",
            m.tool_latency.clone(),
        );
        registry.register(
            "provider_calls",
            "Provider calls, by provider, model and outcome",
            m.provider_calls.clone(),
        );
        registry.register(
            "provider_call_duration_seconds",
            "Provider call latency, by provider",
            m.provider_latency.clone(),
        );
        registry.register(
            "provider_tokens",
            "Tokens reported by providers, by provider, model and kind",
            m.provider_tokens.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Session store call latency, by operation",
            m.store_latency.clone(),
        );
        registry.register(
            "store_errors",
            "Session store calls that failed, by operation",
            m.store_errors.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
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

    /// A tool call finished. `tool` must come from the known set of tools.
    pub fn tool_call(&self, tool: &str, outcome: &'static str, took: Duration) {
        let tool = tool.to_owned();
        self.tool_calls
            .get_or_create(&vec![
                ("tool", tool.clone()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        self.tool_latency
            .get_or_create(&vec![("tool", tool)])
            .observe(took.as_secs_f64());
    }

    /// A provider call finished. `model` must be one the provider serves.
    pub fn provider_call(
        &self,
        provider: &str,
        model: &str,
        outcome: &'static str,
        took: Duration,
        tokens: Option<(u64, u64)>,
    ) {
        let (provider, model) = (provider.to_owned(), model.to_owned());
        self.provider_calls
            .get_or_create(&vec![
                ("provider", provider.clone()),
                ("model", model.clone()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        self.provider_latency
            .get_or_create(&vec![("provider", provider.clone())])
            .observe(took.as_secs_f64());
        if let Some((prompt, completion)) = tokens {
            for (kind, count) in [("prompt", prompt), ("completion", completion)] {
                self.provider_tokens
                    .get_or_create(&vec![
                        ("provider", provider.clone()),
                        ("model", model.clone()),
                        ("kind", kind.to_owned()),
                    ])
                    .inc_by(count);
            }
        }
    }

    /// A session store call finished.
    pub fn store_operation(&self, operation: &'static str, took: Duration, failed: bool) {
        let labels = vec![("operation", operation.to_owned())];
        self.store_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.store_errors.get_or_create(&labels).inc();
        }
    }
}
