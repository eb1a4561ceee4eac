//! Test support shared by every inbound test: a real upstream HTTP app written with hyper, a
//! proxy started on 127.0.0.1:0, clients, and bounded waits.
//!
//! Invariant: every wait is bounded (a deadline or an attempt count), so a broken proxy fails
//! a test instead of hanging it; no assertion depends on how long something took.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use tandem_proxy::{
    serve, AccessRecord, CancellationToken, DrainReport, Hooks, Inbound, ListenerConfig, Protocol,
    Serving,
};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

pub type TestBody = UnsyncBoxBody<Bytes, Infallible>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a test body under a deadline, so a hang is a failure.
pub async fn bounded<T, F: Future<Output = T>>(f: F) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test exceeded its 60 s bound")
}

/// Polls `cond` every 10 ms, up to 10 s; panics with `what` if it never holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed_unsync()
}

/// Hits and request bodies seen by the upstream, per path.
#[derive(Default, Debug)]
pub struct Seen {
    hits: Mutex<HashMap<String, usize>>,
    bodies: Mutex<HashMap<String, Vec<Bytes>>>,
}

impl Seen {
    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn bodies(&self, path: &str) -> Vec<Bytes> {
        self.bodies
            .lock()
            .expect("lock")
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    fn hit(&self, path: &str) {
        *self
            .hits
            .lock()
            .expect("lock")
            .entry(path.to_string())
            .or_default() += 1;
    }

    fn body(&self, path: &str, b: Bytes) {
        self.bodies
            .lock()
            .expect("lock")
            .entry(path.to_string())
            .or_default()
            .push(b);
    }
}

/// A real HTTP/1.1 + h2c app. Stopping it drops every connection at once, as a killed
/// process would.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), Arc::default()).await
    }

    /// Starts on `addr` (e.g. the port of a stopped upstream), sharing `seen`.
    pub async fn start_on(addr: SocketAddr, seen: Arc<Seen>) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("bind upstream");
        let listener = socket.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let task = {
            let stop = stop.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        Ok((stream, _)) = listener.accept() => {
                            let seen = seen.clone();
                            conns.spawn(async move {
                                let svc = service_fn(move |req| app(req, seen.clone()));
                                let _ = auto::Builder::new(TokioExecutor::new())
                                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                }
                // Dropping the set aborts every connection: a crash, not a drain.
                drop(conns);
                drop(listener);
            })
        };
        Self {
            addr,
            seen,
            stop,
            task,
        }
    }

    /// Kills the app: stops accepting and drops every connection.
    pub async fn stop(self) -> Arc<Seen> {
        self.stop.cancel();
        let _ = self.task.await;
        self.seen
    }
}

fn query_ms(req: &Request<Incoming>) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The app's routes.
async fn app(mut req: Request<Incoming>, seen: Arc<Seen>) -> Result<Response<TestBody>, BoxError> {
    let path = req.uri().path().to_string();
    seen.hit(&path);
    let mut resp = match path.as_str() {
        "/echo" => {
            let h = req.headers().clone();
            let method = req.method().to_string();
            let version = format!("{:?}", req.version());
            let body = req.into_body().collect().await?.to_bytes();
            seen.body(&path, body.clone());
            let mut r = Response::new(full(body));
            let rh = r.headers_mut();
            for (from, to) in [
                ("x-forwarded-for", "x-up-xff"),
                ("x-forwarded-proto", "x-up-proto"),
                ("x-forwarded-host", "x-up-fhost"),
                ("x-request-id", "x-up-rid"),
                ("host", "x-up-host"),
                ("idempotency-key", "x-up-idem"),
                ("expect", "x-up-expect"),
            ] {
                if let Some(v) = h.get(from) {
                    rh.insert(to, v.clone());
                }
            }
            rh.insert("x-up-method", HeaderValue::from_str(&method)?);
            rh.insert("x-up-version", HeaderValue::from_str(&version)?);
            rh.insert(
                "x-up-has-hop",
                HeaderValue::from_static(
                    if h.contains_key("x-hop") || h.contains_key("keep-alive") {
                        "yes"
                    } else {
                        "no"
                    },
                ),
            );
            r
        }
        "/headers" => {
            // Every request header as `name: value` lines, sorted: what the app was told.
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            lines.sort();
            Response::new(full(lines.join("\n")))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_ms(&req))).await;
            Response::new(full("slow done"))
        }
        "/unavailable" => {
            let mut r = Response::new(full("app says no"));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
        "/stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                for i in 0..10 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if tx
                        .send(Ok(Frame::data(Bytes::from(format!("chunk-{i}\n")))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let stream = tokio_stream_from(rx);
            Response::new(StreamBody::new(stream).boxed_unsync())
        }
        "/die-after-body" => {
            let body = req.into_body().collect().await?.to_bytes();
            seen.body(&path, body);
            // The app dies after the whole request reached it, before answering.
            return Err("app died".into());
        }
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .ok_or("no key")?
                .as_bytes()
                .to_vec();
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            h.insert("upgrade", HeaderValue::from_static("websocket"));
            h.insert("connection", HeaderValue::from_static("upgrade"));
            h.insert(
                "sec-websocket-accept",
                HeaderValue::from_str(&derive_accept_key(&key))?,
            );
            r
        }
        _ => Response::new(full("ok")),
    };
    resp.headers_mut()
        .insert("x-up-path", HeaderValue::from_str(&path)?);
    Ok(resp)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A running proxy with its readiness switch, access log and metrics.
