//! The proxy in front of a real app that tandem supervises: readiness gates traffic, a
//! restart mid-load fails no idempotent request, a POST that reached a dying app is not sent
//! twice, and SIGTERM drains before the app is asked to stop.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use nix::sys::signal::Signal;
use tandem::admin_client::get;

use crate::support::{free_port, http, legacy_app, seen, Tandem};

/// A tandem config for legacy-app on `port`, behind one proxy listener, with a readiness
/// probe on /health; `extra` is appended.
fn config(dir: &std::path::Path, port: u16, app_args: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("tandem.toml");
    let text = format!(
        r#"
[service]
name = "legacy"
[app]
command = ["{app}", "--port", "{port}"{app_args}]
stop_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[restart]
policy = "on-failure"
initial_delay = "50ms"
max_delay = "200ms"
start_limit_burst = 20
[health.readiness]
kind = "http"
target = "http://127.0.0.1:{port}/health"
interval = "50ms"
timeout = "500ms"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:{port}"
{extra}
"#,
        app = legacy_app().display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start(dir: &std::path::Path, app_args: &str, extra: &str) -> (Tandem, String, String) {
    let port = free_port();
    let cfg = config(dir, port, app_args, extra);
    let mut t = Tandem::spawn(&["--config", cfg.to_str().unwrap()]);
    t.collect_stdout();
    let proxy = t.wait_event("proxy_listening")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = t.admin_addr();
    (t, proxy, admin)
}

#[test]
fn readiness_gates_traffic_and_metrics_count_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, proxy, admin) = start(dir.path(), ", \"--startup-delay\", \"1500\"", "");
    // The app sleeps 1.5 s before it listens: not ready, and says so.
    t.wait_event("started");
    let (code, body) = get(&admin, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    // A request sent now is held by the proxy until the app is ready, then served.
    let (status, head, body) = http(&proxy, "GET", "/", b"", &[]).unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("hello from legacy-app"));
    assert!(seen(&t.wait_event("ready")) > Duration::ZERO);
    assert_eq!(get(&admin, "/readyz").unwrap().0, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-tandem-attempt-count: 1"),
        "{head}"
    );

    let (status, _, body) = http(&proxy, "POST", "/echo", b"ping-pong", &[]).unwrap();
    assert_eq!((status, body.as_slice()), (200, b"ping-pong".as_slice()));
    for _ in 0..8 {
        assert_eq!(http(&proxy, "GET", "/health", b"", &[]).unwrap().0, 200);
    }
    let (_, metrics) = get(&admin, "/metrics").unwrap();
    let total: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tandem_proxy_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 10.0, "{metrics}");
    let lines_in: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tandem_log_lines_in_total ")?.parse().ok())
        .unwrap();
    assert!(lines_in >= 1.0, "the app's lines are counted: {metrics}");
    // One access record per request, in the log pipeline.
    crate::support::eventually("10 access records", || {
        t.records()
            .iter()
            .filter(|r| r["fields"]["kind"] == "access")
            .count()
            == 10
    });
    let rec = t
        .records()
        .into_iter()
        .find(|r| r["fields"]["kind"] == "access" && r["fields"]["method"] == "POST")
        .unwrap();
    assert_eq!(rec["fields"]["path"], "/echo");
    assert_eq!(rec["fields"]["status"], 200);
    assert_eq!(rec["msg"], "POST /echo 200");
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 0, "legacy-app exits 0 on SIGTERM");
}

