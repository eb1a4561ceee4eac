//! Client connections under fd pressure (issue 19, bug 5): each listener's connections are
//! capped (by default from the fd limit), so idle connections past the cap are closed at once
//! instead of filling the fd table; `/healthz` still answers and a killed app is respawned.
//! TCP listeners: the cap holds, and a silent connection is closed at `timeouts.tcp_idle`.
//!
//! The app is Python's own `http.server`; tandem runs under `prlimit --nofile=256:256`.
use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::TcpStream,
    path::Path,
};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::apps::http_server_behind_tandem;
use crate::otel::scrape;
use crate::support::{eventually, free_port, http, require_tool, Tandem, PATIENCE};

/// tandem with `listeners` in front of `http.server` on `app` (see
/// [`http_server_behind_tandem`]).
fn start(dir: &Path, app: u16, listeners: &str, nofile: Option<u32>) -> (Tandem, String) {
    http_server_behind_tandem(dir, dir, app, listeners, nofile)
}

/// Opens `n` connections to `addr` (each kept open by the caller).
fn connect_many(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

/// Whether tandem closed `s` (EOF or reset), without waiting.
fn closed(mut s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

fn series(name: &str, listener: &str) -> String {
    format!("tandem_proxy_{name}{{listener=\"{listener}\"}}")
}

#[test]
fn idle_connections_past_the_cap_leave_healthz_and_the_respawn_working() {
    if !require_tool("prlimit") || !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello\n").unwrap();
    let (web, db, app) = (free_port(), free_port(), free_port());
    // Two listeners under 256 fds: each is capped at (256 - 64) / (2 × 2) = 48.
    let listeners = format!(
        r#"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:{web}"
upstream = "127.0.0.1:{app}"
timeouts = {{ header_read = "60s" }}
[[proxy.listeners]]
name = "db"
protocol = "tcp"
listen = "127.0.0.1:{db}"
upstream = "127.0.0.1:{app}"
"#
    );
    let (mut t, admin) = start(dir.path(), app, &listeners, Some(256));
    let first = t.app_pid();

    // Far more idle connections than the fd table holds (each TCP one takes two fds).
    const EACH: usize = 150;
    const CAP: usize = 48;
    let web_conns = connect_many(&format!("127.0.0.1:{web}"), EACH);
    let db_conns = connect_many(&format!("127.0.0.1:{db}"), EACH);
    eventually("the connections past each cap counted as overflow", || {
        scrape(&admin, &series("connections_overflow_total", "web")) >= (EACH - CAP) as f64
            && scrape(&admin, &series("connections_overflow_total", "db")) >= (EACH - CAP) as f64
    });
    assert_eq!(
        scrape(&admin, &series("connections_open", "web")),
        CAP as f64
    );
    assert_eq!(
        scrape(&admin, &series("connections_open", "db")),
        CAP as f64
    );
    eventually("the connections past the cap closed", || {
        web_conns.iter().filter(|s| closed(s)).count() == EACH - CAP
    });

    // fds are left for the admin port and for the app's respawn.
    let (status, _, _) = http(&admin, "GET", "/healthz", b"", &[]).unwrap();
    assert_eq!(status, 200);
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    let second = t.wait_event_nth("started", 1)["pid"].as_i64().unwrap() as i32;
    assert_ne!(second, first, "a new app process");
    assert!(
        t.child.try_wait().unwrap().is_none(),
        "tandem exited: {:?}",
        t.stderr_lines.lock().unwrap().last()
    );
    assert!(
        !t.events().iter().any(|e| e["event"] == "spawn_failed"),
        "a respawn failed"
    );

    // Once clients leave, new connections are served again.
    drop(web_conns);
    drop(db_conns);
    t.wait_event_nth("ready", 1);
    eventually(
        "a request through the proxy once connections closed",
        || {
            http(&format!("127.0.0.1:{web}"), "GET", "/hello.txt", b"", &[])
                .is_ok_and(|(status, _, _)| status == 200)
        },
    );
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn a_tcp_listener_holds_its_connection_cap() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, app) = (free_port(), free_port());
    let listeners = format!(
        r#"
[[proxy.listeners]]
name = "db"
protocol = "tcp"
listen = "127.0.0.1:{db}"
upstream = "127.0.0.1:{app}"
limits = {{ max_connections = 5 }}
"#
    );
    let (mut t, admin) = start(dir.path(), app, &listeners, None);
    let conns = connect_many(&format!("127.0.0.1:{db}"), 12);
    eventually("seven connections closed at once", || {
        conns.iter().filter(|s| closed(s)).count() == 7
    });
    assert_eq!(
        scrape(&admin, &series("connections_overflow_total", "db")),
        7.0
    );
    assert_eq!(scrape(&admin, &series("connections_open", "db")), 5.0);
    // The five within the cap are proxied: a request on one reaches the app.
    let mut open: Vec<TcpStream> = conns.into_iter().filter(|s| !closed(s)).collect();
    assert_eq!(open.len(), 5);
    let s = &mut open[0];
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    std::io::Write::write_all(s, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Open TCP connections would hold the drain until drain_timeout.
    drop(open);
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn a_silent_tcp_connection_is_closed_at_tcp_idle() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, app) = (free_port(), free_port());
    let listeners = format!(
        r#"
[[proxy.listeners]]
name = "db"
protocol = "tcp"
listen = "127.0.0.1:{db}"
upstream = "127.0.0.1:{app}"
timeouts = {{ tcp_idle = "1s" }}
"#
    );
    let (mut t, _admin) = start(dir.path(), app, &listeners, None);
    let mut s = TcpStream::connect(format!("127.0.0.1:{db}")).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "the idle connection was not closed: {r:?}"
    );
    eventually("the access record names idle_timeout", || {
        t.records()
            .iter()
            .any(|r| r["fields"]["kind"] == "access" && r["fields"]["cause"] == "idle_timeout")
    });
    t.signal(Signal::SIGTERM);
    t.wait();
}

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The fault matrix's 10,000 idle connections at an HTTP listener (its cap set above that: the
/// default, from a 20,000-fd limit, is 9,968): no panic, memory bounded while they are open
/// and given back after they close, the app's requests served meanwhile. (Idle connections
/// at a TCP listener each open one to the app, so they test the app's accept backlog more
/// than tandem; the TCP cap has its own test above.)
#[test]
fn ten_thousand_idle_connections_leave_the_app_served_and_memory_bounded() {
    // This process and tandem (which inherits the limit) each need over 10,000 fds: raise
    // the soft limit to the hard one.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    if !crate::support::can_run(
        hard >= 12_000,
        format_args!("the fd limit ({hard}) is below what 10,000 client sockets need"),
    ) {
        return;
    }
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (web, app) = (free_port(), free_port());
    let listeners = format!(
        r#"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:{web}"
upstream = "127.0.0.1:{app}"
limits = {{ max_connections = 10500 }}
"#
    );
    let (mut t, admin) = start(dir.path(), app, &listeners, None);
    let web = format!("127.0.0.1:{web}");
    let before = rss_kb(t.pid());
    let idle = connect_many(&web, 10_000);
    // Every connection was accepted (or closed past a cap), and the app is still served.
    eventually("tandem took all 10,000 connections", || {
        scrape(&admin, "tandem_proxy_connections_open{") as usize >= 10_000
    });
    assert_eq!(
        scrape(&admin, "tandem_proxy_connections_overflow_total{"),
        0.0
    );
    for i in 0..20 {
        let (status, _, _) = http(&web, "GET", "/", b"", &[]).unwrap();
        assert_eq!(status, 200, "request {i} with 10,000 idle connections open");
    }
    let open = rss_kb(t.pid());
    drop(idle);
    eventually("the connections are gone", || {
        scrape(&admin, "tandem_proxy_connections_open{") < 1.0
    });
    assert!(
        open < before + 200 * 1024,
        "10,000 idle connections took {} kB",
        open - before
    );
    // Memory given back to the system once they are gone (glibc keeps it otherwise).
    eventually("memory given back after the connections closed", || {
        rss_kb(t.pid()) < before + 32 * 1024
    });
    eprintln!(
        "RSS: {before} kB before, {open} kB with 10,000 idle connections, {} kB after",
        rss_kb(t.pid())
    );
    let (status, _, _) = http(&web, "GET", "/", b"", &[]).unwrap();
    assert_eq!(status, 200);
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// One GET on `s` (kept open): the status line and the body (read by Content-Length).
fn get_on(s: &mut BufReader<TcpStream>, path: &str) -> (String, String) {
    write!(
        s.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    s.read_line(&mut status).unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        assert!(s.read_line(&mut line).unwrap() > 0, "closed in the head");
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (
        status.trim_end().to_string(),
        String::from_utf8(body).unwrap(),
    )
}

/// Python's http.server answers in HTTP/1.0 and closes each connection: an HTTP/1.1 client
/// of tandem still gets HTTP/1.1 answers on one connection that stays open (it got 1.0 and a
/// closed connection after every response).
#[test]
fn an_http_1_0_app_is_answered_in_1_1_on_a_kept_client_connection() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello\n").unwrap();
    let (web, app) = (free_port(), free_port());
    let listeners = format!(
        r#"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:{web}"
upstream = "127.0.0.1:{app}"
"#
    );
    let (mut t, _admin) = start(dir.path(), app, &listeners, None);
    let stream = TcpStream::connect(format!("127.0.0.1:{web}")).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut s = BufReader::new(stream);
    for _ in 0..3 {
        let (status, body) = get_on(&mut s, "/hello.txt");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "hello\n");
    }
    let (status, _) = get_on(&mut s, "/missing");
    assert_eq!(status, "HTTP/1.1 404 File not found");
    t.signal(Signal::SIGTERM);
    t.wait();
}
