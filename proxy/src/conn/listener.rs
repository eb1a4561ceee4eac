//! The state one listener's connections share: config, pooled client to the app, budget,
//! concurrency limit, hooks, counters and the drain tokens.
//!
//! Invariant: built once per listener in [`crate::conn::inbound::serve`]; every connection and
//! request holds an `Arc` to it, so nothing here is global and two listeners never share a
//! budget, a limit or a pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::uri::Authority;
use hyper::server::conn::{http1, http2};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{CheckedListener, ListenerConfig, Protocol};
use crate::conn::rlimit;
use crate::edge::upstream_tls::AppConnector;
use crate::edge::Edge;
use crate::http::app_exits::AppExits;
use crate::http::budget::RetryBudget;
use crate::http::replay::UpstreamBody;
use crate::obs::access_log::{AccessLogFn, AccessRecord};
use crate::obs::metrics::{ListenerMetrics, Metrics};
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

/// Request counters for the drain report.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub in_flight: AtomicU64,
    pub completed: AtomicU64,
}

/// Spawns hyper's background tasks (HTTP/2 streams) into the listener's tracker, so drain
/// waits for them too, not only for connection tasks.
#[derive(Clone)]
pub(crate) struct TrackedExecutor(TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

pub(crate) struct Listener {
    pub name: String,
    pub cfg: ListenerConfig,
    /// This listener's metric handles, when metrics are on.
    pub metrics: Option<ListenerMetrics>,
    pub upstream: Authority,
    pub client: Client<AppConnector, UpstreamBody>,
    /// HTTP/1.1 connections (`http` listeners; TLS with ALPN `http/1.1` or none).
    pub h1: http1::Builder,
    /// HTTP/2 connections (`h2c` listeners; TLS with ALPN `h2`).
    pub h2: http2::Builder<TrackedExecutor>,
    /// One permit per open client connection (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
    pub budget: RetryBudget,
    pub limiter: Arc<Semaphore>,
    pub readiness: watch::Receiver<bool>,
    pub hooks: Hooks,
    pub counters: Counters,
    /// Cancelled when draining starts: connections finish what they have, then close.
    pub shutdown: CancellationToken,
    /// Cancelled at the drain deadline: whatever still runs is cut.
    pub hard_stop: CancellationToken,
    /// Every connection and tunnel task, so drain can wait for them.
    pub tasks: TaskTracker,
    /// TLS, auth and rate-limit state loaded from files at bind.
    pub edge: Edge,
    /// The app's exits and the attempts in flight (query-of-death protection).
    pub app_exits: AppExits,
}

// === impl Listener ===

impl Listener {
    /// `checked`: the config and the app's address parsed from it at bind time;
    /// `listeners`: how many the proxy serves, for the derived `limits.max_connections`.
    pub fn new(
        checked: CheckedListener,
        listeners: usize,
        readiness: watch::Receiver<bool>,
        hooks: Hooks,
        shutdown: CancellationToken,
        edge: Edge,
        app_exits: AppExits,
    ) -> Self {
        let CheckedListener { cfg, upstream } = checked;
        let name = cfg.display_name();
        let t = &cfg.timeouts;
        let metrics = hooks
            .metrics
            .as_ref()
            .map(|m| ListenerMetrics::new(m, &name));
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(t.connect));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(t.pool_idle)
            .pool_max_idle_per_host(64)
            .http1_preserve_header_case(cfg.preserve_header_case)
            .http2_only(cfg.protocol == Protocol::H2c)
            // Reused pooled connections found dead before the request was written are
            // retried by the pool itself: that is the "safe even for POST" case.
            .retry_canceled_requests(true)
            .set_host(true)
            .build(AppConnector::new(
                connector,
                edge.upstream_tls.clone(),
                metrics.clone(),
            ));
        let tasks = TaskTracker::new();
        // One protocol per listener, as declared: an `http` listener never speaks HTTP/2 and
        // an `h2c` one never HTTP/1 (each builder refuses the other's first bytes).
        let mut h1 = http1::Builder::new();
        // No hyper header_read_timeout: its clock also runs while a keep-alive connection
        // idles, closing it early; `conn` runs the header-read clock itself.
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .preserve_header_case(cfg.preserve_header_case)
            .max_headers(cfg.limits.max_header_count)
            .max_buf_size(cfg.limits.max_header_bytes.saturating_add(16 * 1024));
        let mut h2 = http2::Builder::new(TrackedExecutor(tasks.clone()));
        // Reset and CONTINUATION floods are bounded by hyper's and h2's defaults (GOAWAY);
        // the header list and the streams by the listener's limits.
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        let max_connections = cfg
            .limits
            .max_connections
            .unwrap_or_else(|| rlimit::derived_max_connections(listeners));
        let r = &cfg.retry;
        Self {
            metrics,
            name,
            upstream,
            client,
            h1,
            h2,
            connections: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            budget: RetryBudget::new(r.budget_ratio, r.budget_min_per_second, r.budget_ttl),
            limiter: Arc::new(Semaphore::new(cfg.limits.max_concurrent)),
            readiness,
            hooks,
            counters: Counters::default(),
            shutdown,
            hard_stop: CancellationToken::new(),
            tasks,
            edge,
            app_exits,
            cfg,
        }
    }

    pub fn protocol_label(&self) -> &'static str {
        match self.cfg.protocol {
            Protocol::Http => "http",
            Protocol::H2c => "h2c",
            Protocol::Tcp => "tcp",
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.counters.in_flight.load(Ordering::Acquire)
    }

    pub fn completed(&self) -> u64 {
        self.counters.completed.load(Ordering::Acquire)
    }
}

/// One open client connection: its permit under `limits.max_connections` and its share of the
/// open-connections gauge, both given back on drop.
pub(crate) struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    metrics: Option<ListenerMetrics>,
}

impl Listener {
    /// A slot for a connection just accepted, or `None` (counted) when
    /// `limits.max_connections` are open.
    pub fn connection_slot(&self) -> Option<ConnSlot> {
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                if let Some(m) = &self.metrics {
                    m.connections_open.inc();
                }
                Some(ConnSlot {
                    _permit: permit,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
                if let Some(m) = &self.metrics {
                    m.connections_overflow.inc();
                }
                None
            }
        }
    }
}

/// Connections closed since start, all listeners: the supervisor gives memory back to the
/// system after a crowd of them leaves (see `supervisor/src/memory.rs`).
pub(crate) static CLOSED_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        CLOSED_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.connections_open.dec();
        }
    }
}
