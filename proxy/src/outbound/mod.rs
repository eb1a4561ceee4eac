//! The outbound side: the app's calls to other services, through one local listener per
//! service (`[[outbound]]`), with discovery, balancing, ejection, circuit breaking, retries on
//! another endpoint, a CLIENT span per call and per attempt, and gRPC awareness.
//!
//! Lifecycle, as the supervisor drives it: [`Outbound::bind`] before the app starts (the app
//! may call out at once), [`serve_outbound`] right after, and [`OutboundServing::drain`] only
//! once the app has exited: the app may call out while it shuts down (the sidecar that stops
//! first breaks exactly those calls, istio#7136).
//!
//! Invariant: this folder imports from every other folder of the crate and none imports
//! from it (it is the top of the one-way order).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::outbound::Source;
use crate::config::{ForwardProxyConfig, OutboundConfig, Protocol};
use crate::edge::upstream_tls::UpstreamTls;
use crate::error::{ConfigError, ProxyError};
use crate::http::budget::RetryBudget;
use crate::obs::trace::SharedTracer;

mod balance;
mod breaker;
mod call;
mod discovery;
mod metrics;
mod tcp;
mod trace;

pub use metrics::OutboundMetrics;

use balance::Endpoints;
use breaker::Breaker;
use metrics::ServiceMetrics;

/// Outbound listeners bound, not yet serving.
pub struct BoundOutbound {
    services: Vec<Bound>,
    /// The forward-proxy listener, when configured.
    forward: Option<TcpListener>,
}

/// The hand-over key of the forward-proxy listener (service names cannot contain `(`).
const FORWARD_KEY: &str = "(forward-proxy)";

struct Bound {
    cfg: Arc<OutboundConfig>,
    source: Source,
    listener: TcpListener,
    tls: Option<Arc<UpstreamTls>>,
}

/// The outbound services (a namespace for [`Outbound::bind`]).
pub struct Outbound;

/// The outbound services while they serve.
pub struct OutboundServing {
    services: Vec<Running>,
    /// The forward-proxy listener's address and accept loop.
    forward: Option<(SocketAddr, tokio::task::JoinHandle<TcpListener>)>,
    /// Stops accepting, and asks HTTP connections to close after their request in flight.
    stop: CancellationToken,
    /// Cuts what is still open after the drain timeout.
    cut: CancellationToken,
    tracker: TaskTracker,
}

struct Running {
    cfg: Arc<OutboundConfig>,
    addr: SocketAddr,
    endpoints: Arc<Endpoints>,
    /// The accept loop; it returns the listening socket when it stops.
    accepting: tokio::task::JoinHandle<TcpListener>,
}

/// A read-only view of the outbound services for `/status`; cheap to clone.
#[derive(Clone)]
pub struct OutboundView(Arc<Vec<Viewed>>);

/// What the view keeps of one service.
type Viewed = (Arc<OutboundConfig>, SocketAddr, Arc<Endpoints>);

/// One service as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboundStatus {
    /// The `[[outbound]]` name.
    pub name: String,
    /// Where the app calls it.
    pub listen: String,
    /// `http`, `h2c` or `tcp`.
    pub protocol: Protocol,
    /// Its current endpoints.
    pub endpoints: Vec<EndpointStatus>,
}

/// One endpoint as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    /// `ip:port`.
    pub addr: String,
    /// Out of the rotation after consecutive failures.
    pub ejected: bool,
    /// Calls (or TCP connections) in flight to it.
    pub in_flight: u64,
}

