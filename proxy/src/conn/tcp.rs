//! Raw TCP mode: for ports that do not speak HTTP (databases, custom protocols), optionally
//! behind TLS termination (`tls`, handshaked in `tls.rs` first) and TLS to the app
//! (`upstream_tls`).
//!
//! Invariant: nothing is read from the client before the app's connection is up (no sniffing,
//! server-speaks-first protocols work); a connect failure is retried because no byte has
//! reached the app, within `max_attempts` and the hold deadline. A connection with no byte
//! either way for `timeouts.tcp_idle` is closed: a vanished client must not hold two fds
//! forever.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cause::Cause;
use crate::conn::listener::Listener;
use crate::http::backoff::jittered;
use crate::http::ready::wait_ready;
use crate::obs::access_log::AccessRecord;

/// A byte stream both ways: a socket, or TLS over one.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Proxies one accepted TCP connection (or TLS stream) to the app.
pub(crate) async fn serve<C: Io>(l: Arc<Listener>, client: C, peer: SocketAddr) {
    let start = Instant::now();
    l.counters.in_flight.fetch_add(1, Ordering::AcqRel);
    if let Some(m) = &l.route.metrics {
        m.tcp_connections.inc();
        m.in_flight.inc();
    }
    let mut record = AccessRecord {
        listener: l.route.name.clone(),
        protocol: "tcp",
        method: "TCP".into(),
        path: String::new(),
        status: 0,
        duration: std::time::Duration::ZERO,
        upstream_time: None,
        attempts: 0,
        bytes_in: 0,
        bytes_out: 0,
        upstream: l.route.cfg.upstream.clone(),
        request_id: String::new(),
        trace_id: None,
        cause: None,
        completed: false,
    };
    match connect(&l, start, &mut record).await {
        Ok(mut app) => {
            match copy_until_idle(
                client,
                &mut app,
                l.route.cfg.timeouts.tcp_idle,
                &l.hard_stop,
            )
            .await
            {
                Copied::Done(Ok((to_app, to_client))) => {
                    record.bytes_in = to_app;
                    record.bytes_out = to_client;
                    record.completed = true;
                }
                Copied::Done(Err(e)) => {
                    tracing::debug!(listener = %l.route.name, %peer, error = %e, "tcp tunnel broke");
                    record.cause = Some(Cause::UpstreamReset.as_str());
                }
                Copied::Cut => {
                    record.cause = Some(Cause::Draining.as_str());
                }
                Copied::Idle => {
                    tracing::debug!(listener = %l.route.name, %peer, "tcp connection idle; closing");
                    record.cause = Some(Cause::IdleTimeout.as_str());
                }
            }
        }
        Err(cause) => {
            tracing::debug!(listener = %l.route.name, %peer, %cause, "tcp connection refused by tandem");
            record.cause = Some(cause.as_str());
        }
    }
    l.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
    l.counters.completed.fetch_add(1, Ordering::AcqRel);
    record.duration = start.elapsed();
    if let Some(m) = &l.route.metrics {
        m.in_flight.dec();
    }
    if let Some(log) = &l.route.hooks.access_log {
        log(&record);
    }
}

async fn connect(
    l: &Listener,
    start: Instant,
    record: &mut AccessRecord,
) -> Result<Box<dyn Io>, Cause> {
    let mut readiness = l.route.readiness.clone();
    let hold_deadline = start + l.route.cfg.hold_timeout;
    let retry = &l.route.cfg.retry;
    let mut attempt = 0;
    loop {
        attempt += 1;
        record.attempts = attempt;
        wait_ready(&mut readiness, hold_deadline).await?;
        let sent = Instant::now();
        let r = tokio::time::timeout(
            l.route.cfg.timeouts.connect,
            TcpStream::connect(l.route.cfg.upstream.as_str()),
        )
        .await;
        record.upstream_time = Some(sent.elapsed());
        let cause = match r {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return match &l.edge.upstream_tls {
                    None => Ok(Box::new(s)),
                    // Not retried: a certificate problem does not go away in a backoff.
                    Some(tls) => match tls.connect(s, l.route.metrics.as_ref()).await {
                        Ok(s) => Ok(Box::new(s)),
                        Err(_) => Err(Cause::UpstreamTls),
                    },
                };
            }
            Ok(Err(_)) => Cause::ConnectFailed,
            Err(_) => Cause::ConnectTimeout,
        };
        if attempt >= retry.max_attempts {
            return Err(cause);
        }
        tokio::time::sleep(jittered(retry.backoff_base, retry.backoff_max, attempt)).await;
    }
}

/// How a byte-copying connection ended.
pub(crate) enum Copied {
    /// One side closed (bytes to the upstream, bytes to the client), or the copy broke.
    Done(io::Result<(u64, u64)>),
    /// `cut` was cancelled.
    Cut,
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Copies both ways until a side closes, `cut` is cancelled, or no byte moves for `idle`: the
/// body of a TCP listener's connection and of an outbound TCP service's.
pub(crate) async fn copy_until_idle<C: Io, U: Io + ?Sized>(
    client: C,
    upstream: &mut U,
    idle: Duration,
    cut: &tokio_util::sync::CancellationToken,
) -> Copied {
    let last = AtomicU64::new(0);
    let mut client = Touched {
        inner: client,
        origin: Instant::now(),
        last: &last,
    };
    let origin = client.origin;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, upstream) => Copied::Done(r),
        _ = cut.cancelled() => Copied::Cut,
        () = idle_expired(&last, origin, idle) => Copied::Idle,
    }
}

/// The client's stream, noting when a byte last moved either way (a stamp since `origin`).
struct Touched<'a, C> {
    inner: C,
    origin: Instant,
    last: &'a AtomicU64,
}

impl<C> Touched<'_, C> {
    fn touch(&self) {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Touched<'_, C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Touched<'_, C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once no byte moved for `idle` (see [`Touched`]); one timer, re-armed when it
/// fires early.
async fn idle_expired(last: &AtomicU64, origin: Instant, idle: Duration) {
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    loop {
        timer.as_mut().await;
        let at = origin + Duration::from_nanos(last.load(Ordering::Relaxed)) + idle;
        if at <= Instant::now() {
            return;
        }
        timer.as_mut().reset(at);
    }
}
