//! What the daemon counts besides the edge: tool calls, provider calls and
//! their tokens, and store calls, registered into the same Prometheus
//! registry as the edge's metrics, which the edge serves as `GET /metrics`.
//!
//! Labels whose values come from outside (tool and model names) are
//! reduced to a known set by the caller; no label names a user.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 100 µs to about 100 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// The daemon's own metrics.
pub(crate) struct DaemonMetrics {
    tool_calls: Family<Labels, Counter>,
    tool_latency: Family<Labels, Histogram, fn() -> Histogram>,
    provider_calls: Family<Labels, Counter>,
    provider_latency: Family<Labels, Histogram, fn() -> Histogram>,
    provider_tokens: Family<Labels, Counter>,
    store_latency: Family<Labels, Histogram, fn() -> Histogram>,
    store_errors: Family<Labels, Counter>,
}

impl std::fmt::Debug for DaemonMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonMetrics").finish_non_exhaustive()
    }
}

impl DaemonMetrics {
    /// The daemon's metrics, registered into `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = DaemonMetrics {
            tool_calls: Family::default(),
            tool_latency: Family::new_with_constructor(latency_histogram),
            provider_calls: Family::default(),
            provider_latency: Family::new_with_constructor(latency_histogram),
            provider_tokens: Family::default(),
            store_latency: Family::new_with_constructor(latency_histogram),
            store_errors: Family::default(),
        };
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
        m
    }

    /// A tool call finished. `tool` must come from the known set of tools.
    pub(crate) fn tool_call(&self, tool: &str, outcome: &'static str, took: Duration) {
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
    pub(crate) fn provider_call(
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
    pub(crate) fn store_operation(&self, operation: &'static str, took: Duration, failed: bool) {
        let labels = vec![("operation", operation.to_owned())];
        self.store_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.store_errors.get_or_create(&labels).inc();
        }
    }
}
