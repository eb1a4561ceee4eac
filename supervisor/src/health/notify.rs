//! sd_notify: tell systemd (or any manager that sets `NOTIFY_SOCKET`) how tandem is doing:
//! `READY=1`, `STATUS=`, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=`, and the `WATCHDOG=1` keep-alive.
//!
//! Invariants: with no `NOTIFY_SOCKET` every call is a no-op that succeeds, so the lifecycle
//! calls these unconditionally. A send never blocks (the socket is non-blocking; a full queue
//! is an error the caller logs). The watchdog pings only while its `healthy` receiver says
//! true, so a hung app lets systemd's `WatchdogSec` fire; it pings at half the manager's
//! timeout, as sd_watchdog_enabled(3) advises. Messages are formatted by the `sd-notify`
//! crate's [`NotifyState`]; the socket is ours so tests can point it anywhere without touching
//! the process environment.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use sd_notify::NotifyState;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{self, MissedTickBehavior};

/// Why a notification could not be set up or sent.
#[derive(Debug, Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor an abstract name (`@...`).
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract socket name")]
    InvalidSocket(OsString),
    /// `WATCHDOG_USEC` is not a whole number of microseconds.
    #[error("WATCHDOG_USEC={0:?} is not a whole number of microseconds")]
    InvalidWatchdog(String),
    /// The socket could not be created or connected.
    #[error("cannot connect to the notify socket {socket:?}: {source}")]
    Connect { socket: OsString, source: io::Error },
    /// The message was not (fully) sent.
    #[error("cannot send {message:?} to the notify socket {socket:?}: {source}")]
    Send {
        socket: OsString,
        message: String,
        source: io::Error,
    },
}

/// A handle for sd_notify messages; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// None: no manager listening, every call is a no-op.
    socket: Option<OsString>,
    /// The manager's watchdog timeout, when it asked for pings.
    watchdog: Option<Duration>,
}

