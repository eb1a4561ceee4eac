//! The SERVER span's life: it ends when the response body ends (a slow stream is inside it),
//! and a body cut mid-way ends it with an error, as Envoy's and OTel's HTTP spans do.
//!
//! The tracer here records finished spans in memory; its spans need no exporter, so the test
//! sees exactly what the proxy called on the span API.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    Span, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue, Value};
use tandem_proxy::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::*;

/// A span as it was ended.
#[derive(Debug, Clone)]
struct Finished {
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    status: Status,
    end: SystemTime,
}

impl Finished {
    fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .rev()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }
}

/// A tracer that keeps every ended span.
#[derive(Clone, Default)]
struct Recorder {
    ended: Arc<Mutex<Vec<Finished>>>,
    next_id: Arc<AtomicU64>,
}

impl Recorder {
    fn server_spans(&self) -> Vec<Finished> {
        self.ended
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.kind == SpanKind::Server)
            .cloned()
            .collect()
    }
}

struct RecordingSpan {
    cx: SpanContext,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    status: Status,
    recorder: Option<Recorder>,
}

impl Span for RecordingSpan {
    fn add_event_with_timestamp<T>(&mut self, _: T, _: SystemTime, _: Vec<KeyValue>)
    where
        T: Into<Cow<'static, str>>,
    {
    }

    fn span_context(&self) -> &SpanContext {
        &self.cx
    }

    fn is_recording(&self) -> bool {
        self.recorder.is_some()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        self.attributes.push(attribute);
    }

    fn set_status(&mut self, status: Status) {
        self.status = status;
    }

    fn update_name<T>(&mut self, _: T)
    where
        T: Into<Cow<'static, str>>,
    {
    }

    fn add_link(&mut self, _: SpanContext, _: Vec<KeyValue>) {}

    fn end_with_timestamp(&mut self, end: SystemTime) {
        if let Some(r) = self.recorder.take() {
            r.ended.lock().expect("lock").push(Finished {
                kind: self.kind.clone(),
                attributes: std::mem::take(&mut self.attributes),
                status: self.status.clone(),
                end,
            });
        }
    }
}

impl Tracer for Recorder {
    type Span = RecordingSpan;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> RecordingSpan {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let trace_id = if parent_cx.has_active_span() {
            parent_cx.span().span_context().trace_id()
        } else {
            TraceId::from(u128::from(id))
        };
        RecordingSpan {
            cx: SpanContext::new(
                trace_id,
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            kind: builder.span_kind.unwrap_or(SpanKind::Internal),
            attributes: builder.attributes.unwrap_or_default(),
            status: Status::Unset,
            recorder: Some(self.clone()),
        }
    }
}

/// A proxy that traces every request into `recorder`.
async fn traced_proxy(app: std::net::SocketAddr, recorder: &Recorder) -> Proxy {
    let tracer = Arc::new(BoxedTracer::new(Box::new(recorder.clone())));
    Proxy::start_with_hooks(app, Protocol::Http, true, |_| {}, |h| h.with_tracer(tracer)).await
}

/// An app on a raw socket: reads one request head, writes `head` and `first`, then waits for
/// `rest` and writes what it is given (None: closes the connection there).
async fn raw_app(
    head: &'static str,
    first: &'static str,
) -> (std::net::SocketAddr, oneshot::Sender<Option<&'static str>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<Option<&'static str>>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        if s.write_all(head.as_bytes()).await.is_err()
            || s.write_all(first.as_bytes()).await.is_err()
        {
            return;
        }
        if let Ok(Some(rest)) = rx.await {
            let _ = s.write_all(rest.as_bytes()).await;
            // Keep the connection open until the proxy is done with it.
            let _ = s.read(&mut buf).await;
        }
    });
    (addr, tx)
}

/// Sends a GET on a fresh connection and reads until `until` appears in what came back.
async fn get_until(proxy: &Proxy, until: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /t HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before {until:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    (s, String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_span_ends_with_a_slow_body() {
    bounded(async {
        let recorder = Recorder::default();
        let (app, rest) = raw_app(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5\r\nfirst\r\n",
        )
        .await;
        let proxy = traced_proxy(app, &recorder).await;
        // The head and the first chunk reached the client; the body is still open.
        let (mut s, _) = get_until(&proxy, "first").await;
        // The span must not have ended with the head.
        assert!(recorder.server_spans().is_empty(), "ended before the body");
        let last_sent = SystemTime::now();
        rest.send(Some("4\r\nlast\r\n0\r\n\r\n"))
            .expect("app waits");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("0\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the body's end");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&got).contains("last"));
        eventually("the server span ended", || {
            !recorder.server_spans().is_empty()
        })
        .await;
        let spans = recorder.server_spans();
        assert_eq!(spans.len(), 1, "{spans:?}");
        let span = &spans[0];
        assert!(
            span.end >= last_sent,
            "the span ended before the body's last chunk"
        );
        assert_eq!(span.status, Status::Unset, "{span:?}");
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(&Value::I64(200))
        );
        assert_eq!(span.attr("error.type"), None, "{span:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_span_of_a_body_cut_midway_is_an_error() {
    bounded(async {
        let recorder = Recorder::default();
        let (app, rest) = raw_app(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
            "only ten b",
        )
        .await;
        let proxy = traced_proxy(app, &recorder).await;
        let (mut s, head) = get_until(&proxy, "only ten b").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // The app dies mid-body.
        rest.send(None).expect("app waits");
        // The client sees the connection cut short (tandem cannot finish a sized body).
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("closed in time")
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        eventually("the server span ended", || {
            !recorder.server_spans().is_empty()
        })
        .await;
        let spans = recorder.server_spans();
        assert_eq!(spans.len(), 1, "{spans:?}");
        let span = &spans[0];
        assert!(matches!(span.status, Status::Error { .. }), "{span:?}");
        assert_eq!(
            span.attr("error.type"),
            Some(&Value::from("response_incomplete")),
            "{span:?}"
        );
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(&Value::I64(200))
        );
    })
    .await;
}
