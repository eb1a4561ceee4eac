//! One client connection of an HTTP listener, served by hyper in the listener's one protocol
//! (HTTP/1.1, or HTTP/2 for `h2c` and TLS with ALPN `h2`; never sniffed) until it closes, goes
//! idle past `timeouts.idle`, takes longer than `timeouts.header_read` to send a request head
//! (HTTP/2: its preface and first frame), stops reading for `timeouts.write`, or the listener
//! drains.
//!
//! Invariant: the header-read clock runs only while a request head is awaited and has begun
//! (from the connection's start, then from the first byte after each response), never while
//! an HTTP/1 keep-alive connection merely sits idle; so keep-alive lasts `timeouts.idle`, as
//! configured, and clients that reuse connections are not cut early (the sidecar 503 seen from
//! the other side). The write clock runs only while tandem waits on the client (a socket write
//! that does not progress, a response frame the client's side has not taken), never while it
//! waits on the app. Drain and idle use hyper's graceful shutdown; only the header-read and
//! write timeouts, a wrong protocol and `hard_stop` drop a connection outright.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::cause::Cause;
use crate::conn::activity::{write_stalled, ConnActivity, FIRST_OK, FIRST_PENDING, FIRST_WRONG};
use crate::conn::listener::Listener;
use crate::conn::stack::Stack;
use crate::edge::tls::TlsInfo;
use crate::http::bound::Bound;

/// How long a connection accepted before a drain, with nothing read yet, is given for its
/// first request to arrive: a client that connected just before the drain is answered.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What an HTTP/2 preface looks like to an HTTP/1 parser: its request line.
const PREFACE_LINE: usize = 14;
/// The preface and the 9-byte header of the frame after it.
const PREFACE_AND_FRAME_HEADER: usize = PREFACE.len() + 9;

/// Reads a connection's first bytes: whether they are the listener's protocol, and (HTTP/2)
/// when the preface and the first frame are complete.
#[derive(Debug)]
struct FirstBytes {
    h2: bool,
    seen: [u8; PREFACE_AND_FRAME_HEADER],
    /// Bytes read so far (counted past `seen` too).
    read: usize,
    /// HTTP/2: bytes up to the end of the first frame, once its header is read.
    need: Option<usize>,
}

// === impl FirstBytes ===

impl FirstBytes {
    fn new(h2: bool) -> Self {
        Self {
            h2,
            seen: [0; PREFACE_AND_FRAME_HEADER],
            read: 0,
            need: None,
        }
    }

    /// Takes the next bytes read; returns the verdict once there is one.
    fn feed(&mut self, bytes: &[u8]) -> u8 {
        let keep = bytes.len().min(self.seen.len().saturating_sub(self.read));
        self.seen[self.read..self.read + keep].copy_from_slice(&bytes[..keep]);
        self.read = self.read.saturating_add(bytes.len());
        let seen = &self.seen[..self.read.min(self.seen.len())];
        let n = seen.len().min(PREFACE.len());
        let preface_so_far = seen[..n] == PREFACE[..n];
        if !self.h2 {
            // An HTTP/1 listener: any request line but HTTP/2's.
            return match (preface_so_far, n >= PREFACE_LINE) {
                (false, _) => FIRST_OK,
                (true, true) => FIRST_WRONG,
                (true, false) => FIRST_PENDING,
            };
        }
        if !preface_so_far {
            return FIRST_WRONG;
        }
        if self.need.is_none() && seen.len() == PREFACE_AND_FRAME_HEADER {
            let h = &seen[PREFACE.len()..];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            self.need = Some(PREFACE_AND_FRAME_HEADER + len);
        }
        match self.need {
            Some(need) if self.read >= need => FIRST_OK,
            _ => FIRST_PENDING,
        }
    }
}

/// The client's socket (or TLS stream), telling the connection's clocks when bytes arrive,
/// when a write waits on the client and when it progresses.
struct Watched<IO> {
    inner: IO,
    activity: Arc<ConnActivity>,
    /// Until the first bytes gave their verdict.
    first: Option<Box<FirstBytes>>,
}

impl<IO> Watched<IO> {
    fn note<T>(&self, polled: &Poll<io::Result<T>>) {
        match polled {
            Poll::Pending => self.activity.write_waits(),
            Poll::Ready(_) => self.activity.write_progressed(),
        }
    }
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
            if let Some(first) = self.first.as_mut() {
                let verdict = first.feed(&buf.filled()[before..]);
                let h2 = first.h2;
                if verdict != FIRST_PENDING {
                    self.first = None;
                    self.activity.set_first_bytes(verdict);
                    if verdict == FIRST_WRONG && h2 {
                        // Not HTTP/2 on an HTTP/2 connection: nothing to answer it with.
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "not an HTTP/2 connection preface",
                        )));
                    }
                }
            }
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
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&polled);
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves one accepted connection to its end: plain TCP, or a TLS stream after its handshake
/// (`tls` then rides in every request's extensions; `h2`: an `h2c` listener, or ALPN chose
/// HTTP/2).
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
    let svc = Stack::new(l.clone(), peer, activity.clone(), tls, h2);
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        first: Some(Box::new(FirstBytes::new(h2))),
    });
    let stack = svc.clone();
    let bound = stack.bound();
    if h2 {
        let conn = l.h2.serve_connection(io, svc);
        tokio::pin!(conn);
        drive(&l, peer, &activity, true, None, conn, |c| {
            c.graceful_shutdown()
        })
        .await;
    } else {
        let conn = l.h1.serve_connection(io, svc).with_upgrades();
        tokio::pin!(conn);
        drive(&l, peer, &activity, false, bound, conn, |c| {
            c.graceful_shutdown()
        })
        .await;
    }
}

