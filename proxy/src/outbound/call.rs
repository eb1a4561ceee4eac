//! One HTTP call of the app to an outbound service: the breaker, the replay buffer, attempts
//! on endpoints chosen by the balancer (each retry on another endpoint when there is one),
//! outlier ejection fed by every attempt, and the accounting that lasts until the response
//! body ends (metrics, the call's span, the breaker's place, the endpoint's in-flight count).
//!
//! Invariant: a call answers exactly once and is counted once, when its response body ends or
//! is dropped; an attempt that may have reached the endpoint is repeated only when the request
//! is safe to repeat (an idempotent method, an `Idempotency-Key`, a gRPC `UNAVAILABLE`
//! answered in the head) and the retry budget allows.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::cause::Cause;
use crate::config::{OutboundConfig, Protocol};
use crate::edge::upstream_tls::{AppConnector, UpstreamTls};
use crate::grpc;
use crate::http::backoff::jittered;
use crate::http::body::ProxyBody;
use crate::http::budget::RetryBudget;
use crate::http::hygiene;
use crate::http::replay::{BoxError, Prepared, UpstreamBody};
use crate::http::retry::{self, Outcome, Verdict};
use crate::obs::metrics::status_class;
use crate::obs::trace::SharedTracer;
use crate::outbound::balance::{self, Endpoint, Endpoints, InFlight};
use crate::outbound::breaker::{Breaker, Permit, Refused};
use crate::outbound::metrics::ServiceMetrics;
use crate::outbound::trace::{CallSpan, Ended};

/// What the calls of one HTTP service share.
pub(crate) struct Service {
    pub cfg: Arc<OutboundConfig>,
    pub endpoints: Arc<Endpoints>,
    pub breaker: Breaker,
    pub budget: RetryBudget,
    pub client: Client<AppConnector, UpstreamBody>,
    pub metrics: Option<ServiceMetrics>,
    pub tracer: Option<SharedTracer>,
    /// The `Host` sent on HTTP/1.1 when `authority` is configured.
    pub host: Option<HeaderValue>,
}

/// The client of one service: pooled keep-alive connections per endpoint, TLS when `tls`.
pub(crate) fn client(
    cfg: &OutboundConfig,
    tls: Option<Arc<UpstreamTls>>,
) -> Client<AppConnector, UpstreamBody> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.timeouts.connect));
    http.enforce_http(true);
    let mut b = Client::builder(hyper_util::rt::TokioExecutor::new());
    b.pool_idle_timeout(cfg.timeouts.pool_idle)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new());
    if cfg.protocol == Protocol::H2c {
        b.http2_only(true);
    }
    b.build(AppConnector::new(http, tls, None))
}

/// The body of a call's response: the endpoint's (or tandem's) body, finishing the call's
/// accounting when it ends, is cut, or is dropped; reads `grpc-status` from the trailers.
pub(crate) struct CallBody {
    inner: ProxyBody,
    finish: Option<Finish>,
}

/// What a call keeps until its response body ends.
struct Finish {
    svc: Arc<Service>,
    start: Instant,
    status: u16,
    grpc: Option<u32>,
    cause: Option<Cause>,
    span: Option<CallSpan>,
    in_flight: Option<Gauge>,
    _permit: Option<Permit>,
    _endpoint: Option<InFlight>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(g) = &self.in_flight {
            g.dec();
        }
        let ended = match self.cause {
            Some(c) => Ended::Failed(c),
            None => Ended::Status(self.status, self.grpc),
        };
        if let Some(m) = &self.svc.metrics {
            m.request(
                status_class(self.status),
                self.start.elapsed().as_secs_f64(),
            );
            if let Some(c) = self.cause {
                m.error(c.as_str());
            }
            if let Some(g) = self.grpc {
                m.grpc_status(g);
            }
        }
        if let Some(span) = self.span.take() {
            span.end(ended);
        }
    }
}

