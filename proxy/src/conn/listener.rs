//! The state one listener's connections share: its [`Route`] (what request steps need), the
//! protocol builders, the connection limit, counters, the drain tokens and the edge state.
//!
//! Invariant: built once per listener in [`crate::conn::inbound::serve`]; every connection and
//! request holds an `Arc` to it, so nothing here is global and two listeners never share a
//! budget, a limit or a pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{CheckedListener, Protocol};
use crate::conn::rlimit;
use crate::edge::Edge;
use crate::http::app_exits::AppExits;
use crate::http::route::Route;
use crate::obs::hooks::Hooks;
use crate::obs::metrics::ListenerMetrics;

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

/// One listener: its [`Route`] to the app, the protocol builders for its connections, and
/// what connections and drain share (connection limit, counters, tokens, tasks, edge state).
pub(crate) struct Listener {
    /// What every request step may need: config, the app's address and client, budget,
    /// concurrency limit, readiness, hooks.
    pub route: Route,
    /// HTTP/1.1 connections (`http` listeners; TLS with ALPN `http/1.1` or none).
    pub h1: http1::Builder,
    /// HTTP/2 connections (`h2c` listeners; TLS with ALPN `h2`).
    pub h2: http2::Builder<TrackedExecutor>,
    /// One permit per open client connection (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
    pub counters: Counters,
    /// Cancelled when draining starts: connections finish what they have, then close.
    pub shutdown: CancellationToken,
    /// Cancelled at the drain deadline: whatever still runs is cut.
    pub hard_stop: CancellationToken,
    /// Every connection and tunnel task, so drain can wait for them.
    pub tasks: TaskTracker,
    /// TLS, auth and rate-limit state loaded from files at bind.
    pub edge: Edge,
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
        let route = Route::new(
            checked,
            readiness,
            hooks,
            edge.upstream_tls.clone(),
            app_exits,
        );
        let cfg = &route.cfg;
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
        Self {
            h1,
            h2,
            connections: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            counters: Counters::default(),
            shutdown,
            hard_stop: CancellationToken::new(),
            tasks,
            edge,
            route,
        }
    }

    pub fn protocol_label(&self) -> &'static str {
        match self.route.cfg.protocol {
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
        let metrics = &self.route.metrics;
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                if let Some(m) = metrics {
                    m.connections_open.inc();
                }
                Some(ConnSlot {
                    _permit: permit,
                    metrics: metrics.clone(),
                })
            }
            Err(_) => {
                if let Some(m) = metrics {
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
