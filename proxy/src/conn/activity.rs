//! The clocks of one client connection: when it was last active, when a request head began
//! arriving, whether a write to the client waits, what its first bytes said.
//!
//! Invariant: the header-read clock runs only while a request head is awaited and has begun,
//! never while a keep-alive connection merely idles; the write clock only while tandem waits
//! on the client, never on the app (see `conn::serve`).

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::cause::Cause;

/// What one client connection is doing, for the idle, header-read and write clocks.
#[derive(Debug)]
pub(crate) struct ConnActivity {
    active: AtomicUsize,
    state: Mutex<Clocks>,
    /// The origin of the nanosecond stamps below (the connection's start).
    pub(crate) origin: Instant,
    /// When a write to the client began to wait, as a stamp + 1; 0: no write waits.
    write_waiting: AtomicU64,
    /// Response bodies that handed hyper a frame and were not polled again since: the
    /// client's side has not taken it (socket full, HTTP/2 window closed).
    unread: AtomicUsize,
    /// When a response body was last polled, as a stamp.
    body_polled: AtomicU64,
    /// What the connection's first bytes said: [`FIRST_PENDING`], [`FIRST_OK`] or
    /// [`FIRST_WRONG`].
    first_bytes: AtomicU8,
}

/// Not enough bytes yet to know (HTTP/2: the preface and first frame are incomplete).
pub(crate) const FIRST_PENDING: u8 = 0;
/// The listener's protocol.
pub(crate) const FIRST_OK: u8 = 1;
/// Another protocol than the listener's.
pub(crate) const FIRST_WRONG: u8 = 2;

#[derive(Debug)]
struct Clocks {
    /// When the last request began or ended.
    last: Instant,
    /// When the head of the next request began arriving, while none is active.
    head_started: Option<Instant>,
    /// Why tandem cut the connection, for the records of the requests it ends.
    cut: Option<Cause>,
}

// === impl ConnActivity ===

impl ConnActivity {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            active: AtomicUsize::new(0),
            state: Mutex::new(Clocks {
                last: now,
                // The first request's head is awaited from the start.
                head_started: Some(now),
                cut: None,
            }),
            origin: now,
            write_waiting: AtomicU64::new(0),
            unread: AtomicUsize::new(0),
            body_polled: AtomicU64::new(0),
            first_bytes: AtomicU8::new(FIRST_PENDING),
        }
    }

    /// A request's head was read and it entered the stack.
    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut c) = self.state.lock() {
            c.last = Instant::now();
            c.head_started = None;
        }
    }

    /// A request finished (its response body ended or was dropped).
    pub fn end(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut c) = self.state.lock() {
            c.last = Instant::now();
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// Bytes arrived: if no request is active, the next head has begun.
    pub(crate) fn on_read(&self) {
        if self.is_idle() {
            if let Ok(mut c) = self.state.lock() {
                c.head_started.get_or_insert_with(Instant::now);
            }
        }
    }

    /// When the idle connection expires; while a request is active, one period from now.
    pub(crate) fn idle_deadline(&self, idle: Duration) -> Instant {
        match self.state.lock() {
            Ok(c) if self.is_idle() => c.last + idle,
            _ => Instant::now() + idle,
        }
    }

    pub(crate) fn stamp(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    pub(crate) fn instant(&self, stamp: u64) -> Instant {
        self.origin + Duration::from_nanos(stamp)
    }

    /// A write to the client could not proceed: its clock starts, unless it runs already.
    pub(crate) fn write_waits(&self) {
        if self.write_waiting.load(Ordering::Relaxed) == 0 {
            let _ = self.write_waiting.compare_exchange(
                0,
                self.stamp() + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// A write to the client progressed.
    pub(crate) fn write_progressed(&self) {
        if self.write_waiting.load(Ordering::Relaxed) != 0 {
            self.write_waiting.store(0, Ordering::Release);
        }
    }

    /// A response body is being polled (so whatever it handed before was taken).
    pub fn body_polled(&self, was_unread: bool) {
        if was_unread {
            self.unread.fetch_sub(1, Ordering::AcqRel);
        }
        self.body_polled.store(self.stamp(), Ordering::Release);
    }

    /// A response body handed hyper a frame and expects to be polled again.
    pub fn body_handed(&self) {
        self.unread.fetch_add(1, Ordering::AcqRel);
    }

    /// A response body that had handed a frame was dropped before it was polled again.
    pub fn body_dropped_unread(&self) {
        self.unread.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the client is late taking what tandem writes, if tandem waits on it at all.
    pub(crate) fn write_deadline(&self, write: Duration) -> Option<Instant> {
        let socket = match self.write_waiting.load(Ordering::Acquire) {
            0 => None,
            s => Some(self.instant(s - 1) + write),
        };
        let body = (self.unread.load(Ordering::Acquire) > 0)
            .then(|| self.instant(self.body_polled.load(Ordering::Acquire)) + write);
        match (socket, body) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Notes why tandem cuts the connection (the first reason wins).
    pub(crate) fn cut(&self, cause: Cause) {
        if let Ok(mut c) = self.state.lock() {
            c.cut.get_or_insert(cause);
        }
    }

    /// Why tandem cut the connection, if it did: the cause of the requests it ended.
    pub fn cut_cause(&self) -> Option<Cause> {
        self.state.lock().ok().and_then(|c| c.cut)
    }

    /// Records the verdict on the connection's first bytes.
    pub(crate) fn set_first_bytes(&self, verdict: u8) {
        self.first_bytes.store(verdict, Ordering::Release);
    }

    pub(crate) fn first_bytes(&self) -> u8 {
        self.first_bytes.load(Ordering::Acquire)
    }

    /// When the request head being awaited is late, if one is.
    pub(crate) fn header_deadline(&self, header_read: Duration) -> Option<Instant> {
        if !self.is_idle() {
            return None;
        }
        self.state
            .lock()
            .ok()
            .and_then(|c| c.head_started)
            .map(|t| t + header_read)
    }
}

/// Resolves once tandem has waited `write` on the client without progress (see
/// [`ConnActivity`]); one timer, re-armed only when it fires.
pub(crate) async fn write_stalled(activity: &ConnActivity, write: Duration) {
    let timer = tokio::time::sleep(write);
    tokio::pin!(timer);
    loop {
        timer.as_mut().await;
        let now = Instant::now();
        match activity.write_deadline(write) {
            Some(at) if at <= now => return,
            Some(at) => timer.as_mut().reset(at),
            // Nothing waits now: a wait that begins meanwhile is late no earlier than that.
            None => timer.as_mut().reset(now + write),
        }
    }
}