pub struct Proxy {
    pub addr: SocketAddr,
    pub ready: watch::Sender<bool>,
    pub log: Arc<Mutex<Vec<AccessRecord>>>,
    pub registry: Registry,
    serving: Option<Serving>,
}

impl Proxy {
    /// Binds and serves one listener in front of `upstream`, after `tweak` edits its config.
    pub async fn start(
        upstream: SocketAddr,
        protocol: Protocol,
        ready: bool,
        tweak: impl FnOnce(&mut ListenerConfig),
    ) -> Self {
        Self::start_with_hooks(upstream, protocol, ready, tweak, |h| h).await
    }

    /// As [`Proxy::start`], with `hooks` adding to the access log and metrics (e.g. a tracer).
    pub async fn start_with_hooks(
        upstream: SocketAddr,
        protocol: Protocol,
        ready: bool,
        tweak: impl FnOnce(&mut ListenerConfig),
        hooks: impl FnOnce(Hooks) -> Hooks,
    ) -> Self {
        let add = hooks;
        let mut cfg = ListenerConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            upstream.to_string(),
            protocol,
        );
        cfg.name = "test".into();
        tweak(&mut cfg);
        let bound = Inbound::bind(&[cfg]).await.expect("bind");
        let addr = bound.local_addrs()[0].1;
        let (tx, rx) = watch::channel(ready);
        let log: Arc<Mutex<Vec<AccessRecord>>> = Arc::default();
        let mut registry = Registry::default();
        let hooks = {
            let log = log.clone();
            add(Hooks::new()
                .with_access_log(move |r| log.lock().expect("lock").push(r.clone()))
                .with_metrics(&mut registry))
        };
        let serving = serve(bound, rx, CancellationToken::new(), hooks);
        Self {
            addr,
            ready: tx,
            log,
            registry,
            serving: Some(serving),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The metrics in Prometheus text format.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }

    /// The value of one sample line (`name{labels}`) in the metrics, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// The serving handle, for `reload()`.
    pub fn drain_handle_ref(&self) -> &Serving {
        self.serving.as_ref().expect("not drained")
    }

    pub fn drain_handle(&mut self) -> Serving {
        self.serving.take().expect("drained once")
    }

    pub async fn drain(&mut self) -> DrainReport {
        self.drain_handle().drain().await
    }
}

/// An HTTP/1.1 client with keep-alive.
pub fn h1_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request; returns status, headers and the whole body.
pub async fn send(
    client: &Client<HttpConnector, TestBody>,
    req: Request<TestBody>,
) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
    let resp = client.request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

pub async fn get(
    client: &Client<HttpConnector, TestBody>,
    url: &str,
) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
    let req = Request::get(url).body(full(Bytes::new()))?;
    send(client, req).await
}

/// What a GET in flight gives when it ends.
pub type Fetched = Result<(StatusCode, HeaderMap, Bytes), BoxError>;

/// The set-up drain and reconfigure share: an app, one proxy listener in front of it
/// (`protocol`, `drain_timeout`), and a `GET /slow?ms=<slow_ms>` from `client` in flight.
/// The app has seen that request when this returns.
pub struct SlowInFlight {
    pub up: Upstream,
    pub proxy: Proxy,
    /// The slow request; it ends with the app's "slow done" unless cut.
    pub slow: tokio::task::JoinHandle<Fetched>,
}

impl SlowInFlight {
    pub async fn start(
        protocol: Protocol,
        drain_timeout: Duration,
        client: &Client<HttpConnector, TestBody>,
        slow_ms: u64,
    ) -> Self {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, protocol, true, |c| {
            c.drain_timeout = drain_timeout;
        })
        .await;
        let url = proxy.url(&format!("/slow?ms={slow_ms}"));
        let slow = tokio::spawn({
            let client = client.clone();
            async move { get(&client, &url).await }
        });
        let seen = up.seen.clone();
        eventually("the slow request reached the app", || {
            seen.hits("/slow") == 1
        })
        .await;
        Self { up, proxy, slow }
    }
}

/// Whether connections to `addr` are refused within 500 attempts, 5 ms apart (a listener
/// closed by a drain or a reconfigure).
pub async fn refuses_connections(addr: SocketAddr) -> bool {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}
