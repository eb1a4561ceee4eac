//! HTTP/2 floods at an h2c listener, written frame by frame on a raw socket: rapid reset
//! (CVE-2023-44487), a CONTINUATION flood (CVE-2024-27316 and kin), SETTINGS and PING floods.
//! The app is Debian's nginx speaking h2c. Each flood must end with the attacker cut off
//! (GOAWAY or a closed connection) or absorbed, tandem's memory flat, the app spared the
//! flood, and the listener still serving the next client.
use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::apps::{nginx, nginx_served};
use crate::support::{free_port, require_tool, Tandem, PATIENCE};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[ty, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK block of `GET /ok` (static-table indexes, literals never added to the dynamic
/// table, so every stream can reuse it).
fn get_ok_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, 3];
    b.extend_from_slice(b"/ok");
    b.extend_from_slice(&[0x01, 9]);
    b.extend_from_slice(b"localhost");
    b
}

/// tandem's h2c listener in front of nginx (h2c); returns the listener's address.
struct H2Edge {
    t: Tandem,
    proxy: String,
    dir: tempfile::TempDir,
}

impl H2Edge {
    fn start() -> Option<H2Edge> {
        if !require_tool("curl") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (listen, app) = (free_port(), free_port());
        let mut args: Vec<String> = [
            "--set",
            "admin.listen=",
            "--proxy",
            &format!("h2c:127.0.0.1:{listen}=127.0.0.1:{app}"),
            "--",
        ]
        .map(String::from)
        .to_vec();
        args.extend(nginx(dir.path(), app, true)?);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut t = Tandem::spawn(&args);
        t.collect_stdout();
        t.wait_event("ready");
        let e = H2Edge {
            t,
            proxy: format!("127.0.0.1:{listen}"),
            dir,
        };
        assert_eq!(
            e.get_ok(),
            "ok",
            "a normal h2c request works before the flood"
        );
        Some(e)
    }

    /// One well-behaved request with a real HTTP/2 client (curl, prior knowledge).
    fn get_ok(&self) -> String {
        let out = std::process::Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "--max-time", "20"])
            .arg(format!("http://{}/ok", self.proxy))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.t.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn served(&self) -> usize {
        nginx_served(self.dir.path())
    }

    /// Sends the preface, then `batches()` until it returns `None` or the connection fails,
    /// while reading what tandem answers. Returns how it ended.
    fn flood(&self, mut batches: impl FnMut(usize) -> Option<Vec<u8>> + Send + 'static) -> Ended {
        let s = TcpStream::connect(&self.proxy).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        let mut w = s.try_clone().unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let sent_w = sent.clone();
        let done = Arc::new(AtomicBool::new(false));
        let done_w = done.clone();
        let writer = thread::spawn(move || {
            let mut hello = PREFACE.to_vec();
            hello.extend(frame(SETTINGS, 0, 0, &[]));
            if w.write_all(&hello).is_err() {
                return;
            }
            let mut i = 0;
            while let Some(batch) = batches(i) {
                if w.write_all(&batch).is_err() {
                    return;
                }
                sent_w.fetch_add(batch.len(), Ordering::Relaxed);
                i += 1;
            }
            done_w.store(true, Ordering::Relaxed);
        });
        let ended = read_frames(s, &done);
        let _ = writer.join();
        Ended {
            sent: sent.load(Ordering::Relaxed),
            ..ended
        }
    }
}

/// What became of a flooding connection.
#[derive(Debug)]
struct Ended {
    /// The error code of tandem's GOAWAY, if one came.
    goaway: Option<u32>,
    /// tandem closed (or reset) the connection.
    closed: bool,
    /// Bytes the flood got written.
    sent: usize,
}

