//! The inbound HTTP stack of one client connection: every bracket of a request's trip, in
//! order, outermost first. Each concern lives in its own module as a plain operation; this
//! file is the only place their order is decided.
//!
//! One service and one future per request, not a tower layer per concern: nine boxed layers
//! cost a boxed future, a service clone and an extension lookup each, per request, which was
//! most of the proxy's own CPU (see BENCHMARKS.md). The order below is the order those layers
//! had, and each step keeps its layer's contract.
//!
//! Invariant: every step below [`Stack::handle`] answers `Result<_, Cause>`; only `handle`
//! turns a cause into tandem's response (through the request's `RequestGuard`), so each
//! failure is counted and logged exactly once.
//!
//! Where per-request instrumentation plugs in (tracing): a server span from the start of
//! [`Stack::handle`] to the end of the response body (the request's `RequestGuard` holds it:
//! it sees the request head, the final response, the cause and how the body ended), and a
//! client span per attempt around [`upstream::send`] (called once per attempt by
//! [`retry::attempts`], after each attempt's readiness gate).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::cause::Cause;
use crate::config::Protocol;
use crate::conn::activity::ConnActivity;
use crate::conn::listener::Listener;
use crate::conn::metered::{CountingBody, MeteredBody, RequestGuard};
use crate::conn::upgrade;
use crate::edge::tls::TlsInfo;
use crate::edge::{mtls, ratelimit};
use crate::http::body::ProxyBody;
use crate::http::bound::Bound;
use crate::http::{host, hygiene, limits, ready, retry, shed, timeout};
use crate::obs::context::Ctx;
use crate::obs::trace::{Peer, ServerSpan};

/// The future a request's handling is.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The stack for one connection; cloning is one `Arc` increment.
#[derive(Clone)]
pub(crate) struct Stack(Arc<Shared>);

/// What every request of one connection shares, computed once per connection.
struct Shared {
    l: Arc<Listener>,
    peer: SocketAddr,
    conn: Arc<ConnActivity>,
    /// The TLS session's facts; each request carries a copy in its extensions.
    tls: Option<TlsInfo>,
    /// The identity header `mtls` strips and sets.
    identity_header: HeaderName,
    /// The client's address as an `X-Forwarded-For` element.
    peer_ip: HeaderValue,
    /// The client's address as span attributes (None when tracing is off).
    trace_peer: Option<Peer>,
    /// The app connection bound to this one: an HTTP/1.1 client of an HTTP/1.1 app.
    bound: Option<Bound>,
}

// === impl Stack ===

impl Stack {
    /// The stack for one connection from `peer` (`tls`: the handshake's facts, if any;
    /// `h2`: the client speaks HTTP/2).
    pub fn new(
        l: Arc<Listener>,
        peer: SocketAddr,
        conn: Arc<ConnActivity>,
        tls: Option<TlsInfo>,
        h2: bool,
    ) -> Self {
        let bound = (!h2 && l.route.cfg.protocol == Protocol::Http).then(Bound::default);
        Self(Arc::new(Shared {
            bound,
            identity_header: mtls::identity_header(&l.route.cfg),
            peer_ip: hygiene::ip_value(peer.ip()),
            trace_peer: l.route.hooks.tracer.as_ref().map(|_| Peer::new(peer)),
            l,
            peer,
            conn,
            tls,
        }))
    }

    /// The app connection bound to this client connection, if it has one.
    pub fn bound(&self) -> Option<&Bound> {
        self.0.bound.as_ref()
    }

    /// One request, arrival to response head. Accounting (access log, RED metrics, in-flight
    /// and drain counters, tandem's response headers) lasts until the response body ends.
    async fn handle(self, req: Request<Incoming>) -> Response<MeteredBody<ProxyBody>> {
        let s = &*self.0;
        let ctx = Arc::new(Ctx::new());
        let mut guard = RequestGuard::new(
            s.l.clone(),
            Some(s.conn.clone()),
            req.method(),
            req.uri().path(),
            ctx.clone(),
        );
        let mut req = req.map(|body| CountingBody::new(body, ctx.clone()));
        // the SERVER span (None when tracing is off); it ends with the guard, when the
        // response body ends or is cut
        if let Some(peer) = &s.trace_peer {
            guard.trace(ServerSpan::start(
                s.l.route.hooks.tracer.as_ref(),
                &ctx,
                &mut req,
                peer,
            ));
        }
        let result = self.forward(req, &ctx).await;
        let resp = match result {
            Ok(resp) => resp,
            Err(cause) => {
                guard.set_cause(cause);
                cause.response().map(ProxyBody::Tandem)
            }
        };
        guard.respond(resp)
    }

