//! The per-request context the layers share: created by the outermost layer, carried in the
//! request's extensions, read back when the request is logged.
//!
//! Invariant: layers talk to each other only through this context (and the request itself),
//! never through each other's state; every field has a meaningful empty value, so a layer
//! that runs without it (a unit test) still works.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    request_id: Mutex<String>,
    trace_id: Mutex<Option<String>>,
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
            request_id: Mutex::new(String::new()),
            trace_id: Mutex::new(None),
            permit: Mutex::new(None),
        }
    }

    /// The context of a request, or a fresh one if no outer layer set it.
    pub fn of<B>(req: &http::Request<B>) -> Arc<Ctx> {
        req.extensions()
            .get::<Arc<Ctx>>()
            .cloned()
            .unwrap_or_else(|| Arc::new(Ctx::new()))
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

    pub fn set_ids(&self, request_id: String, trace_id: Option<String>) {
        if let Ok(mut r) = self.request_id.lock() {
            *r = request_id;
        }
        if let Ok(mut t) = self.trace_id.lock() {
            *t = trace_id;
        }
    }

    pub fn request_id(&self) -> String {
        self.request_id
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn trace_id(&self) -> Option<String> {
        self.trace_id.lock().ok().and_then(|t| t.clone())
    }

    pub fn hold_permit(&self, permit: OwnedSemaphorePermit) {
        if let Ok(mut p) = self.permit.lock() {
            *p = Some(permit);
        }
    }
}