// === impl Notifier ===

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Notifier::default()
    }

    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` in the environment. The
    /// environment is only read: the lifecycle keeps these variables out of the app's
    /// environment when it spawns it (only tandem is the unit's main process).
    pub fn from_env() -> Result<Self, NotifyError> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// From the values of `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, for process
    /// `own_pid`. The watchdog is honoured only when `WATCHDOG_PID` is unset or `own_pid`: a
    /// manager that set it for another process did not ask us to ping.
    pub fn from_vars(
        socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Result<Self, NotifyError> {
        let Some(socket) = socket.filter(|s| !s.is_empty()) else {
            return Ok(Notifier::disabled());
        };
        let usec = match watchdog_usec {
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| NotifyError::InvalidWatchdog(v.to_string()))?,
            ),
            None => None,
        };
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(own_pid));
        let watchdog = usec.filter(|u| *u > 0 && for_us).map(Duration::from_micros);
        Notifier::new(socket, watchdog)
    }

    /// Notifies `socket` (an absolute path, or `@name` for the abstract namespace); pings are
    /// due within `watchdog` if given. Nothing is sent yet.
    pub fn new(socket: impl AsRef<OsStr>, watchdog: Option<Duration>) -> Result<Self, NotifyError> {
        let socket = socket.as_ref();
        let bytes = socket.as_bytes();
        if !(bytes.starts_with(b"/") || (bytes.starts_with(b"@") && bytes.len() > 1)) {
            return Err(NotifyError::InvalidSocket(socket.to_os_string()));
        }
        Ok(Notifier {
            socket: Some(socket.to_os_string()),
            watchdog: watchdog.filter(|w| !w.is_zero()),
        })
    }

    /// Whether a manager is listening.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The manager's watchdog timeout, when it asked for pings.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.socket.as_ref().and(self.watchdog)
    }

    /// `READY=1`: the app is ready; systemd finishes starting the unit.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Ready])
    }

    /// `STATUS=...`: a one-line status for `systemctl status`. Newlines become spaces, since
    /// each line of a notification is one assignment.
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        let one_line = status.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Status(&one_line)])
    }

    /// `STOPPING=1`: tandem has begun to stop.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Stopping])
    }

    /// `EXTEND_TIMEOUT_USEC=...`: the current start or stop step needs up to `by` more, from
    /// now (a slow app start, a long drain). Saturates at about 71 minutes (the protocol's
    /// field is 32 bits in this crate).
    pub fn extend_timeout(&self, by: Duration) -> Result<(), NotifyError> {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)])
    }

    /// `WATCHDOG=1`: one keep-alive ping.
    pub fn watchdog_ping(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Watchdog])
    }

    /// Pings the watchdog every half timeout while `healthy` is true, and at once when it turns
    /// true again; stops when `healthy`'s sender is dropped. None when no watchdog was asked
    /// for. Must be called from within a tokio runtime.
    pub fn spawn_watchdog(&self, mut healthy: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        let period = self.watchdog_timeout()? / 2;
        if period.is_zero() {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut ticker = time::interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                let ping = tokio::select! {
                    _ = ticker.tick() => *healthy.borrow(),
                    changed = healthy.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let now_healthy = *healthy.borrow_and_update();
                        if now_healthy {
                            ticker.reset();
                        }
                        now_healthy
                    }
                };
                if ping {
                    if let Err(e) = this.watchdog_ping() {
                        tracing::warn!(error = %e, "watchdog ping not sent");
                    }
                }
            }
        }))
    }

    /// Sends one datagram with one `KEY=VALUE` line per state. A fresh socket per message, as
    /// libsystemd does: nothing to keep alive, and a restarted manager is found again.
    fn send(&self, states: &[NotifyState<'_>]) -> Result<(), NotifyError> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let connect_err = |source| NotifyError::Connect {
            socket: socket.clone(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(connect_err)?;
        sock.set_nonblocking(true).map_err(connect_err)?;
        let bytes = socket.as_bytes();
        let connected = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name).and_then(|a| sock.connect_addr(&a)),
            None => sock.connect(socket),
        };
        connected.map_err(connect_err)?;
        match sock.send(message.as_bytes()) {
            Ok(n) if n == message.len() => Ok(()),
            Ok(_) => Err(NotifyError::Send {
                socket: socket.clone(),
                message,
                source: io::Error::new(io::ErrorKind::WriteZero, "datagram truncated"),
            }),
            Err(source) => Err(NotifyError::Send {
                socket: socket.clone(),
                message,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manager's socket bound in a fresh temp dir (dropped with it).
    fn manager_socket() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the manager's socket");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        (dir, path, sock)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification within 10s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_each_message_as_one_datagram() {
        let (_dir, path, manager) = manager_socket();
        let n = Notifier::new(&path, None).expect("absolute path");
        n.ready().expect("sent");
        n.status("probing http://127.0.0.1:3000/health\n(attempt 2)")
            .expect("sent");
        n.extend_timeout(Duration::from_secs(90)).expect("sent");
        n.stopping().expect("sent");
        assert_eq!(recv(&manager), "READY=1\n");
        assert_eq!(
            recv(&manager),
            "STATUS=probing http://127.0.0.1:3000/health (attempt 2)\n"
        );
        assert_eq!(recv(&manager), "EXTEND_TIMEOUT_USEC=90000000\n");
        assert_eq!(recv(&manager), "STOPPING=1\n");
    }

    #[test]
    fn abstract_socket_names_are_supported() {
        let name = format!("tandem-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let manager = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        manager
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        Notifier::new(format!("@{name}"), None)
            .expect("abstract")
            .ready()
            .expect("sent");
        assert_eq!(recv(&manager), "READY=1\n");
    }

    #[test]
    fn without_notify_socket_everything_is_a_quiet_no_op() {
        let n = Notifier::from_vars(None, Some("30000000"), None, 42).expect("unset is fine");
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_timeout(), None);
        n.ready().expect("no-op");
        n.stopping().expect("no-op");
        let (tx, rx) = watch::channel(true);
        assert!(n.spawn_watchdog(rx).is_none());
        drop(tx);
    }

    #[test]
    fn watchdog_honours_watchdog_pid_and_rejects_garbage() {
        let sock = OsStr::new("/run/systemd/notify");
        let mine = Notifier::from_vars(Some(sock), Some("20000000"), Some("42"), 42).expect("ok");
        assert_eq!(mine.watchdog_timeout(), Some(Duration::from_secs(20)));
        let anyone = Notifier::from_vars(Some(sock), Some("20000000"), None, 42).expect("ok");
        assert_eq!(anyone.watchdog_timeout(), Some(Duration::from_secs(20)));
        let other = Notifier::from_vars(Some(sock), Some("20000000"), Some("7"), 42).expect("ok");
        assert_eq!(
            other.watchdog_timeout(),
            None,
            "WATCHDOG_PID names another process"
        );
        assert!(matches!(
            Notifier::from_vars(Some(sock), Some("soon"), None, 42),
            Err(NotifyError::InvalidWatchdog(_))
        ));
        assert!(matches!(
            Notifier::from_vars(Some(OsStr::new("relative.sock")), None, None, 42),
            Err(NotifyError::InvalidSocket(_))
        ));
    }

    #[test]
    fn a_missing_manager_is_a_typed_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = Notifier::new(dir.path().join("nobody-here.sock"), None).expect("absolute");
        assert!(matches!(n.ready(), Err(NotifyError::Connect { .. })));
    }

    /// Receives the next datagram, waiting at most `within` of (paused) tokio time.
    async fn next_ping(sock: &tokio::net::UnixDatagram, within: Duration) -> Option<String> {
        let mut buf = [0u8; 512];
        match time::timeout(within, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Ok(Err(e)) => panic!("recv failed: {e}"),
            Err(_) => None,
        }
    }

    fn drain(sock: &tokio::net::UnixDatagram) {
        let mut buf = [0u8; 512];
        while sock.try_recv(&mut buf).is_ok() {}
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_only_while_healthy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let manager = tokio::net::UnixDatagram::bind(&path).expect("bind");
        // WatchdogSec=20s: pings due every 10s.
        let n = Notifier::new(&path, Some(Duration::from_secs(20))).expect("absolute");
        let (healthy, rx) = watch::channel(true);
        let task = n.spawn_watchdog(rx).expect("watchdog asked for");
        let minute = Duration::from_secs(60);

        assert_eq!(
            next_ping(&manager, minute).await.as_deref(),
            Some("WATCHDOG=1\n")
        );
        assert_eq!(
            next_ping(&manager, minute).await.as_deref(),
            Some("WATCHDOG=1\n")
        );

        healthy.send(false).expect("watchdog listening");
        tokio::task::yield_now().await;
        drain(&manager);
        assert_eq!(
            next_ping(&manager, minute).await,
            None,
            "no ping while unhealthy"
        );

        healthy.send(true).expect("watchdog listening");
        assert_eq!(
            next_ping(&manager, Duration::from_secs(1)).await.as_deref(),
            Some("WATCHDOG=1\n"),
            "a ping as soon as the app is healthy again"
        );

        drop(healthy);
        time::timeout(minute, task)
            .await
            .expect("the watchdog stops when its health source is gone")
            .expect("no panic");
    }
}
