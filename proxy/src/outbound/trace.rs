//! The spans of an outbound call: a CLIENT span for the call, under the trace the app
//! forwarded (`traceparent` or B3 on its request), and a CLIENT span per attempt under it,
//! whose context goes to the endpoint in `traceparent`.
//!
//! Invariant: tracing never fails a call; with no tracer nothing is parsed or allocated.

use std::net::SocketAddr;

use http::Request;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::cause::Cause;
use crate::obs::trace::{extract, inject, method_name, SharedTracer};

/// The call's span and its context (the parent of the attempts).
pub(crate) struct CallSpan {
    cx: Context,
    tracer: SharedTracer,
}

/// One attempt's span.
pub(crate) struct AttemptSpan {
    span: BoxedSpan,
}

/// How a call or an attempt ended, for its span.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended {
    /// A response head with this status, and the gRPC status when the head carried one.
    Status(u16, Option<u32>),
    /// tandem answered (or the attempt failed) with this cause.
    Failed(Cause),
}

impl CallSpan {
    /// None when tracing is off.
    pub fn start<B>(
        tracer: Option<&SharedTracer>,
        service: &str,
        req: &Request<B>,
    ) -> Option<Self> {
        let tracer = tracer?.clone();
        let parent = match extract(req.headers()) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let mut span = tracer
            .span_builder(format!("{} {service}", method_name(req.method())))
            .with_kind(SpanKind::Client)
            .start_with_context(tracer.as_ref(), &parent);
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("http.request.method", method_name(req.method())),
                KeyValue::new("url.path", req.uri().path().to_owned()),
                KeyValue::new("tandem.outbound.service", service.to_owned()),
                KeyValue::new("peer.service", service.to_owned()),
            ]);
        }
        Some(Self {
            cx: parent.with_span(span),
            tracer,
        })
    }

    /// An attempt's span under the call's, its `traceparent` written into `req`.
    pub fn attempt<B>(&self, req: &mut Request<B>, endpoint: SocketAddr, n: u32) -> AttemptSpan {
        let mut span = self
            .tracer
            .span_builder(method_name(req.method()))
            .with_kind(SpanKind::Client)
            .start_with_context(self.tracer.as_ref(), &self.cx);
        if span.is_recording() {
            let mut attrs = vec![
                KeyValue::new("http.request.method", method_name(req.method())),
                KeyValue::new("server.address", endpoint.ip().to_string()),
                KeyValue::new("server.port", i64::from(endpoint.port())),
                KeyValue::new("url.full", req.uri().to_string()),
            ];
            if n > 1 {
                attrs.push(KeyValue::new("http.request.resend_count", i64::from(n - 1)));
            }
            span.set_attributes(attrs);
        }
        inject(span.span_context(), req.headers_mut());
        AttemptSpan { span }
    }

    /// Ends the call's span.
    pub fn end(self, ended: Ended) {
        let span = self.cx.span();
        if span.is_recording() {
            for kv in attributes(ended) {
                span.set_attribute(kv);
            }
            if let Some(status) = status(ended) {
                span.set_status(status);
            }
        }
        span.end();
    }
}

impl AttemptSpan {
    pub fn end(mut self, ended: Ended) {
        if self.span.is_recording() {
            self.span.set_attributes(attributes(ended));
            if let Some(status) = status(ended) {
                self.span.set_status(status);
            }
        }
        self.span.end();
    }
}

fn attributes(ended: Ended) -> Vec<KeyValue> {
    match ended {
        Ended::Status(s, grpc) => {
            let mut v = vec![KeyValue::new("http.response.status_code", i64::from(s))];
            if let Some(g) = grpc {
                v.push(KeyValue::new("rpc.grpc.status_code", i64::from(g)));
            }
            if s >= 500 {
                v.push(KeyValue::new("error.type", s.to_string()));
            } else if let Some(g) = grpc.filter(|g| *g != 0) {
                v.push(KeyValue::new("error.type", crate::grpc::code_name(g)));
            }
            v
        }
        Ended::Failed(c) => vec![KeyValue::new("error.type", c.as_str())],
    }
}

fn status(ended: Ended) -> Option<Status> {
    match ended {
        Ended::Status(s, _) if s >= 500 => Some(Status::error("")),
        // gRPC client spans: every non-OK status is an error (semconv).
        Ended::Status(_, Some(g)) if g != 0 => Some(Status::error(crate::grpc::code_name(g))),
        Ended::Status(..) => None,
        Ended::Failed(c) => Some(Status::error(c.as_str())),
    }
}
