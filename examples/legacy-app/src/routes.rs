//! What each path does. The failure modes (`/crash`, `/hang`, `/stall`, `/error`, `/flood`,
//! `/orphan`) exist so tandem's tests and demos can make the app misbehave on demand.
//!
//! Invariant: a handler returns `None` only when the app must not answer at all (crash or
//! hang); every other outcome is a status and body the connection loop writes.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::http::{query_param, Request};
use crate::log::{self, Stream};
use crate::state::{HUNG, STALLED};

/// Longest `/slow` delay honoured, so a typo cannot hold a drain for hours.
const MAX_SLOW_MS: u64 = 60_000;
/// Most lines one `/flood` writes.
const MAX_FLOOD_LINES: u64 = 1_000_000;
/// Exit code of `/crash` and `--crash-after`.
pub const CRASH_EXIT_CODE: i32 = 3;

/// Handles one request; `None` means "never answer".
pub fn handle(req: &Request) -> Option<(u16, Vec<u8>)> {
    let pid = std::process::id();
    let reply = |status: u16, body: String| Some((status, body.into_bytes()));
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/") => reply(200, format!("hello from legacy-app (pid {pid})\n")),
        ("GET", "/health") => reply(200, "ok\n".into()),
        ("GET", "/slow") => {
            let ms = query_param(&req.query, "ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(MAX_SLOW_MS);
            // Logged before the wait, so a test can signal the app with the request in flight.
            log::plain(
                Stream::Stdout,
                "DEBUG",
                &format!("slow request: sleeping {ms}ms"),
            );
            std::thread::sleep(Duration::from_millis(ms));
            if ms >= 1000 {
                log::plain(Stream::Stderr, "WARN", &format!("slow request took {ms}ms"));
            }
            reply(200, format!("slept {ms}ms\n"))
        }
        ("POST", "/echo") | ("PUT", "/echo") => Some((200, req.body.clone())),
        (_, "/echo") => reply(405, "use POST\n".into()),
        ("GET", "/error") => {
            log::raw(Stream::Stderr, &stack_trace());
            reply(
                500,
                "internal error (see the stack trace on stderr)\n".into(),
            )
        }
        ("GET", "/crash") | ("POST", "/crash") => {
            // POST too: a non-idempotent request that reached the app, which then died
            // (the proxy must not send it again).
            log::plain(
                Stream::Stderr,
                "FATAL",
                &format!("crash requested via {} /crash", req.method),
            );
            std::process::exit(CRASH_EXIT_CODE);
        }
        ("GET", "/hang") => {
            log::plain(
                Stream::Stderr,
                "WARN",
                "hanging: no more answers, SIGTERM ignored",
            );
            HUNG.store(true, Ordering::SeqCst);
            None
        }
        ("GET", "/stall") => {
            log::plain(
                Stream::Stderr,
                "WARN",
                "stalling: sockets unread, logs silent",
            );
            STALLED.store(true, Ordering::SeqCst);
            reply(200, "stalled\n".into())
        }
        ("GET", "/flood") => {
            let lines = query_param(&req.query, "lines")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(10_000)
                .min(MAX_FLOOD_LINES);
            for i in 0..lines {
                log::plain(
                    Stream::Stdout,
                    "INFO",
                    &format!("flood line {i} of {lines}"),
                );
            }
            reply(200, format!("wrote {lines} lines\n"))
        }
        ("GET", "/orphan") => {
            let ms = query_param(&req.query, "ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(MAX_SLOW_MS);
            match spawn_orphan(ms) {
                Ok(()) => reply(200, format!("orphaned a child that exits in {ms}ms\n")),
                Err(e) => reply(500, format!("cannot spawn the orphan: {e}\n")),
            }
        }
        _ => reply(404, "not found\n".into()),
    }
}

/// Double-forks a copy of this binary that sleeps `ms` and exits: the grandchild's parent is
/// gone at once, so it is re-parented to PID 1 (or the nearest subreaper, i.e. tandem), which
/// must reap it or leave a zombie behind.
fn spawn_orphan(ms: u64) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let status = Command::new(exe)
        .arg("--orphan-parent")
        .arg(ms.to_string())
        .stdin(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "orphan parent failed: {status}"
        )))
    }
}

/// Hidden mode behind `--orphan-parent MS`: start the sleeping grandchild and exit without
/// waiting for it.
pub fn orphan_parent(ms: u64) -> i32 {
    let spawned = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .arg("--sleep-ms")
            .arg(ms.to_string())
            .stdin(Stdio::null())
            .spawn()
    });
    match spawned {
        Ok(_child) => 0, // dropping a std Child neither waits for nor kills it: that is the point
        Err(_) => 1,
    }
}

/// A multi-line stack trace in the shape Java prints, for multi-line log grouping.
fn stack_trace() -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!(
        "Exception in thread \"http-worker-{pid}\" java.lang.IllegalStateException: order {ts} not found\n\
         \tat com.example.legacy.OrderService.lookup(OrderService.java:142)\n\
         \tat com.example.legacy.OrderController.get(OrderController.java:57)\n\
         \tat com.example.legacy.http.Router.dispatch(Router.java:88)\n\
         Caused by: java.sql.SQLException: connection refused\n\
         \tat com.example.legacy.db.Pool.acquire(Pool.java:31)\n\
         \t... 3 more",
        pid = std::process::id()
    )
}
