//! The outermost step of the stack: accounting of one request from arrival until its response body ends
//! (in-flight counts, the access-log record, RED metrics, the drain counters, tandem's
//! response headers), and the one place a [`Cause`] becomes a response.
//!
//! Invariant: exactly one [`RequestGuard`] per request, and its `Drop` is the single place a
//! request is counted as finished, whether the body ended, the client went away or drain cut
//! it; so in-flight gauges cannot leak and every request gets exactly one log record.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::Response;
use http_body::{Body, Frame, SizeHint};

use crate::cause::Cause;
use crate::conn::activity::ConnActivity;
use crate::conn::listener::Listener;
use crate::http::body::ProxyBody;
use crate::http::hygiene::REQUEST_ID;
use crate::obs::access_log::AccessRecord;
use crate::obs::context::Ctx;
use crate::obs::metrics::method_label;
use crate::obs::trace::ServerSpan;

/// Number of attempts sent to the app, as Envoy's `x-envoy-attempt-count`.
pub const ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-tandem-attempt-count");
/// Milliseconds the last attempt waited for the app's response headers.
pub const UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-tandem-upstream-service-time");

/// Counts request body bytes as they are read.
pub(crate) struct CountingBody<B> {
    inner: B,
    ctx: Arc<Ctx>,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, ctx: Arc<Ctx>) -> Self {
        Self { inner, ctx }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(d) = f.data_ref() {
                self.ctx.add_bytes_in(d.len() as u64);
            }
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

/// One request's accounting; finished on drop.
pub(crate) struct RequestGuard {
    listener: Arc<Listener>,
    conn: Option<Arc<ConnActivity>>,
    ctx: Arc<Ctx>,
    method_label: &'static str,
    method: String,
    path: String,
    status: u16,
    cause: Option<Cause>,
    bytes_out: u64,
    completed: bool,
    /// The `grpc-status` of a gRPC answer (head or trailers).
    grpc: Option<u32>,
    /// The SERVER span, ended with the guard (when the response body ends or is cut).
    span: Option<ServerSpan>,
}

impl RequestGuard {
    pub fn new(
        listener: Arc<Listener>,
        conn: Option<Arc<ConnActivity>>,
        method: &http::Method,
        path: &str,
        ctx: Arc<Ctx>,
    ) -> Self {
        listener.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        if let Some(m) = &listener.route.metrics {
            m.in_flight.inc();
        }
        if let Some(c) = &conn {
            c.begin();
        }
        // Only the access log needs owned copies; without one, no allocation per request.
        let (method_text, path) = if listener.route.hooks.access_log.is_some() {
            (method.to_string(), path.to_string())
        } else {
            (String::new(), String::new())
        };
        Self {
            listener,
            conn,
            ctx,
            method_label: method_label(method),
            method: method_text,
            path,
            status: 0,
            cause: None,
            bytes_out: 0,
            completed: false,
            grpc: None,
            span: None,
        }
    }

    /// Ties the request's SERVER span (if traced) to the guard, so it ends with the response.
    pub fn trace(&mut self, span: Option<ServerSpan>) {
        self.span = span;
    }

    /// Notes that tandem answers with `cause`, and counts it.
    pub fn set_cause(&mut self, cause: Cause) {
        self.cause = Some(cause);
        tracing::debug!(listener = %self.listener.route.name, %cause, "tandem answered");
        if let Some(m) = &self.listener.route.metrics {
            m.error(cause);
            if cause == Cause::Shed {
                m.shed.inc();
            }
        }
    }

    /// Adds tandem's response headers and ties the guard to the response body.
    pub fn respond(mut self, mut resp: Response<ProxyBody>) -> Response<MeteredBody<ProxyBody>> {
        self.status = resp.status().as_u16();
        self.grpc = crate::grpc::status(resp.headers());
        if let Some(span) = &mut self.span {
            span.respond(self.status, self.cause);
        }
        let h = resp.headers_mut();
        h.insert(ATTEMPT_COUNT, number_value(u64::from(self.ctx.attempts())));
        if let Some(t) = self.ctx.upstream_time() {
            let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
            h.insert(UPSTREAM_SERVICE_TIME, number_value(ms));
        }
        if let Some(id) = self.ctx.request_id_value() {
            h.entry(REQUEST_ID).or_insert(id.clone());
        }
        resp.map(|body| MeteredBody::new(body, self))
    }
}

/// A number as a header value; the small ones every response carries (attempt counts,
/// milliseconds of a fast app) without an allocation.
fn number_value(n: u64) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let l = &self.listener;
        l.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        l.counters.completed.fetch_add(1, Ordering::AcqRel);
        if let Some(c) = &self.conn {
            c.end();
        }
        if let Some(mut span) = self.span.take() {
            if let Some(g) = self.grpc {
                span.grpc(g);
            }
            span.end(self.completed);
        }
        let duration = self.ctx.start.elapsed();
        if let Some(m) = &l.route.metrics {
            m.in_flight.dec();
            m.request(self.method_label, self.status);
            if let Some(g) = self.grpc {
                m.grpc_status(g);
            }
            m.duration.observe(duration.as_secs_f64());
        }
        if let Some(log) = &l.route.hooks.access_log {
            log(&AccessRecord {
                listener: l.route.name.clone(),
                protocol: l.protocol_label(),
                method: std::mem::take(&mut self.method),
                path: std::mem::take(&mut self.path),
                status: self.status,
                duration,
                upstream_time: self.ctx.upstream_time(),
                attempts: self.ctx.attempts(),
                bytes_in: self.ctx.bytes_in(),
                bytes_out: self.bytes_out,
                upstream: l.route.cfg.upstream.clone(),
                request_id: self.ctx.request_id(),
                trace_id: self.ctx.trace_id(),
                // A request tandem cut with its connection (the client stopped reading)
                // carries the connection's cause.
                cause: self
                    .cause
                    .or_else(|| self.conn.as_ref().and_then(|c| c.cut_cause()))
                    .map(Cause::as_str),
                completed: self.completed,
            });
        }
    }
}