    /// The edge checks and rewrites, then the app's answer within the request timeout.
    async fn forward(
        &self,
        mut req: Request<CountingBody<Incoming>>,
        ctx: &Arc<Ctx>,
    ) -> Result<Response<ProxyBody>, Cause> {
        let s = &*self.0;
        let l = &s.l;
        let route = &l.route;
        if let Some(t) = &s.tls {
            req.extensions_mut().insert(t.clone());
        }
        // over max_concurrent in flight: 503 + Retry-After
        ctx.hold_permit(shed::acquire(&route.limiter)?);
        // header size/count: 431; Content-Length over the body limit: 413
        limits::check(&route.cfg.limits, req.headers())?;
        // CONNECT asks for a tunnel, not a resource of the app: 405 + Allow, unless the
        // listener allows HTTP/1.1 tunnels
        if req.method() == Method::CONNECT
            && !(route.cfg.allow_connect && req.version() == http::Version::HTTP_11)
        {
            return Err(Cause::MethodNotAllowed);
        }
        // exactly one well-formed Host, the same as the target's authority: 400
        let host = host::check(req.version(), req.uri(), req.headers()).map_err(Cause::BadHost)?;
        // hop-by-hop headers the client named, removed before tandem adds any of its own
        hygiene::strip_request(route.cfg.protocol, req.headers_mut());
        // client-sent identity header removed; the verified mTLS identity added
        let identity = s.tls.as_ref().and_then(|t| t.client_identity.as_deref());
        mtls::set_identity(&s.identity_header, identity, req.headers_mut());
        // JWT / API key / basic credentials: 401 + WWW-Authenticate, 403; claims as headers
        if let Some(auth) = &l.edge.auth {
            auth.authorize(&mut req).await?;
        }
        // token bucket per client IP or claim: 429 + Retry-After
        if let Some(limiter) = &l.edge.rate {
            ratelimit::check(limiter, &req, s.peer)?;
        }
        let client_version = req.version();
        // request id, X-Forwarded-*, the app's Host, URI and version
        let req = hygiene::rewrite(&route.cfg, &route.upstream, &s.peer_ip, ctx, host, req)?;
        // the whole request (holds, attempts, backoff): 504; a gRPC call's own deadline
        // (`grpc-timeout`) when shorter
        let limit = match crate::grpc::timeout(req.headers()) {
            Some(t) => t.min(route.cfg.timeouts.request),
            None => route.cfg.timeouts.request,
        };
        let mut resp = timeout::whole_request(limit, ctx, self.upgradable(req, ctx)).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            hygiene::strip_hop_by_hop(resp.headers_mut(), false);
        }
        // An HTTP/1.0 app's answer (Python's http.server) goes to an HTTP/1.1 client as
        // HTTP/1.1: tandem speaks 1.1 (RFC 9110 §6.2), and hyper would otherwise answer in
        // 1.0 and close the client's connection after every response.
        if client_version == http::Version::HTTP_11
            && matches!(
                resp.version(),
                http::Version::HTTP_10 | http::Version::HTTP_09
            )
        {
            *resp.version_mut() = http::Version::HTTP_11;
        }
        Ok(resp)
    }

    /// The app's answer; a 101 from the app becomes a tunnel.
    async fn upgradable<B>(&self, mut req: Request<B>, ctx: &Arc<Ctx>) -> RespResult
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<crate::http::replay::BoxError>,
    {
        let l = &self.0.l;
        let route = &l.route;
        let connect = req.method() == Method::CONNECT;
        let client_side = upgrade::take(&route.cfg, &mut req);
        // hold until the app is ready, before the body is read: 503 + Retry-After
        ready::gate(&route.readiness, ctx.start + route.cfg.hold_timeout).await?;
        // replay buffer, retry policy, budget, jittered backoff; each attempt waits for
        // readiness again and runs within per_try through the pooled client: 502/504
        // an upgrade takes its app connection for the tunnel: it comes from the pool
        let bound = self.0.bound.as_ref().filter(|_| client_side.is_none());
        let mut resp = retry::attempts(route, ctx, bound, req).await?;
        if let Some(client_side) = client_side {
            upgrade::finish(l, &self.0.conn, client_side, connect, &mut resp);
        }
        Ok(resp)
    }
}

type RespResult = Result<Response<ProxyBody>, Cause>;

impl hyper::service::Service<Request<Incoming>> for Stack {
    type Response = Response<MeteredBody<ProxyBody>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}
