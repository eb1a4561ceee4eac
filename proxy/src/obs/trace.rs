//! Tracing: the incoming trace context read (W3C `traceparent`/`tracestate`, B3 single and
//! multi header), a SERVER span per request, a CLIENT span per attempt to the app, and the
//! attempt's context passed to the app in `traceparent`.
//!
//! Invariant: tracing never fails a request. A malformed header is ignored (a new trace
//! starts). With no tracer configured ([`crate::Hooks::with_tracer`]) the server-span layer is
//! left out of the stack and the attempt span is one `Option` check: nothing is parsed,
//! allocated or written.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Request;
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
use opentelemetry::{Context, KeyValue};

use crate::cause::Cause;
use crate::obs::context::Ctx;
use http::uri::Authority;
use tandem_trace_context::{hex, hex_into, Traceparent};

/// The W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The tracer the proxy's spans are made with (set up by the binary, exported elsewhere).
pub type SharedTracer = Arc<BoxedTracer>;

// === propagation ===

/// A W3C `traceparent` (version 00, or a later version read as 00 would be), with its
/// `tracestate`. None when malformed or all-zero ids.
pub fn parse_traceparent(value: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let tp = Traceparent::parse(value)?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    valid(tp.trace_id, tp.span_id, tp.sampled(), state)
}

/// A B3 single header (`{trace}-{span}[-{sampled}[-{parent}]]`; a lone `0`/`d` carries no ids).
pub fn parse_b3_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace = b3_trace_id(parts.next()?)?;
    let span = hex::<8>(parts.next()?)?;
    let sampled = match parts.next() {
        None => true,
        Some("1" | "d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    valid(trace, span, sampled, TraceState::default())
}

/// B3 multi headers (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags`).
pub fn parse_b3_multi(headers: &HeaderMap) -> Option<SpanContext> {
    let get = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let trace = b3_trace_id(get(&B3_TRACE_ID)?)?;
    let span = hex::<8>(get(&B3_SPAN_ID)?)?;
    let debug = get(&B3_FLAGS) == Some("1");
    let sampled = debug || !matches!(get(&B3_SAMPLED), Some("0" | "false"));
    valid(trace, span, sampled, TraceState::default())
}

/// B3 trace ids are 64 or 128 bits; a 64-bit one is left-padded with zeros.
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    let s = s.to_ascii_lowercase();
    match s.len() {
        32 => hex::<16>(&s),
        16 => {
            let low = hex::<8>(&s)?;
            let mut out = [0u8; 16];
            out[8..].copy_from_slice(&low);
            Some(out)
        }
        _ => None,
    }
}

fn valid(trace: [u8; 16], span: [u8; 8], sampled: bool, state: TraceState) -> Option<SpanContext> {
    let trace = TraceId::from_bytes(trace);
    let span = SpanId::from_bytes(span);
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    let flags = TraceFlags::default().with_sampled(sampled);
    Some(SpanContext::new(trace, span, flags, true, state))
}

/// The caller's trace context: `traceparent` first, then B3 single, then B3 multi. None (a
/// new trace) when absent or malformed.
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    let text = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(tp) = text(&TRACEPARENT) {
        if let Some(sc) = parse_traceparent(tp, text(&TRACESTATE)) {
            return Some(sc);
        }
    }
    if let Some(sc) = text(&B3).and_then(parse_b3_single) {
        return Some(sc);
    }
    parse_b3_multi(headers)
}