/// Reads frames until the connection ends, or stays quiet for 3 s after a GOAWAY or after the
/// whole flood was written (`done`), or PATIENCE.
fn read_frames(mut s: TcpStream, done: &AtomicBool) -> Ended {
    let deadline = Instant::now() + PATIENCE;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut goaway = None;
    let mut quiet_since = Instant::now();
    loop {
        if Instant::now() > deadline
            || ((goaway.is_some() || done.load(Ordering::Relaxed))
                && quiet_since.elapsed() > Duration::from_secs(3))
        {
            return Ended {
                goaway,
                closed: false,
                sent: 0,
            };
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return Ended {
                    goaway,
                    closed: true,
                    sent: 0,
                }
            }
            Ok(n) => {
                quiet_since = Instant::now();
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 9 {
                    let len =
                        usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                    if buf.len() < 9 + len {
                        break;
                    }
                    if buf[3] == GOAWAY && len >= 8 {
                        goaway = Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
                    }
                    buf.drain(..9 + len);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                return Ended {
                    goaway,
                    closed: true,
                    sent: 0,
                }
            }
        }
    }
}

/// After a flood: the attacker was cut off, tandem's memory did not grow by more than
/// `grow_kb`, and the next client is served.
fn assert_survived(e: &H2Edge, what: &str, ended: &Ended, rss_before: u64) {
    assert!(
        ended.goaway.is_some() || ended.closed,
        "{what}: the flooding connection was neither sent GOAWAY nor closed: {ended:?}"
    );
    absorbed(e, what, rss_before);
}

/// tandem's memory did not grow by more than 32 MiB and the next client is served.
fn absorbed(e: &H2Edge, what: &str, rss_before: u64) {
    let rss = e.rss_kb();
    assert!(
        rss < rss_before + 32 * 1024,
        "{what}: tandem's RSS grew from {rss_before} kB to {rss} kB"
    );
    assert_eq!(e.get_ok(), "ok", "{what}: the next client is served");
}

#[test]
fn rapid_reset_ends_in_goaway_and_spares_the_app() {
    let Some(e) = H2Edge::start() else { return };
    let before = e.rss_kb();
    let served_before = e.served();
    let block = get_ok_block();
    const STREAMS: usize = 20_000;
    let ended = e.flood(move |batch| {
        // 200 streams per write: each opened and cancelled at once.
        let first = batch * 200;
        (first < STREAMS).then(|| {
            let mut out = Vec::new();
            for n in first..first + 200 {
                let id = u32::try_from(2 * n + 1).unwrap();
                out.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
                out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            }
            out
        })
    });
    assert_survived(&e, "rapid reset", &ended, before);
    let reached = e.served() - served_before;
    assert!(
        reached < STREAMS / 10,
        "{reached} of {STREAMS} reset streams reached the app: {ended:?}"
    );
}

#[test]
fn continuation_flood_is_cut_before_it_reaches_the_app() {
    let Some(e) = H2Edge::start() else { return };
    let before = e.rss_kb();
    let served_before = e.served();
    // One request whose header block never ends: 16 KiB CONTINUATION frames of small
    // literal headers, up to 64 MiB.
    let mut literal = vec![0x00, 7];
    literal.extend_from_slice(b"x-flood");
    literal.extend_from_slice(&[1, b'a']);
    let payload: Vec<u8> = literal.repeat(16_000 / literal.len());
    let opening = frame(HEADERS, END_STREAM, 1, &get_ok_block());
    let ended = e.flood(move |batch| {
        (batch < 4096).then(|| {
            let mut out = if batch == 0 {
                opening.clone()
            } else {
                Vec::new()
            };
            out.extend(frame(CONTINUATION, 0, 1, &payload));
            out
        })
    });
    assert_survived(&e, "CONTINUATION flood", &ended, before);
    assert!(
        ended.sent < 32 << 20,
        "tandem read {} bytes of one header block before cutting it off",
        ended.sent
    );
    assert_eq!(
        e.served(),
        served_before + 1,
        "only the check request reached the app"
    );
}

#[test]
fn settings_and_ping_floods_leave_memory_flat() {
    let Some(e) = H2Edge::start() else { return };
    for (what, ty, payload) in [
        ("SETTINGS flood", SETTINGS, Vec::new()),
        ("PING flood", PING, vec![7u8; 8]),
    ] {
        let before = e.rss_kb();
        let one = frame(ty, 0, 0, &payload);
        let ended = e.flood(move |batch| (batch < 500).then(|| one.repeat(1000)));
        // Answered (ACK/PONG, paced by what the client reads) or cut off: either way
        // bounded.
        eprintln!("{what}: {ended:?}");
        absorbed(&e, what, before);
    }
}