/// Runs hyper's connection future `conn` against the connection's clocks and the listener's
/// drain tokens (`bound`: the app connection an HTTP/1.1 client connection keeps, closed
/// after `pool_idle` unused).
async fn drive<F>(
    l: &Listener,
    peer: SocketAddr,
    activity: &ConnActivity,
    h2: bool,
    bound: Option<&Bound>,
    mut conn: Pin<&mut F>,
    graceful: fn(Pin<&mut F>),
) where
    F: Future<Output = hyper::Result<()>>,
{
    let t = &l.route.cfg.timeouts;
    // One timer per clock and one waiter per token for the connection's whole life, re-armed
    // only when a timer fires: the connection task wakes several times per request, and
    // registering fresh timers and token waiters on each wake was measurable per request.
    // A timer that fires early (activity since it was armed) is set to the new deadline, so
    // the clocks stay exact.
    let idle = tokio::time::sleep_until(activity.idle_deadline(t.idle));
    let header = tokio::time::sleep_until(
        activity
            .header_deadline(t.header_read)
            .unwrap_or_else(|| Instant::now() + t.header_read),
    );
    let stalled = write_stalled(activity, t.write);
    let app_idle = tokio::time::sleep(t.pool_idle);
    let shutdown = l.shutdown.cancelled();
    let hard_stop = l.hard_stop.cancelled();
    let grace = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(idle, header, stalled, shutdown, hard_stop, app_idle, grace);
    let mut closing = false;
    let mut first_grace = false;
    // HTTP/2 has no request head to dribble (and pings move bytes while idle): its clock
    // runs until the preface and the first frame are in.
    let mut header_clock = true;
    let cut = |cause: Cause| {
        activity.cut(cause);
        if let Some(m) = &l.route.metrics {
            m.error(cause);
        }
    };
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if activity.first_bytes() == FIRST_WRONG {
                    tracing::debug!(listener = %l.route.name, %peer, h2, "client spoke another protocol than the listener's; closed");
                    cut(Cause::ProtocolError);
                } else if let Err(e) = res {
                    tracing::debug!(listener = %l.route.name, %peer, error = %e, "connection ended");
                }
                return;
            }
            () = shutdown.as_mut(), if !closing => {
                closing = true;
                if activity.first_bytes() == FIRST_PENDING {
                    // Accepted before the drain, nothing read yet: its first request may be
                    // in flight (hyper's graceful shutdown would close the connection unread,
                    // the client getting no answer). It gets a moment to arrive, is served,
                    // and the connection then closes.
                    first_grace = true;
                    grace.as_mut().reset(Instant::now() + FIRST_REQUEST_GRACE);
                } else {
                    graceful(conn.as_mut());
                }
            }
            () = grace.as_mut(), if first_grace => {
                first_grace = false;
                graceful(conn.as_mut());
            }
            () = hard_stop.as_mut() => {
                tracing::debug!(listener = %l.route.name, %peer, "connection cut at drain deadline");
                return;
            }
            () = idle.as_mut(), if !closing => {
                let at = activity.idle_deadline(t.idle);
                if activity.is_idle() && at <= Instant::now() {
                    closing = true;
                    graceful(conn.as_mut());
                } else {
                    idle.as_mut().reset(at);
                }
            }
            () = app_idle.as_mut(), if bound.is_some() => {
                let next = bound.and_then(|b| b.expire(t.pool_idle));
                app_idle.as_mut().reset(next.unwrap_or_else(|| Instant::now() + t.pool_idle));
            }
            () = stalled.as_mut() => {
                tracing::debug!(listener = %l.route.name, %peer, "client stopped reading; closing");
                cut(Cause::WriteTimeout);
                return;
            }
            () = header.as_mut(), if header_clock => {
                let now = Instant::now();
                let late = if h2 {
                    match activity.first_bytes() {
                        FIRST_PENDING => Some(activity.origin + t.header_read),
                        _ => {
                            header_clock = false;
                            None
                        }
                    }
                } else {
                    activity.header_deadline(t.header_read)
                };
                match late {
                    Some(at) if at <= now => {
                        tracing::debug!(listener = %l.route.name, %peer, h2, "request head too slow; closing");
                        cut(Cause::HeaderReadTimeout);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(h2: bool, chunks: &[&[u8]]) -> u8 {
        let mut f = FirstBytes::new(h2);
        let mut v = FIRST_PENDING;
        for c in chunks {
            v = f.feed(c);
        }
        v
    }

    #[test]
    fn http2_preface_then_first_frame() {
        let settings: &[u8] = &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert_eq!(verdict(true, &[&PREFACE[..10]]), FIRST_PENDING);
        assert_eq!(verdict(true, &[PREFACE]), FIRST_PENDING);
        assert_eq!(verdict(true, &[PREFACE, &settings[..12]]), FIRST_PENDING);
        assert_eq!(verdict(true, &[PREFACE, settings]), FIRST_OK);
        assert_eq!(
            verdict(true, &[PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]]),
            FIRST_OK
        );
        assert_eq!(verdict(true, &[b"G"]), FIRST_WRONG);
        assert_eq!(verdict(true, &[b"GET / HTTP/1.1\r\n"]), FIRST_WRONG);
    }

    #[test]
    fn http1_refuses_only_the_http2_preface() {
        assert_eq!(verdict(false, &[b"GET / HTTP/1.1\r\n"]), FIRST_OK);
        assert_eq!(verdict(false, &[b"P"]), FIRST_PENDING);
        assert_eq!(verdict(false, &[b"POST / HTTP/1.1\r\n"]), FIRST_OK);
        assert_eq!(verdict(false, &[b"PRI * HTTP/2", b".0\r\n"]), FIRST_WRONG);
        assert_eq!(verdict(false, &[PREFACE]), FIRST_WRONG);
    }
}