/// Write `sc` as `traceparent` (and `tracestate` when it has one) into `headers`.
pub fn inject(sc: &SpanContext, headers: &mut HeaderMap) {
    if !sc.is_valid() {
        return;
    }
    // "00-{32 hex}-{16 hex}-{2 hex}", written in place: this runs once or twice per traced
    // request, sampled or not.
    let mut v = [0u8; 55];
    v[..3].copy_from_slice(b"00-");
    hex_into(&sc.trace_id().to_bytes(), &mut v[3..35]);
    v[35] = b'-';
    hex_into(&sc.span_id().to_bytes(), &mut v[36..52]);
    v[52] = b'-';
    hex_into(&[sc.trace_flags().to_u8()], &mut v[53..55]);
    if let Ok(v) = HeaderValue::from_bytes(&v) {
        headers.insert(TRACEPARENT, v);
    }
    if *sc.trace_state() == TraceState::NONE {
        headers.remove(TRACESTATE);
        return;
    }
    let state = sc.trace_state().header();
    match HeaderValue::from_str(&state) {
        Ok(v) if !state.is_empty() => {
            headers.insert(TRACESTATE, v);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
}

/// Lowercase hex of `bytes` into `out` (twice as long).
/// The span name for a request: its method, static for the standard ones (no allocation).
pub(crate) fn method_name(m: &http::Method) -> std::borrow::Cow<'static, str> {
    match crate::obs::metrics::method_label(m) {
        "OTHER" => std::borrow::Cow::Owned(m.as_str().to_owned()),
        known => std::borrow::Cow::Borrowed(known),
    }
}

// === the server span ===

/// `error.type` of a server span whose response did not reach its end: the app's body broke
/// mid-way, the client went away, or the request was dropped before any response head.
pub const RESPONSE_INCOMPLETE: &str = "response_incomplete";

/// A request's SERVER span, under the caller's trace context (or a new trace). It ends when
/// the response body ends, as Envoy's and OTel's HTTP server spans do: the request's
/// `RequestGuard` holds it, so no body wrapper exists for it, traced or not.
pub(crate) struct ServerSpan {
    cx: Context,
    /// Sampled: attributes and status are worth setting (an unsampled span drops them).
    recording: bool,
    /// `error.type` was set from the response head.
    failed: bool,
}

// === impl ServerSpan ===

impl ServerSpan {
    /// Start the span for `req` from `peer` and write tandem's `traceparent` into it (the
    /// access log reads it; each attempt replaces it with its own span). None when tracing
    /// is off: nothing is allocated.
    pub fn start<B>(
        tracer: Option<&SharedTracer>,
        ctx: &Ctx,
        req: &mut Request<B>,
        peer: &Peer,
    ) -> Option<Self> {
        let tracer = tracer?;
        let cx = server_span(tracer, req, peer);
        let span = cx.span();
        let recording = span.is_recording();
        inject(&span.span_context().clone(), req.headers_mut());
        ctx.set_server_trace(cx.clone());
        Some(Self {
            cx,
            recording,
            failed: false,
        })
    }

    /// Record the response head: its status, and the cause when tandem answered for the app.
    pub fn respond(&mut self, status: u16, cause: Option<Cause>) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        match cause {
            None if status >= 500 => {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
                span.set_status(Status::error(""));
                self.failed = true;
            }
            None => {}
            Some(cause) => {
                span.set_attribute(KeyValue::new("error.type", cause.as_str()));
                if status >= 500 {
                    span.set_status(Status::error(cause.as_str()));
                }
                self.failed = true;
            }
        }
    }

    /// Record the `grpc-status` of a gRPC answer: `rpc.grpc.status_code`, and an error status
    /// for the codes that are the server's failures.
    pub fn grpc(&mut self, code: u32) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        if crate::grpc::is_server_error(code) {
            let name = crate::grpc::code_name(code);
            if !self.failed {
                span.set_attribute(KeyValue::new("error.type", name));
            }
            span.set_status(Status::error(name));
            self.failed = true;
        }
    }

    /// End the span: the response body ended (`completed`), or it was cut, which is an error
    /// ([`RESPONSE_INCOMPLETE`] unless the head already named one).
    pub fn end(self, completed: bool) {
        let span = self.cx.span();
        if !completed && self.recording {
            if !self.failed {
                span.set_attribute(KeyValue::new("error.type", RESPONSE_INCOMPLETE));
            }
            span.set_status(Status::error(RESPONSE_INCOMPLETE));
        }
        span.end();
    }
}

/// Start the SERVER span for `req` under the caller's context (or a new trace).
///
/// The sampler decides first, from the parent context, the trace id and the span's name and
/// kind; the request's attributes are built only for a span that records. (The samplers
/// tandem offers, `OTEL_TRACES_SAMPLER`'s built-ins, do not read attributes; building eight
/// owned strings for a span that is dropped was most of an unsampled request's tracing cost.)
fn server_span<B>(tracer: &SharedTracer, req: &Request<B>, peer: &Peer) -> Context {
    let parent = match extract(req.headers()) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    };
    // No route is known to a proxy: the span is named by the method alone (semconv).
    let mut span = tracer
        .span_builder(method_name(req.method()))
        .with_kind(SpanKind::Server)
        .start_with_context(tracer.as_ref(), &parent);
    if span.is_recording() {
        span.set_attributes(server_attributes(req, peer));
    }
    parent.with_span(span)
}

/// The HTTP server semantic-convention attributes of `req` from `peer`.
fn server_attributes<B>(req: &Request<B>, peer: &Peer) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(10);
    attrs.push(KeyValue::new(
        "http.request.method",
        method_name(req.method()),
    ));
    attrs.push(KeyValue::new("url.path", req.uri().path().to_owned()));
    if let Some(q) = req.uri().query() {
        attrs.push(KeyValue::new("url.query", q.to_owned()));
    }
    attrs.push(KeyValue::new("url.scheme", "http"));
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if let Some(auth) = host.and_then(|h| h.parse::<http::uri::Authority>().ok()) {
        attrs.push(KeyValue::new("server.address", auth.host().to_owned()));
        if let Some(p) = auth.port_u16() {
            attrs.push(KeyValue::new("server.port", i64::from(p)));
        }
    }
    attrs.push(KeyValue::new("network.peer.address", peer.address.clone()));
    attrs.push(KeyValue::new("network.peer.port", peer.port));
    attrs.push(KeyValue::new(
        "network.protocol.version",
        match req.version() {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        },
    ));
    if let Some(ua) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attrs.push(KeyValue::new("user_agent.original", ua.to_owned()));
    }
    attrs
}

