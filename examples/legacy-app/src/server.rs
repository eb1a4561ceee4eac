//! The accept loop and the per-connection request loop (one thread per connection).
//!
//! Invariant: a request counts as in flight from its first byte to its last response byte;
//! shutdown waits for exactly those, while idle keep-alive connections are simply closed. Every
//! wait is bounded by a read timeout so shutdown is noticed within [`POLL`].

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::http::{self, ReadError};
use crate::log::{self, Field, Stream};
use crate::routes;
use crate::state::{HUNG, IN_FLIGHT, SHUTTING_DOWN, STALLED};

/// How often an idle connection checks for shutdown.
const POLL: Duration = Duration::from_millis(200);
/// Idle keep-alive connections are closed after this long. Above common proxy idle timeouts,
/// as real apps are, so a proxy must close its pooled connections first.
const KEEP_ALIVE: Duration = Duration::from_secs(75);
/// Time allowed to receive the rest of a request once its first byte arrived.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections served at once; beyond it a connection gets a 503 and is closed.
const MAX_CONNECTIONS: usize = 512;
/// Most connections a stalled app holds unread; beyond it they are dropped (closed).
const MAX_STALLED_CONNECTIONS: usize = 1024;

static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Accepts connections until shutdown begins; a hung app never returns from here.
pub fn serve(listener: &TcpListener) {
    let mut stalled: Vec<TcpStream> = Vec::new();
    for conn in listener.incoming() {
        if SHUTTING_DOWN.load(Ordering::SeqCst) {
            return; // the signal thread's wake-up connection, or a late client: either way, stop
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::plain(Stream::Stderr, "ERROR", &format!("accept failed: {e}"));
                // EMFILE and friends: back off instead of spinning on the error.
                std::thread::sleep(POLL);
                continue;
            }
        };
        if HUNG.load(Ordering::SeqCst) {
            hang_forever(stream);
        }
        if STALLED.load(Ordering::SeqCst) {
            if stalled.len() < MAX_STALLED_CONNECTIONS {
                stalled.push(stream);
            }
            continue;
        }
        if OPEN_CONNECTIONS.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            OPEN_CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
            let _ = http::write_response(&mut stream, 503, b"too many connections\n", false);
            continue;
        }
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                connection(stream);
                OPEN_CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            OPEN_CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
            log::plain(
                Stream::Stderr,
                "ERROR",
                &format!("cannot spawn a thread: {e}"),
            );
        }
    }
}

/// Serves requests on one connection until it closes, idles out, or shutdown begins.
fn connection(stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    let mut idle = Duration::ZERO;
    loop {
        if STALLED.load(Ordering::SeqCst) {
            hang_forever(writer); // stop reading: the client's bytes pile up in kernel buffers
        }
        let _ = reader.get_ref().set_read_timeout(Some(POLL));
        match reader.fill_buf() {
            Ok([]) => return, // the client closed the connection
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                idle += POLL;
                if SHUTTING_DOWN.load(Ordering::SeqCst) || idle >= KEEP_ALIVE {
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        idle = Duration::ZERO;
        let in_flight = IN_FLIGHT.enter();
        let started = Instant::now();
        let _ = reader.get_ref().set_read_timeout(Some(REQUEST_TIMEOUT));
        let req = match http::read_request(&mut reader) {
            Ok(req) => req,
            Err(ReadError::Bad(status, why)) => {
                log::plain(
                    Stream::Stderr,
                    "WARN",
                    &format!("bad request from {peer}: {why}"),
                );
                let _ =
                    http::write_response(&mut writer, status, format!("{why}\n").as_bytes(), false);
                return;
            }
            Err(ReadError::Io(e)) => {
                log::plain(
                    Stream::Stderr,
                    "WARN",
                    &format!("reading a request from {peer}: {e}"),
                );
                return;
            }
            Err(ReadError::Closed | ReadError::Idle) => return,
        };
        if HUNG.load(Ordering::SeqCst) {
            drop(in_flight); // a hung app is not draining anything
            hang_forever(writer);
        }
        let Some((status, body)) = routes::handle(&req) else {
            drop(in_flight);
            hang_forever(writer);
        };
        let keep_alive = req.keep_alive && !SHUTTING_DOWN.load(Ordering::SeqCst);
        let written = http::write_response(&mut writer, status, &body, keep_alive);
        let mut fields = vec![
            ("method", Field::Str(&req.method)),
            ("path", Field::Str(&req.path)),
            ("status", Field::Num(u64::from(status))),
            ("bytes", Field::Num(body.len() as u64)),
            (
                "duration_ms",
                Field::Num(started.elapsed().as_millis() as u64),
            ),
            ("peer", Field::Str(&peer)),
        ];
        // As an instrumented app would: its log line carries the trace it was called in.
        if let Some(tp) = &req.traceparent {
            fields.push(("traceparent", Field::Str(tp)));
        }
        log::json(
            Stream::Stdout,
            if status >= 500 { "error" } else { "info" },
            "request",
            &fields,
        );
        drop(in_flight);
        if written.is_err() || !keep_alive {
            let _ = writer.flush();
            return;
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Holds `stream` open without ever touching it again: what a hung process looks like from
/// outside (connects succeed, nothing answers).
fn hang_forever(stream: TcpStream) -> ! {
    let _held = stream;
    loop {
        std::thread::park();
    }
}