/// A response body that finishes its request's guard when it ends or is dropped, and tells
/// the connection's write clock whether the client's side takes what it hands over.
pub(crate) struct MeteredBody<B> {
    inner: B,
    guard: Option<RequestGuard>,
    conn: Option<Arc<ConnActivity>>,
    /// A frame was handed over and the body was not polled again since.
    unread: bool,
}

impl<B: Body> MeteredBody<B> {
    fn new(inner: B, mut guard: RequestGuard) -> Self {
        // hyper may never poll a body that is already at its end (empty, HEAD, 304).
        if inner.is_end_stream() {
            guard.completed = true;
        }
        Self {
            inner,
            conn: guard.conn.clone(),
            guard: Some(guard),
            unread: false,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(c) = &self.conn {
            c.body_polled(self.unread);
        }
        self.unread = false;
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                if let (Some(t), Some(g)) = (f.trailers_ref(), self.guard.as_mut()) {
                    if let Some(code) = crate::grpc::status(t) {
                        g.grpc = Some(code);
                    }
                }
                // hyper stops polling once a body with a known length is complete: finish
                // the request now, not when hyper gets round to dropping the body.
                let ended = self.inner.is_end_stream();
                if let Some(g) = self.guard.as_mut() {
                    g.bytes_out += n;
                    g.completed |= ended;
                }
                if ended {
                    self.guard.take();
                } else if let Some(c) = &self.conn {
                    // The next poll comes once the client's side took this frame.
                    c.body_handed();
                    self.unread = true;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut g) = self.guard.take() {
                    g.completed = true;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.guard.take();
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

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let (true, Some(c)) = (self.unread, &self.conn) {
            c.body_dropped_unread();
        }
    }
}