#[test]
fn restart_mid_load_fails_no_idempotent_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, proxy, _admin) = start(dir.path(), "", "");
    t.wait_event("ready");
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (proxy, failures, sent) = (proxy.clone(), failures.clone(), sent.clone());
            thread::spawn(move || {
                for _ in 0..500 {
                    match http(&proxy, "GET", "/", b"", &[]) {
                        Ok((200, _, _)) => {}
                        Ok((status, head, _)) => {
                            eprintln!("failed: {status} {head}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Two crashes while the load runs: tandem restarts the app each time.
    for n in 1..=2u64 {
        crate::support::eventually("load under way", || sent.load(Ordering::Relaxed) >= 400 * n);
        let app = t.wait_event_nth("started", (n - 1) as usize)["pid"]
            .as_i64()
            .unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(app as i32), Signal::SIGKILL).unwrap();
        t.wait_event_nth("started", n as usize);
    }
    for c in clients {
        c.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert_eq!(sent.load(Ordering::Relaxed), 2000);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "idempotent requests failed across restarts"
    );
    assert!(
        t.event_names()
            .iter()
            .filter(|e| *e == "restarting")
            .count()
            >= 2
    );
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn a_post_that_reached_a_dying_app_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, proxy, _admin) = start(dir.path(), "", "");
    t.wait_event("ready");
    let (status, head, _) = http(&proxy, "POST", "/crash", b"order #1", &[]).unwrap();
    assert_eq!(status, 502, "{head}");
    // The app is restarted; a GET succeeds again.
    t.wait_event_nth("started", 1);
    assert_eq!(http(&proxy, "GET", "/", b"", &[]).unwrap().0, 200);
    let crashes = t
        .records()
        .iter()
        .filter(|r| {
            r["msg"]
                .as_str()
                .is_some_and(|m| m.contains("crash requested via POST"))
        })
        .count();
    assert_eq!(crashes, 1, "the POST reached the app more than once");
    let access = t
        .records()
        .into_iter()
        .find(|r| r["fields"]["kind"] == "access" && r["fields"]["path"] == "/crash")
        .unwrap();
    assert_eq!(access["fields"]["attempts"], 1, "{access}");
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// A 2 s request to the app, once the app has logged it (it logs before it sleeps: then it
/// is in flight).
fn slow_request_in_flight(
    t: &Tandem,
    proxy: &str,
) -> thread::JoinHandle<std::io::Result<(u16, String, Vec<u8>)>> {
    let slow = {
        let proxy = proxy.to_string();
        thread::spawn(move || http(&proxy, "GET", "/slow?ms=2000", b"", &[]))
    };
    crate::support::eventually("slow request in flight", || {
        t.records().iter().any(|r| {
            r["msg"]
                .as_str()
                .is_some_and(|m| m.contains("slow request: sleeping"))
        })
    });
    slow
}

#[test]
fn sigterm_drains_the_in_flight_request_before_the_app_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, proxy, _admin) = start(dir.path(), "", "");
    t.wait_event("ready");
    let slow = slow_request_in_flight(&t, &proxy);
    t.signal(Signal::SIGTERM);
    let (status, _, body) = slow.join().unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body), "slept 2000ms\n");
    assert_eq!(t.wait_code(), 0);
    t.assert_order(&["stopping", "drained", "stop_signal_sent"]);
    let drained = t.wait_event("drained");
    assert_eq!(drained["finished"], 1, "{drained}");
    assert_eq!(drained["cut"], 0, "{drained}");
}

#[test]
fn a_connection_opened_before_the_drain_gets_its_first_request_answered() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (mut t, proxy, _admin) = start(dir.path(), "", "");
    t.wait_event("ready");
    // a request in flight keeps the drain going
    let slow = slow_request_in_flight(&t, &proxy);
    // connected before the drain, its request sent just after the drain began: hyper's
    // graceful shutdown alone closed such a connection unread, the client getting no answer
    let mut s = std::net::TcpStream::connect(&proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.signal(Signal::SIGTERM);
    t.wait_event("stopping");
    thread::sleep(Duration::from_millis(100));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // answered, then closed (read to its end, not to the 10 s timeout)
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let (status, _, _) = slow.join().unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn slowloris_is_cut_and_oversized_headers_get_431() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let extra = "[proxy.listeners.timeouts]\nheader_read = \"1s\"\n[proxy.listeners.limits]\nmax_header_bytes = 8192\n";
    let (mut t, proxy, _admin) = start(dir.path(), "", extra);
    t.wait_event("ready");

    // Headers dribbled one byte every 100 ms, forever: the proxy must hang up.
    let mut s = std::net::TcpStream::connect(&proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut cut = false;
    let mut answer = Vec::new();
    for _ in 0..150 {
        if s.write_all(b"X").is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a 15 s slowloris was not cut by a 1 s header timeout");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    let big = "v".repeat(16 * 1024);
    let (status, head, _) = http(&proxy, "GET", "/", b"", &[("X-Big", &big)]).unwrap();
    assert_eq!(status, 431, "{head}");
    // The app never saw either.
    assert!(!t
        .records()
        .iter()
        .any(|r| r["fields"]["path"] == "/" && r["msg"] == "request"));
    t.signal(Signal::SIGTERM);
    t.wait();
}