/// A client connection's peer as span attributes, made once per connection: the address's
/// text is shared by every span of the connection (formatting it per request was a tenth of a
/// sampled request's tracing cost).
#[derive(Clone)]
pub(crate) struct Peer {
    address: opentelemetry::StringValue,
    port: i64,
}

impl Peer {
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            address: std::sync::Arc::<str>::from(peer.ip().to_string()).into(),
            port: i64::from(peer.port()),
        }
    }
}

/// A URI as text: an origin-form one (`/path?query`, the common case) without the formatter.
fn uri_text(uri: &http::Uri) -> String {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() && uri.authority().is_none() => pq.as_str().to_owned(),
        _ => uri.to_string(),
    }
}

/// One attempt's CLIENT span, a child of the server span; its context goes to the app.
pub(crate) struct AttemptSpan {
    span: BoxedSpan,
}

// === impl AttemptSpan ===

impl AttemptSpan {
    /// Start the span for attempt number `attempt` of `req` and write its `traceparent`
    /// into the request (`upstream`: the app's address, for the span's attributes). None when
    /// tracing is off for this request.
    pub fn start<B>(
        tracer: Option<&SharedTracer>,
        upstream: &Authority,
        ctx: &Ctx,
        req: &mut Request<B>,
        attempt: u32,
    ) -> Option<Self> {
        let tracer = tracer?;
        let parent = ctx.server_trace()?.clone();
        // As for the server span: attributes only for a span that records.
        let mut span = tracer
            .span_builder(method_name(req.method()))
            .with_kind(SpanKind::Client)
            .start_with_context(tracer.as_ref(), &parent);
        if span.is_recording() {
            let mut attrs = vec![
                KeyValue::new("http.request.method", method_name(req.method())),
                KeyValue::new("server.address", upstream.host().to_owned()),
                KeyValue::new("url.full", uri_text(req.uri())),
            ];
            if let Some(p) = upstream.port_u16() {
                attrs.push(KeyValue::new("server.port", i64::from(p)));
            }
            if attempt > 1 {
                attrs.push(KeyValue::new(
                    "http.request.resend_count",
                    i64::from(attempt - 1),
                ));
            }
            span.set_attributes(attrs);
        }
        inject(span.span_context(), req.headers_mut());
        Some(Self { span })
    }

    /// End the span with the attempt's outcome.
    pub fn finish(mut self, outcome: Result<u16, Cause>) {
        let span = &mut self.span;
        if !span.is_recording() {
            return;
        }
        match outcome {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 500 {
                    span.set_attribute(KeyValue::new("error.type", status.to_string()));
                    span.set_status(Status::error(""));
                }
            }
            Err(cause) => {
                span.set_attribute(KeyValue::new("error.type", cause.as_str()));
                span.set_status(Status::error(cause.as_str()));
            }
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent() {
        let sc = parse_traceparent(TP, Some("vendor=x")).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_state().header(), "vendor=x");
        // What a malformed value is: tandem_trace_context's tests.
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad}");
        }
        // A later version may append fields.
        assert!(parse_traceparent(&format!("{}-x", TP.replacen("00", "01", 1)), None).is_some());
        let unsampled = parse_traceparent(&TP.replace("-01", "-00"), Some("=bad=")).expect("ok");
        assert!(!unsampled.is_sampled());
        assert_eq!(unsampled.trace_state().header(), "");
    }

    #[test]
    fn b3() {
        let sc =
            parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
                .expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert!(sc.is_sampled());
        let short = parse_b3_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1-0").expect("valid");
        assert_eq!(
            short.trace_id().to_string(),
            "000000000000000064fe8b2a57d3eff7"
        );
        assert!(!short.is_sampled());
        assert!(parse_b3_single("0").is_none());
        assert!(parse_b3_single("nope-e457b5a2e4d86bd1").is_none());
        let mut h = HeaderMap::new();
        h.insert(
            B3_TRACE_ID,
            HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
        );
        h.insert(B3_SPAN_ID, HeaderValue::from_static("a2fb4a1d1a96d312"));
        h.insert(B3_SAMPLED, HeaderValue::from_static("1"));
        let m = extract(&h).expect("multi");
        assert_eq!(m.span_id().to_string(), "a2fb4a1d1a96d312");
        // traceparent wins over B3; a malformed one falls back to B3.
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        assert_eq!(
            extract(&h).expect("tp").span_id().to_string(),
            "00f067aa0ba902b7"
        );
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        assert_eq!(
            extract(&h).expect("b3").span_id().to_string(),
            "a2fb4a1d1a96d312"
        );
    }

    #[test]
    fn inject_round_trips() {
        let sc = parse_traceparent(TP, Some("a=1")).expect("valid");
        let mut h = HeaderMap::new();
        inject(&sc, &mut h);
        assert_eq!(h[TRACEPARENT], TP);
        assert_eq!(h[TRACESTATE], "a=1");
    }
}