impl OutboundView {
    /// Every service and its endpoints now.
    pub fn snapshot(&self) -> Vec<OutboundStatus> {
        self.0
            .iter()
            .map(|(cfg, addr, endpoints)| OutboundStatus {
                name: cfg.name.clone(),
                listen: addr.to_string(),
                protocol: cfg.protocol,
                endpoints: endpoints
                    .snapshot()
                    .iter()
                    .map(|e| EndpointStatus {
                        addr: e.label.clone(),
                        ejected: e.is_ejected(),
                        in_flight: e.in_flight(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// What a drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundDrain {
    /// Connections still open when the drain began.
    pub open: usize,
    /// Whether they all closed within the drain timeout (else they were cut).
    pub finished: bool,
}

// === impl Outbound ===

impl Outbound {
    /// Validates every service (names unique, one source each; `NOMAD_UPSTREAM_ADDR_*` read)
    /// and binds their listeners.
    pub async fn bind(
        cfgs: &[OutboundConfig],
        forward: Option<&ForwardProxyConfig>,
    ) -> Result<BoundOutbound, ProxyError> {
        Self::bind_inherited(cfgs, forward, &mut |_, _| None).await
    }

    /// As [`Outbound::bind`], taking a listening socket the previous image handed over
    /// (`tandem upgrade`) where `inherited(name, listen)` gives one.
    pub async fn bind_inherited(
        cfgs: &[OutboundConfig],
        forward: Option<&ForwardProxyConfig>,
        inherited: &mut dyn FnMut(&str, SocketAddr) -> Option<std::net::TcpListener>,
    ) -> Result<BoundOutbound, ProxyError> {
        let mut services = Vec::with_capacity(cfgs.len());
        for (i, c) in cfgs.iter().enumerate() {
            c.validate()?;
            if cfgs[..i].iter().any(|o| o.name == c.name) {
                return Err(ConfigError::DuplicateName(format!("outbound {}", c.name)).into());
            }
            let source = c.source()?;
            let addr = c.listen_addr()?;
            let bind_err = |source| ProxyError::Bind {
                listener: format!("outbound {}", c.name),
                addr,
                source,
            };
            let listener = match inherited(&c.name, addr) {
                Some(l) => TcpListener::from_std(l).map_err(bind_err)?,
                None => bind(addr).map_err(bind_err)?,
            };
            let tls = c
                .tls
                .as_ref()
                .map(|u| {
                    UpstreamTls::load_for(
                        &format!("outbound {}", c.name),
                        c.protocol,
                        &c.default_server_name(),
                        u,
                    )
                    .map(Arc::new)
                })
                .transpose()?;
            services.push(Bound {
                cfg: Arc::new(c.clone()),
                source,
                listener,
                tls,
            });
        }
        let forward = match forward {
            None => None,
            Some(f) => {
                let addr = f.listen_addr()?;
                let bind_err = |source| ProxyError::Bind {
                    listener: "outbound_proxy".into(),
                    addr,
                    source,
                };
                Some(match inherited(FORWARD_KEY, addr) {
                    Some(l) => TcpListener::from_std(l).map_err(bind_err)?,
                    None => bind(addr).map_err(bind_err)?,
                })
            }
        };
        Ok(BoundOutbound { services, forward })
    }
}

/// Feeds an attempt's outcome to `endpoint`'s ejection state; an ejection is logged, and the
/// endpoint's `endpoint_ejected` gauge is 1 for as long as it lasts. Both protocols' calls
/// report here.
pub(crate) fn record_outcome(
    cfg: &OutboundConfig,
    endpoints: &Endpoints,
    metrics: Option<&ServiceMetrics>,
    endpoint: &balance::Endpoint,
    verdict: balance::Verdict,
) {
    let balance::Change::Ejected(time) = endpoints.record(endpoint, verdict, &cfg.ejection) else {
        return;
    };
    tracing::warn!(
        event = "outbound_endpoint_ejected",
        service = %cfg.name,
        endpoint = %endpoint.label,
        seconds = time.as_secs_f64(),
        "outbound endpoint ejected after consecutive failures"
    );
    if let Some(m) = metrics {
        m.ejected(&endpoint.label, true);
        let (m, label) = (m.clone(), endpoint.label.clone());
        tokio::spawn(async move {
            tokio::time::sleep(time).await;
            m.ejected(&label, false);
        });
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Starts serving the bound services: discovery, then the listeners. `metrics`: register
/// under `tandem_outbound_`; `tracer`: spans per call and attempt.
pub fn serve_outbound(
    bound: BoundOutbound,
    registry: Option<&mut Registry>,
    tracer: Option<SharedTracer>,
) -> OutboundServing {
    let all = registry.map(OutboundMetrics::register);
    let stop = CancellationToken::new();
    let cut = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut services = Vec::new();
    let mut by_name: HashMap<String, Arc<call::Service>> = HashMap::new();
    for Bound {
        cfg,
        source,
        listener,
        tls,
    } in bound.services
    {
        if let Some(t) = &tls {
            tokio::spawn(t.clone().watch(cut.clone()));
        }
        let metrics = all.as_ref().map(|a| ServiceMetrics::new(a, &cfg.name));
        let endpoints = Arc::new(match &source {
            Source::Static(addrs) => Endpoints::new(addrs),
            _ => Endpoints::default(),
        });
        if let Some(m) = &metrics {
            m.endpoints(endpoints.snapshot().len());
            m.breaker_open(false);
        }
        if !matches!(source, Source::Static(_)) {
            match discovery::resolver(&cfg) {
                Ok(r) => {
                    tokio::spawn(discovery::follow(
                        cfg.clone(),
                        source,
                        r,
                        endpoints.clone(),
                        metrics.clone(),
                        cut.clone(),
                    ));
                }
                Err(e) => tracing::error!(
                    event = "outbound_resolver_failed",
                    service = %cfg.name,
                    error = %e,
                    "no resolver for the outbound service: its calls get 503 no_endpoints"
                ),
            }
        }
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        tracing::info!(
            event = "outbound_listening",
            service = %cfg.name,
            %addr,
            protocol = ?cfg.protocol,
            "outbound service listening"
        );
        let breaker = Breaker::new(
            cfg.breaker.max_requests,
            cfg.breaker.max_pending,
            metrics.clone(),
        );
        let accept = Accept {
            listener,
            stop: stop.clone(),
            cut: cut.clone(),
            tracker: tracker.clone(),
        };
        let accepting = if cfg.protocol == Protocol::Tcp {
            let svc = Arc::new(tcp::TcpService {
                tls,
                cfg: cfg.clone(),
                endpoints: endpoints.clone(),
                breaker,
                metrics,
            });
            tokio::spawn(accept.run(move |stream, tokens| {
                let svc = svc.clone();
                async move { tcp::serve(svc, stream, tokens).await }
            }))
        } else {
            let r = &cfg.retry;
            let svc = Arc::new(call::Service {
                client: call::client(&cfg, tls),
                host: cfg
                    .authority
                    .as_deref()
                    .and_then(|a| http::HeaderValue::from_str(a).ok()),
                budget: RetryBudget::new(r.budget_ratio, r.budget_min_per_second, r.budget_ttl),
                cfg: cfg.clone(),
                endpoints: endpoints.clone(),
                breaker,
                metrics,
                tracer: tracer.clone(),
            });
            let protocol = cfg.protocol;
            by_name.insert(cfg.name.clone(), svc.clone());
            tokio::spawn(accept.run(move |stream, (stop, cut)| {
                let svc = svc.clone();
                async move { serve_http(svc, protocol, stream, stop, cut).await }
            }))
        };
        services.push(Running {
            cfg,
            addr,
            endpoints,
            accepting,
        });
    }
    let forward = bound.forward.map(|listener| {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        tracing::info!(event = "outbound_proxy_listening", %addr, services = ?by_name.keys().collect::<Vec<_>>(), "outbound forward proxy listening (HTTP_PROXY)");
        let accept = Accept {
            listener,
            stop: stop.clone(),
            cut: cut.clone(),
            tracker: tracker.clone(),
        };
        let by_name = Arc::new(by_name);
        (
            addr,
            tokio::spawn(accept.run(move |stream, (stop, cut)| {
                let by_name = by_name.clone();
                async move {
                    let service = hyper::service::service_fn(move |req| {
                        let by_name = by_name.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(forward_call(&by_name, req).await)
                        }
                    });
                    drive_http(Protocol::Http, stream, service, stop, cut).await;
                }
            })),
        )
    });
    OutboundServing {
        services,
        forward,
        stop,
        cut,
        tracker,
    }
}

/// A request to the forward proxy: its host (absolute-form target, else `Host`) names the
/// service; an unknown name is a 404 that says so.
async fn forward_call(
    by_name: &HashMap<String, Arc<call::Service>>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<call::CallBody> {
    let host = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| crate::config::host_of(h).to_string())
        })
        .unwrap_or_default();
    match by_name.get(&host) {
        Some(svc) => call::handle(svc.clone(), req).await,
        None => call::CallBody::answer(
            http::StatusCode::NOT_FOUND,
            format!("tandem: no outbound service named {host:?} (an [[outbound]] http or h2c service's name is the host to ask for)\n"),
        ),
    }
}

/// The accept loop of one service.
struct Accept {
    listener: TcpListener,
    stop: CancellationToken,
    cut: CancellationToken,
    tracker: TaskTracker,
}

/// The tokens one connection watches: (stop accepting new requests, cut now).
type Tokens = (CancellationToken, CancellationToken);

impl Accept {
    async fn run<F, Fut>(self, serve: F) -> TcpListener
    where
        F: Fn(TcpStream, Tokens) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return self.listener,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        self.tracker
                            .spawn(serve(stream, (self.stop.clone(), self.cut.clone())));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "outbound accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

/// One HTTP connection of the app to a service.
async fn serve_http(
    svc: Arc<call::Service>,
    protocol: Protocol,
    stream: TcpStream,
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| {
        let svc = svc.clone();
        async move { Ok::<_, std::convert::Infallible>(call::handle(svc, req).await) }
    });
    drive_http(protocol, stream, service, stop, cut).await;
}

/// How long a connection that has not sent its first request yet is given to send it once
/// the drain (or a hand-over) begins: it was accepted, so its request must be answered, not
/// met with a closed socket.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves one HTTP connection until it closes; on drain (`stop`), closed after its request in
/// flight (a connection with no request yet first gets [`FIRST_REQUEST_GRACE`] to send one);
/// cut at the drain deadline.
async fn drive_http<S>(
    protocol: Protocol,
    stream: TcpStream,
    service: S,
    stop: CancellationToken,
    cut: CancellationToken,
) where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<call::CallBody>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = TokioIo::new(stream);
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = {
        let asked = asked.clone();
        hyper::service::service_fn(move |req| {
            asked.store(true, std::sync::atomic::Ordering::Relaxed);
            hyper::service::Service::call(&service, req)
        })
    };
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            let grace = tokio::time::sleep(Duration::MAX);
            tokio::pin!(grace);
            let (mut stopping, mut waiting) = (false, false);
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    () = stop.cancelled(), if !stopping => {
                        stopping = true;
                        if asked.load(std::sync::atomic::Ordering::Relaxed) {
                            conn.as_mut().graceful_shutdown();
                        } else {
                            waiting = true;
                            grace.as_mut().reset(Instant::now() + FIRST_REQUEST_GRACE);
                        }
                    }
                    () = grace.as_mut(), if waiting => {
                        waiting = false;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = cut.cancelled() => break,
                }
            }
        }};
    }
    if protocol == Protocol::H2c {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        drive!(b.serve_connection(io, service));
    } else {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new()).keep_alive(true);
        drive!(b.serve_connection(io, service));
    }
}