impl CallBody {
    /// An answer of tandem's own, outside any call's accounting.
    pub fn answer(status: StatusCode, text: String) -> Response<CallBody> {
        let mut resp = Response::new(CallBody {
            inner: ProxyBody::Tandem(http_body_util::Full::new(Bytes::from(text))),
            finish: None,
        });
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

impl Body for CallBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(t), Some(fin)) = (f.trailers_ref(), self.finish.as_mut()) {
                    if let Some(g) = grpc::status(t) {
                        fin.grpc = Some(g);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish.take();
                }
            }
            Poll::Ready(None) => {
                self.finish.take();
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = self.finish.as_mut() {
                    f.cause = Some(Cause::UpstreamReset);
                }
                self.finish.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One call, arrival to response head; its accounting lasts until the body ends.
pub(crate) async fn handle(svc: Arc<Service>, req: Request<Incoming>) -> Response<CallBody> {
    let start = Instant::now();
    let in_flight = svc.metrics.as_ref().map(ServiceMetrics::in_flight);
    if let Some(g) = &in_flight {
        g.inc();
    }
    let span = CallSpan::start(svc.tracer.as_ref(), &svc.cfg.name, &req);
    let limit = match grpc::timeout(req.headers()) {
        Some(t) => t.min(svc.cfg.timeouts.request),
        None => svc.cfg.timeouts.request,
    };
    let deadline = start + limit;
    let mut fin = Finish {
        svc: svc.clone(),
        start,
        status: 0,
        grpc: None,
        cause: None,
        span,
        in_flight,
        _permit: None,
        _endpoint: None,
    };
    let result = match tokio::time::timeout_at(deadline, call(&svc, req, &mut fin, deadline)).await
    {
        Ok(r) => r,
        Err(_) => Err(Cause::RequestTimeout),
    };
    let resp = match result {
        Ok(mut resp) => {
            hygiene::strip_hop_by_hop(resp.headers_mut(), false);
            resp
        }
        Err(cause) => {
            fin.cause = Some(cause);
            tracing::debug!(service = %svc.cfg.name, %cause, "outbound call answered by tandem");
            cause.response().map(ProxyBody::Tandem)
        }
    };
    fin.status = resp.status().as_u16();
    if fin.grpc.is_none() {
        fin.grpc = grpc::status(resp.headers());
    }
    let (parts, body) = resp.into_parts();
    let mut body = CallBody {
        inner: body,
        finish: Some(fin),
    };
    if body.inner.is_end_stream() {
        body.finish.take();
    }
    Response::from_parts(parts, body)
}

/// The breaker, then attempts until an answer worth returning.
async fn call(
    svc: &Arc<Service>,
    req: Request<Incoming>,
    fin: &mut Finish,
    deadline: Instant,
) -> Result<Response<ProxyBody>, Cause> {
    let cfg = &svc.cfg;
    fin._permit = Some(svc.breaker.acquire(deadline).await.map_err(|r| match r {
        Refused::Open => Cause::BreakerOpen,
        Refused::Timeout => Cause::RequestTimeout,
    })?);
    let (mut parts, body) = req.into_parts();
    hygiene::strip_hop_by_hop(&mut parts.headers, false);
    parts.headers.remove(HOST);
    let is_grpc = grpc::is_grpc(&parts.headers);
    let safe = retry::is_safe_to_repeat(&parts.method, &parts.headers, &cfg.retry);
    svc.budget.deposit();
    let mut prepared =
        Prepared::read(body, &parts.headers, cfg.retry.max_replay_body_bytes, None).await?;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 0;
    loop {
        let ep = svc
            .endpoints
            .pick(cfg.balance, &tried)
            .ok_or(Cause::NoEndpoints)?;
        attempt += 1;
        tried.push(ep.addr);
        let uri: Uri = format!("http://{}{path}", ep.label)
            .parse()
            .map_err(|_| Cause::BadRequest)?;
        let mut req = Request::new(prepared.take_body());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = parts.headers.clone();
        if cfg.protocol == Protocol::Http {
            *req.version_mut() = http::Version::HTTP_11;
            if let Some(h) = &svc.host {
                req.headers_mut().insert(HOST, h.clone());
            }
        } else {
            *req.version_mut() = http::Version::HTTP_2;
        }
        let guard = ep.begin();
        let result = send(svc, &ep, req, fin.span.as_ref(), attempt).await;
        let grpc_status = result.as_ref().ok().and_then(|r| grpc::status(r.headers()));
        let outcome = match &result {
            Ok(resp) => Outcome::Status(resp.status()),
            Err(c) => Outcome::Failed(*c),
        };
        let failed = match outcome {
            Outcome::Status(s) => s.is_server_error() || grpc_status == Some(grpc::UNAVAILABLE),
            Outcome::Failed(c) => matches!(
                c,
                Cause::ConnectFailed
                    | Cause::ConnectTimeout
                    | Cause::UpstreamReset
                    | Cause::PerTryTimeout
            ),
        };
        let verdict = if failed {
            balance::Verdict::Failed
        } else {
            balance::Verdict::Healthy
        };
        super::record_outcome(cfg, &svc.endpoints, svc.metrics.as_ref(), &ep, verdict);
        // gRPC: UNAVAILABLE in the head is safe to repeat (the server did not process it),
        // RESOURCE_EXHAUSTED only when configured; other statuses are the answer.
        let grpc_retry = is_grpc
            && match grpc_status {
                Some(grpc::UNAVAILABLE) => true,
                Some(grpc::RESOURCE_EXHAUSTED) => cfg.retry_grpc_resource_exhausted,
                _ => false,
            };
        let last = attempt >= cfg.retry.max_attempts || !prepared.is_replayable();
        let verdict = if last {
            Verdict::Stop
        } else if grpc_retry {
            Verdict::Budgeted
        } else {
            retry::verdict(outcome, safe)
        };
        let go = match verdict {
            Verdict::Stop => false,
            Verdict::Free => true,
            Verdict::Budgeted => {
                let ok = svc.budget.try_withdraw();
                if !ok {
                    if let Some(m) = &svc.metrics {
                        m.budget_exhausted();
                    }
                }
                ok
            }
        };
        if !go {
            // The endpoint counts this call in flight until its body ends.
            fin._endpoint = Some(guard);
            return result;
        }
        let reason = match (outcome, grpc_status) {
            (_, Some(grpc::UNAVAILABLE)) => "grpc_unavailable",
            (_, Some(grpc::RESOURCE_EXHAUSTED)) => "grpc_resource_exhausted",
            (Outcome::Status(s), _) => match s {
                StatusCode::BAD_GATEWAY => "status_502",
                StatusCode::SERVICE_UNAVAILABLE => "status_503",
                StatusCode::GATEWAY_TIMEOUT => "status_504",
                _ => "status_other",
            },
            (Outcome::Failed(c), _) => c.as_str(),
        };
        tracing::debug!(service = %cfg.name, endpoint = %ep.label, attempt, reason, "retrying on another endpoint");
        if let Some(m) = &svc.metrics {
            m.retry(reason);
        }
        drop(result);
        drop(guard);
        tokio::time::sleep(jittered(
            cfg.retry.backoff_base,
            cfg.retry.backoff_max,
            attempt,
        ))
        .await;
    }
}

/// One attempt to `ep` within `timeouts.per_try`; its latency feeds the balancer.
async fn send(
    svc: &Service,
    ep: &Arc<Endpoint>,
    mut req: Request<UpstreamBody>,
    call: Option<&CallSpan>,
    attempt: u32,
) -> Result<Response<ProxyBody>, Cause> {
    let span = call.map(|c| c.attempt(&mut req, ep.addr, attempt));
    let sent = Instant::now();
    let result = tokio::time::timeout(svc.cfg.timeouts.per_try, svc.client.request(req)).await;
    let rtt = sent.elapsed();
    let result = match result {
        Err(_) => Err(Cause::PerTryTimeout),
        Ok(Err(e)) => Err(crate::http::upstream::classify(&e)),
        Ok(Ok(resp)) => Ok(resp.map(ProxyBody::Pooled)),
    };
    // A failure weighs as a slow answer: a refused connect is fast, and must not make the
    // endpoint look like the best one.
    ep.observe(match &result {
        Ok(_) => rtt,
        Err(_) => rtt.max(FAILURE_PENALTY),
    });
    let (label, ended) = match &result {
        Ok(r) => {
            let s = r.status().as_u16();
            let g = grpc::status(r.headers());
            // A gRPC failure in the head (trailers-only) is the attempt's outcome.
            let label = match g {
                Some(code) if code != 0 => grpc::code_name(code),
                _ => status_class(s),
            };
            (label, Ended::Status(s, g))
        }
        Err(c) => (c.as_str(), Ended::Failed(*c)),
    };
    if let Some(m) = &svc.metrics {
        m.attempt(&ep.label, label);
    }
    if let Some(span) = span {
        span.end(ended);
    }
    result
}

/// The latency a failed attempt counts as.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);
