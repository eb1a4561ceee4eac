//! Accounting of one request from arrival until its response body ends: in-flight counts,
//! the access-log record, RED metrics, the drain counters.
//!
//! Invariant: exactly one [`RequestGuard`] per request, and its `Drop` is the single place a
//! request is counted as finished, whether the body ended, the client went away or drain cut
//! it; so in-flight gauges cannot leak and every request gets exactly one log record.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::access_log::AccessRecord;
use crate::cause::Cause;
use crate::listener::Listener;
use crate::metrics::method_label;

/// Activity of one client connection, for the idle keep-alive timeout.
#[derive(Debug)]
pub(crate) struct ConnActivity {
    active: AtomicUsize,
    last: Mutex<Instant>,
}

impl ConnActivity {
    pub fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    /// When the connection becomes idle-expired if nothing happens meanwhile.
    pub fn idle_deadline(&self, idle: std::time::Duration) -> Instant {
        let last = self
            .last
            .lock()
            .map(|l| *l)
            .unwrap_or_else(|_| Instant::now());
        last + idle
    }

    pub fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    fn begin(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.touch();
    }

    fn end(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.touch();
    }

    fn touch(&self) {
        if let Ok(mut l) = self.last.lock() {
            *l = Instant::now();
        }
    }
}

/// Counts request body bytes as they are read.
pub(crate) struct CountingBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
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
                self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
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
    _permit: Option<OwnedSemaphorePermit>,
    start: Instant,
    method: &'static str,
    pub bytes_in: Arc<AtomicU64>,
    pub record: AccessRecord,
}

impl RequestGuard {
    pub fn new(
        listener: Arc<Listener>,
        conn: Option<Arc<ConnActivity>>,
        method: &http::Method,
        path: &str,
        start: Instant,
    ) -> Self {
        listener.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        if let Some(m) = &listener.metrics {
            m.in_flight.inc();
        }
        if let Some(c) = &conn {
            c.begin();
        }
        let record = AccessRecord {
            listener: listener.name.clone(),
            protocol: listener.protocol_label(),
            method: method.to_string(),
            path: path.to_string(),
            status: 0,
            duration: std::time::Duration::ZERO,
            upstream_time: None,
            attempts: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream: listener.cfg.upstream.clone(),
            request_id: String::new(),
            trace_id: None,
            cause: None,
            completed: false,
        };
        Self {
            conn,
            _permit: None,
            start,
            method: method_label(method),
            bytes_in: Arc::new(AtomicU64::new(0)),
            record,
            listener,
        }
    }

    pub fn listener(&self) -> &Arc<Listener> {
        &self.listener
    }

    pub fn hold_permit(&mut self, permit: OwnedSemaphorePermit) {
        self._permit = Some(permit);
    }

    /// Notes that tandem answers with `cause`, and counts it.
    pub fn set_cause(&mut self, cause: Cause) {
        self.record.cause = Some(cause.as_str());
        if let Some(m) = &self.listener.metrics {
            m.error(cause);
            if cause == Cause::Shed {
                m.shed.inc();
            }
        }
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
        self.record.duration = self.start.elapsed();
        self.record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        if let Some(m) = &l.metrics {
            m.in_flight.dec();
            m.request(self.method, self.record.status);
            m.duration.observe(self.record.duration.as_secs_f64());
        }
        if let Some(log) = &l.hooks.access_log {
            log(&self.record);
        }
    }
}

/// A response body that finishes its request's guard when it ends or is dropped.
pub(crate) struct MeteredBody<B> {
    inner: B,
    guard: Option<RequestGuard>,
}

impl<B> MeteredBody<B> {
    pub fn new(inner: B, mut guard: RequestGuard) -> Self
    where
        B: Body,
    {
        // hyper may never poll a body that is already at its end (empty, HEAD, 304).
        if inner.is_end_stream() {
            guard.record.completed = true;
        }
        Self {
            inner,
            guard: Some(guard),
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
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                // hyper stops polling once a body with a known length is complete.
                let ended = self.inner.is_end_stream();
                if let Some(g) = self.guard.as_mut() {
                    g.record.bytes_out += n;
                    g.record.completed |= ended;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut g) = self.guard.take() {
                    g.record.completed = true;
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
