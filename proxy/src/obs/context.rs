//! The per-request context the stack's steps share: created by the outermost step, handed to
//! the others by reference (see `stack`), read back when the request is logged.
//!
//! Invariant: steps talk to each other only through this context (and the request itself),
//! never through each other's state; every field has a meaningful empty value, so a step that
//! runs without it (a unit test) still works.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// What the layers learn about one request.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// When the request arrived; hold and request deadlines count from here.
    pub start: Instant,
    attempts: AtomicU32,
    /// Microseconds the last attempt waited for response headers; `u64::MAX`: no attempt.
    upstream_us: AtomicU64,
    bytes_in: AtomicU64,
    /// Set once, by hygiene; kept as the header value so echoing it costs no copy.
    request_id: OnceLock<HeaderValue>,
    /// The `traceparent` sent to the app (the trace id is read from it only for a log record).
    traceparent: OnceLock<HeaderValue>,
    /// The SERVER span's context (tracing on), the parent of each attempt's CLIENT span.
    server_trace: OnceLock<opentelemetry::Context>,
    /// The shed layer's slot, released when the request is finished.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

// === impl Ctx ===

impl Ctx {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            attempts: AtomicU32::new(0),
            upstream_us: AtomicU64::new(u64::MAX),
            bytes_in: AtomicU64::new(0),
            request_id: OnceLock::new(),
            traceparent: OnceLock::new(),
            server_trace: OnceLock::new(),
            permit: Mutex::new(None),
        }
    }

    /// Counts an attempt sent to the app; returns its number.
    pub fn add_attempt(&self) -> u32 {
        self.attempts.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Acquire)
    }

    pub fn set_upstream_time(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1);
        self.upstream_us.store(us, Ordering::Release);
    }

    pub fn upstream_time(&self) -> Option<Duration> {
        match self.upstream_us.load(Ordering::Acquire) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Records the request id in use and the `traceparent` (a header value: no copy, no
    /// parse on the request path); the first call wins.
    pub fn set_ids(&self, request_id: HeaderValue, traceparent: Option<HeaderValue>) {
        let _ = self.request_id.set(request_id);
        if let Some(t) = traceparent {
            let _ = self.traceparent.set(t);
        }
    }

    /// Records the SERVER span's context; the first call wins.
    pub fn set_server_trace(&self, cx: opentelemetry::Context) {
        let _ = self.server_trace.set(cx);
    }

    /// The SERVER span's context, when the request is traced.
    pub fn server_trace(&self) -> Option<&opentelemetry::Context> {
        self.server_trace.get()
    }

    /// The request id as sent to the app, if one was set and is not empty.
    pub fn request_id_value(&self) -> Option<&HeaderValue> {
        self.request_id.get().filter(|v| !v.is_empty())
    }

    pub fn request_id(&self) -> String {
        self.request_id
            .get()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// The W3C trace id of the request, when it has a valid `traceparent`.
    pub fn trace_id(&self) -> Option<String> {
        crate::obs::access_log::trace_id(self.traceparent.get()?.to_str().ok())
    }

    pub fn hold_permit(&self, permit: OwnedSemaphorePermit) {
        if let Ok(mut p) = self.permit.lock() {
            *p = Some(permit);
        }
    }
}
