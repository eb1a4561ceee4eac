//! The observers a caller plugs into the proxy: an access-log sink, metrics, a tracer.
//!
//! Invariant: every one is optional and costs nothing per request when absent.

use std::sync::Arc;

use crate::obs::access_log::{AccessLogFn, AccessRecord};
use crate::obs::metrics::Metrics;
use crate::obs::trace::SharedTracer;

/// Observers the caller plugs in: an access-log sink and metrics. Both optional.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called once per finished request or TCP connection.
    pub access_log: Option<AccessLogFn>,
    /// Metric handles, registered in the caller's registry.
    pub metrics: Option<Metrics>,
    /// Spans per request and per attempt; None: tracing off (no per-request cost).
    pub tracer: Option<SharedTracer>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("access_log", &self.access_log.is_some())
            .field("metrics", &self.metrics.is_some())
            .field("tracer", &self.tracer.is_some())
            .finish()
    }
}

// === impl Hooks ===

impl Hooks {
    /// No access log, no metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an access-log sink.
    pub fn with_access_log(mut self, f: impl Fn(&AccessRecord) + Send + Sync + 'static) -> Self {
        self.access_log = Some(Arc::new(f));
        self
    }

    /// Traces every request: a SERVER span per request, a CLIENT span per attempt, the
    /// attempt's `traceparent` passed to the app.
    pub fn with_tracer(mut self, tracer: SharedTracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Registers the proxy's metrics in `registry` (under `tandem_proxy_`).
    pub fn with_metrics(mut self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.metrics = Some(Metrics::register(registry));
        self
    }
}