// === impl OutboundServing ===

impl OutboundServing {
    /// A view of the services and their endpoints for `/status`.
    pub fn view(&self) -> OutboundView {
        OutboundView(Arc::new(
            self.services
                .iter()
                .map(|s| (s.cfg.clone(), s.addr, s.endpoints.clone()))
                .collect(),
        ))
    }

    /// Stops accepting, lets the calls in flight finish (up to the longest `drain_timeout`),
    /// then cuts the rest. Call it once the app has exited.
    pub async fn drain(self) -> OutboundDrain {
        self.hand_over().await.1
    }

    /// As [`OutboundServing::drain`], keeping the listening sockets (for `tandem upgrade`:
    /// connections arriving meanwhile wait in their backlog for the next image), by service
    /// name.
    pub async fn hand_over(self) -> (Vec<(String, std::net::TcpListener)>, OutboundDrain) {
        let timeout = self
            .services
            .iter()
            .map(|s| s.cfg.drain_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        self.stop.cancel();
        self.tracker.close();
        let mut listeners = Vec::new();
        if let Some((_, accepting)) = self.forward {
            if let Ok(l) = accepting.await {
                if let Ok(l) = l.into_std() {
                    listeners.push((FORWARD_KEY.to_string(), l));
                }
            }
        }
        for s in self.services {
            if let Ok(l) = s.accepting.await {
                if let Ok(l) = l.into_std() {
                    listeners.push((s.cfg.name.clone(), l));
                }
            }
        }
        let open = self.tracker.len();
        let finished = tokio::time::timeout_at(Instant::now() + timeout, self.tracker.wait())
            .await
            .is_ok();
        self.cut.cancel();
        if !finished {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        }
        (listeners, OutboundDrain { open, finished })
    }
}
