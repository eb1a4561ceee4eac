//! One client connection of an HTTP listener: served by hyper until it closes, goes idle past
//! `timeouts.idle`, takes longer than `timeouts.header_read` to send a request head, or the
//! listener drains.
//!
//! Invariant: the header-read clock runs only while a request head is awaited and has begun
//! (from the connection's start, then from the first byte after each response), never while
//! an HTTP/1 keep-alive connection merely sits idle; so keep-alive lasts `timeouts.idle`, as
//! configured, and clients that reuse connections are not cut early (the sidecar 503 seen from
//! the other side). Drain and idle use hyper's graceful shutdown; only a header-read timeout
//! and `hard_stop` drop a connection outright.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::cause::Cause;
use crate::config::Protocol;
use crate::listener::Listener;
use crate::stack::Stack;
use crate::tls::TlsInfo;

/// What one client connection is doing, for the idle and header-read clocks.
#[derive(Debug)]
pub(crate) struct ConnActivity {
    active: AtomicUsize,
    state: Mutex<Clocks>,
}

#[derive(Debug)]
struct Clocks {
    /// When the last request began or ended.
    last: Instant,
    /// When the head of the next request began arriving, while none is active.
    head_started: Option<Instant>,
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
            }),
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

    fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// Bytes arrived: if no request is active, the next head has begun.
    fn on_read(&self) {
        if self.is_idle() {
            if let Ok(mut c) = self.state.lock() {
                c.head_started.get_or_insert_with(Instant::now);
            }
        }
    }

    /// When the idle connection expires; while a request is active, one period from now.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        match self.state.lock() {
            Ok(c) if self.is_idle() => c.last + idle,
            _ => Instant::now() + idle,
        }
    }

    /// When the request head being awaited is late, if one is.
    fn header_deadline(&self, header_read: Duration) -> Option<Instant> {
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

/// The client's socket (or TLS stream), telling the connection's clocks when bytes arrive.
struct Watched<IO> {
    inner: IO,
    activity: Arc<ConnActivity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves one accepted connection to its end: plain TCP, or a TLS stream after its handshake
/// (`tls` then rides in every request's extensions; `h2`: ALPN chose HTTP/2).
pub(crate) async fn serve<IO>(
    l: Arc<Listener>,
    stream: IO,
    peer: SocketAddr,
    tls: Option<TlsInfo>,
    h2: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(ConnActivity::new());
    let svc = Stack::new(l.clone(), peer, activity.clone(), tls);
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let conn = l
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let t = &l.cfg.timeouts;
    // HTTP/2 has no request head to dribble (and pings move bytes while idle).
    let header_clock = l.cfg.protocol == Protocol::Http && !h2;
    // One timer per clock and one waiter per token for the connection's whole life, re-armed
    // only when a timer fires: the connection task wakes several times per request, and
    // registering fresh timers and token waiters on each wake was measurable per request.
    // A timer that fires early (activity since it was armed) is set to the new deadline, so
    // both clocks stay exact.
    let idle = tokio::time::sleep_until(activity.idle_deadline(t.idle));
    let header = tokio::time::sleep_until(
        activity
            .header_deadline(t.header_read)
            .unwrap_or_else(|| Instant::now() + t.header_read),
    );
    let shutdown = l.shutdown.cancelled();
    let hard_stop = l.hard_stop.cancelled();
    tokio::pin!(idle, header, shutdown, hard_stop);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(listener = %l.name, %peer, error = %e, "connection ended");
                }
                return;
            }
            () = shutdown.as_mut(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = hard_stop.as_mut() => {
                tracing::debug!(listener = %l.name, %peer, "connection cut at drain deadline");
                return;
            }
            () = idle.as_mut(), if !closing => {
                let at = activity.idle_deadline(t.idle);
                if activity.is_idle() && at <= Instant::now() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    idle.as_mut().reset(at);
                }
            }
            () = header.as_mut(), if header_clock => {
                let now = Instant::now();
                match activity.header_deadline(t.header_read) {
                    Some(at) if at <= now => {
                        tracing::debug!(listener = %l.name, %peer, "request head too slow; closing");
                        if let Some(m) = &l.metrics {
                            m.error(Cause::HeaderReadTimeout);
                        }
                        return;
                    }
                    Some(at) => header.as_mut().reset(at),
                    // No head awaited now: look again one period later; a head that begins
                    // meanwhile is late no earlier than that.
                    None => header.as_mut().reset(now + t.header_read),
                }
            }
        }
    }
}
