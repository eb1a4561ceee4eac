//! What the request steps of one listener share: its config, the app's address and pooled
//! client, the retry budget, the concurrency limit, the readiness watch and the hooks.
//!
//! Invariant: built once per listener (inside [`crate::conn::listener::Listener`]) and never
//! shared by two listeners; it holds nothing of connections or drain, so a step that takes a
//! `&Route` cannot reach a socket, a task tracker or a shutdown token.

use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{watch, Semaphore};

use crate::config::{CheckedListener, ListenerConfig, Protocol};
use crate::edge::upstream_tls::{AppConnector, UpstreamTls};
use crate::http::app_exits::AppExits;
use crate::http::budget::RetryBudget;
use crate::http::replay::UpstreamBody;
use crate::obs::hooks::Hooks;
use crate::obs::metrics::ListenerMetrics;

/// The most one upstream HTTP/1 connection buffers of the app's answer (head and body).
const APP_READ_BUF_MAX: usize = 64 * 1024;

/// See the module doc.
pub(crate) struct Route {
    pub name: String,
    pub cfg: ListenerConfig,
    /// This listener's metric handles, when metrics are on.
    pub metrics: Option<ListenerMetrics>,
    pub hooks: Hooks,
    pub upstream: Authority,
    /// `http://` and `upstream`: what the connector is asked for.
    pub upstream_uri: Uri,
    /// TCP (then TLS) to the app, for connections bound to a client connection.
    pub connector: AppConnector,
    /// HTTP/1 towards the app, for connections bound to a client connection (the pooled
    /// client's settings).
    pub h1: hyper::client::conn::http1::Builder,
    /// Bound connections use tandem's own HTTP/1 exchange (`http::h1`): plain TCP to the
    /// app and header case not kept (hyper's client does both).
    pub own_h1: bool,
    pub client: Client<AppConnector, UpstreamBody>,
    pub budget: RetryBudget,
    /// One permit per request in flight (`limits.max_concurrent`).
    pub limiter: Arc<Semaphore>,
    pub readiness: watch::Receiver<bool>,
    /// The app's exits and the attempts in flight (query-of-death protection).
    pub app_exits: AppExits,
}

// === impl Route ===

impl Route {
    /// `checked`: the config and the app's address parsed from it at bind time;
    /// `upstream_tls`: TLS towards the app, when the config asks for it.
    pub fn new(
        checked: CheckedListener,
        readiness: watch::Receiver<bool>,
        hooks: Hooks,
        upstream_tls: Option<Arc<UpstreamTls>>,
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
        let own_h1 = upstream_tls.is_none() && !cfg.preserve_header_case;
        let connector = AppConnector::new(connector, upstream_tls, metrics.clone());
        let mut h1 = hyper::client::conn::http1::Builder::new();
        h1.preserve_header_case(cfg.preserve_header_case)
            .max_buf_size(APP_READ_BUF_MAX);
        let upstream_uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(upstream.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(t.pool_idle)
            .pool_max_idle_per_host(64)
            .http1_preserve_header_case(cfg.preserve_header_case)
            // hyper's read buffer grows to ~400 KiB per connection on a large response body
            // (64 idle pooled connections could keep 25 MiB): 64 KiB bounds it, and an app's
            // response head, as Envoy's 60 KiB default does, at a few more reads per MiB.
            .http1_max_buf_size(APP_READ_BUF_MAX)
            .http2_only(cfg.protocol == Protocol::H2c)
            // Reused pooled connections found dead before the request was written are
            // retried by the pool itself: that is the "safe even for POST" case.
            .retry_canceled_requests(true)
            .set_host(true)
            .build(connector.clone());
        let r = &cfg.retry;
        Self {
            budget: RetryBudget::new(r.budget_ratio, r.budget_min_per_second, r.budget_ttl),
            limiter: Arc::new(Semaphore::new(cfg.limits.max_concurrent)),
            name,
            metrics,
            hooks,
            upstream,
            upstream_uri,
            connector,
            h1,
            own_h1,
            client,
            readiness,
            app_exits,
            cfg,
        }
    }
}
