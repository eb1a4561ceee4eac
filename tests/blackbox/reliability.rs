//! Reliability with apps tandem did not write: Python's `http.server` behind the proxy with
//! the defaults a new user gets (no readiness probe), killed under load; one request that
//! crashes the app; probes set from flags.
//!
//! Each test here is a reproduction of a failure found by running tandem as a new user would
//! (issue 14); each fails on the code before its fix.
use std::{
    io::{Read, Write},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::apps::{nginx, nginx_served, python_http_server, redis};
use crate::otel::scrape;
use crate::support::{free_port, run, Tandem, PATIENCE};

/// What one GET on a fresh connection came to.
enum Got {
    /// A whole response with this status.
    Status(u16),
    /// The connection broke mid-response: the killed app had already begun it.
    Cut,
    /// No response at all (connection refused or reset before any byte).
    Nothing(String),
}

fn get_once(addr: &str, path: &str) -> Got {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return Got::Nothing("connect refused".into());
    };
    let _ = s.set_read_timeout(Some(PATIENCE));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return Got::Nothing(e.to_string());
    }
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return if raw.is_empty() {
            Got::Nothing(format!("{read:?}"))
        } else {
            Got::Cut
        };
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let complete = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .is_none_or(|len| body.len() >= len);
    if read.is_err() || !complete {
        Got::Cut
    } else {
        Got::Status(status)
    }
}

/// The issue's first reproduction: Python's http.server, no readiness probe, four clients
/// sending 1,600 GETs, the app SIGKILLed once: before, 10 to 14 got a 502 (tandem declared the
/// app ready at spawn and spent the attempts on refused connects). Now no GET fails; a
/// response the killed app had already begun may be cut, and those are counted apart.
#[test]
fn no_failed_get_when_python_http_server_is_killed_under_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from python\n").unwrap();
    let app = free_port();
    let Some(cmd) = python_http_server(dir.path(), app) else {
        return;
    };
    kill_under_load(cmd, app, "/hello.txt");
}

/// The same with Debian's nginx (one foreground process, its defaults otherwise): no GET of
/// 1,600 fails across its SIGKILL, with no readiness probe configured.
#[test]
fn no_failed_get_when_nginx_is_killed_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let app = free_port();
    let Some(cmd) = nginx(dir.path(), app, false) else {
        return;
    };
    kill_under_load(cmd, app, "/ok");
    assert!(nginx_served(dir.path()) > 0, "nginx served the load");
}

/// Debian's nginx speaking h2c behind an `h2c:` listener, curl as the HTTP/2 client: a HEAD's
/// answer carries the file's length and no body (HTTP/2 needs no framing to say so) and comes
/// back as nginx gave it, not as a failed attempt waiting for a body that never comes; a GET
/// gets the file.
#[test]
fn a_head_through_an_h2c_app_gets_the_length_and_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let app = free_port();
    let Some(cmd) = nginx(dir.path(), app, true) else {
        return;
    };
    if !crate::support::require_tool("curl") {
        return;
    }
    std::fs::write(dir.path().join("file.txt"), "x".repeat(1000)).unwrap();
    let listen = free_port();
    let mut t = new_user_defaults(&format!("h2c:127.0.0.1:{listen}=127.0.0.1:{app}"), cmd);
    t.wait_event("ready");
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "--max-time", "20"])
            .args(extra)
            .arg(format!("http://127.0.0.1:{listen}/file.txt"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (text, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (head, err) = curl(&["-I"]);
    assert!(head.starts_with("HTTP/2 200"), "{head}{err}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{head}{err}"
    );
    let (got, err) = curl(&["-o", "/dev/null", "-w", "%{http_code} %{size_download}"]);
    assert_eq!(got, "200 1000", "{err}");
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// tandem as a new user starts it: `--restart always --proxy SPEC -- APP...`, no probe, with
/// the admin port on a free port; its stdout (the app's records and the access log) is read
/// from the start, or the pipe fills.
fn new_user_defaults(proxy: &str, app_cmd: Vec<String>) -> Tandem {
    let mut args: Vec<String> = [
        "--restart",
        "always",
        "--set",
        "admin.listen=127.0.0.1:0",
        "--proxy",
        proxy,
        "--",
    ]
    .map(String::from)
    .to_vec();
    args.extend(app_cmd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut t = Tandem::spawn(&args);
    t.collect_stdout();
    t
}

/// tandem with the defaults a new user gets (`--restart always`, one `--proxy`, no probe) in
/// front of `app_cmd` listening on `app`; four clients send 1,600 GETs of `path` on fresh
/// connections and the app is SIGKILLed once mid-load: no GET may fail.
fn kill_under_load(app_cmd: Vec<String>, app: u16, path: &str) {
    let listen = free_port();
    let t = new_user_defaults(&format!("127.0.0.1:{listen}=127.0.0.1:{app}"), app_cmd);
    let proxy = format!("127.0.0.1:{listen}");
    let admin = t.admin_addr();
    let first_pid = t.app_pid();
    t.wait_event("ready");

    const CLIENTS: u64 = 4;
    const PER_CLIENT: u64 = 400;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let cut = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (proxy, done, failed, cut, path) = (
                proxy.clone(),
                done.clone(),
                failed.clone(),
                cut.clone(),
                path.to_string(),
            );
            thread::spawn(move || {
                for _ in 0..PER_CLIENT {
                    match get_once(&proxy, &path) {
                        Got::Status(200) => {}
                        Got::Status(s) => failed.lock().unwrap().push(format!("status {s}")),
                        Got::Cut => {
                            cut.fetch_add(1, Ordering::Relaxed);
                        }
                        Got::Nothing(e) => failed.lock().unwrap().push(e),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Kill the app once the load is well under way.
    let deadline = Instant::now() + PATIENCE;
    while done.load(Ordering::Relaxed) < 300 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    kill(Pid::from_raw(first_pid), Signal::SIGKILL).unwrap();
    for c in clients {
        c.join().unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert_eq!(
        done.load(Ordering::Relaxed),
        CLIENTS * PER_CLIENT,
        "not every request was made"
    );
    assert!(
        failed.is_empty(),
        "{} of {} GETs failed across the app's SIGKILL ({} cut mid-response): {:?}",
        failed.len(),
        CLIENTS * PER_CLIENT,
        cut.load(Ordering::Relaxed),
        &failed[..failed.len().min(10)]
    );
    // The kill really happened and the app came back.
    t.wait_event_nth("started", 1);
    assert_eq!(scrape(&admin, "tandem_app_exits_total{code=\"137\"}"), 1.0);
}

/// redis-server behind a raw TCP listener, no probe: a client opens fresh connections and
/// sends PING, before and after redis is SIGKILLed; every connection gets its PONG (one opened
/// while redis is down is held until it listens again, never refused or cut).
#[test]
fn redis_behind_a_tcp_listener_answers_every_new_connection_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, app) = (free_port(), free_port());
    let Some(cmd) = redis(dir.path(), app) else {
        return;
    };
    let t = new_user_defaults(&format!("tcp:127.0.0.1:{listen}=127.0.0.1:{app}"), cmd);
    let first_pid = t.app_pid();
    t.wait_event("ready");
    let proxy = format!("127.0.0.1:{listen}");
    let ping = |i: usize| -> Result<(), String> {
        let mut s = std::net::TcpStream::connect(&proxy).map_err(|e| format!("{i}: {e}"))?;
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(b"PING\r\n").map_err(|e| format!("{i}: {e}"))?;
        let mut got = [0u8; 7];
        s.read_exact(&mut got).map_err(|e| format!("{i}: {e}"))?;
        (&got == b"+PONG\r\n")
            .then_some(())
            .ok_or_else(|| format!("{i}: {:?}", String::from_utf8_lossy(&got)))
    };
    let mut failed = Vec::new();
    for i in 0..600 {
        if i == 200 {
            // Connections opened from tandem's notice of the exit on find redis down (the
            // restart back-off, then its start-up): held, not refused. (One racing the kill
            // itself may have reached the dying redis, as any client of a crashing server.)
            kill(Pid::from_raw(first_pid), Signal::SIGKILL).unwrap();
            t.wait_event("exited");
        }
        if let Err(e) = ping(i) {
            failed.push(e);
        }
    }
    assert!(failed.is_empty(), "connections without PONG: {failed:?}");
    let second = t.wait_event_nth("started", 1);
    assert_ne!(second["pid"].as_i64(), Some(i64::from(first_pid)));
}

/// An `http.server` app with one route that kills the process: the shape of a "query of
/// death" (a request that crashes the app every time it is handled).
const CRASHY: &str = r#"
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/crash"):
            os._exit(3)
        body = b"fine\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

fn crashy(extra: &[&str]) -> (Tandem, String, String) {
    let (listen, app) = (free_port(), free_port());
    let mut args = vec![
        "--restart".to_string(),
        "always".into(),
        "--set".into(),
        "admin.listen=127.0.0.1:0".into(),
        "--set".into(),
        "restart.initial_delay=20ms".into(),
        "--proxy".into(),
        format!("127.0.0.1:{listen}=127.0.0.1:{app}"),
    ];
    args.extend(extra.iter().map(|s| s.replace("{app}", &app.to_string())));
    args.extend([
        "--".into(),
        "python3".into(),
        "-c".into(),
        CRASHY.into(),
        app.to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut t = Tandem::spawn(&args);
    t.collect_stdout();
    let admin = t.admin_addr();
    t.wait_event("ready");
    (t, format!("127.0.0.1:{listen}"), admin)
}

/// The issue's second reproduction: one `GET /crash` made the app exit three times (retried
/// as an idempotent GET after each crash). Now: replayed once, then a 502 naming the cause,
/// counted, and logged with its method, path and request id; the app exited twice. With or
/// without a readiness probe.
#[test]
fn one_crashing_request_makes_the_app_exit_at_most_twice() {
    for extra in [
        &[][..],
        &[
            "--set",
            "health.readiness.kind=http",
            "--set",
            "health.readiness.target=http://127.0.0.1:{app}/",
            "--set",
            "health.readiness.interval=50ms",
        ][..],
    ] {
        let (t, proxy, admin) = crashy(extra);
        let got = crate::support::http(&proxy, "GET", "/crash", b"", &[("x-request-id", "qod-1")])
            .unwrap();
        assert_eq!(got.0, 502, "{extra:?}: {}", got.1);
        let body = String::from_utf8_lossy(&got.2);
        assert!(body.contains("poison_request"), "{body}");
        let ev = t.wait_event("poison_request");
        assert_eq!(ev["method"], "GET");
        assert_eq!(ev["path"], "/crash");
        assert_eq!(ev["request_id"], "qod-1");
        // The app is back and serves the next request.
        let ok = crate::support::http(&proxy, "GET", "/", b"", &[]).unwrap();
        assert_eq!(ok.0, 200, "{extra:?}");
        assert_eq!(
            scrape(&admin, "tandem_app_exits_total{code=\"3\"}"),
            2.0,
            "{extra:?}: the app must exit at most twice"
        );
        assert_eq!(
            scrape(&admin, "tandem_proxy_poison_requests_total"),
            1.0,
            "{extra:?}"
        );
        // The exit log says which request was in flight.
        let exited = t.wait_event("exited");
        assert!(
            exited["in_flight_requests"]
                .as_str()
                .unwrap()
                .contains("qod-1 GET /crash"),
            "{exited}"
        );
    }
}

/// `max_replays_after_app_exit = 0`: the request that was in flight at the crash is never
/// sent again; the app exits once.
#[test]
fn replay_after_an_app_exit_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, app) = (free_port(), free_port());
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"
[restart]
policy = "always"
initial_delay = "20ms"
[[proxy.listeners]]
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{app}"
retry = {{ max_replays_after_app_exit = 0 }}
"#
        ),
    )
    .unwrap();
    let t = Tandem::spawn(&[
        "--config",
        cfg.to_str().unwrap(),
        "--",
        "python3",
        "-c",
        CRASHY,
        &app.to_string(),
    ]);
    let admin = t.admin_addr();
    t.wait_event("ready");
    let proxy = format!("127.0.0.1:{listen}");
    let got = crate::support::http(&proxy, "GET", "/crash", b"", &[]).unwrap();
    assert_eq!(got.0, 502);
    t.wait_event("poison_request");
    t.wait_event_nth("started", 1);
    assert_eq!(scrape(&admin, "tandem_app_exits_total{code=\"3\"}"), 1.0);
}

/// With no readiness probe and a proxy listener, the app is ready once its port accepts a
/// connection, not at spawn: an app that takes a second to listen gets no request before.
#[test]
fn implicit_readiness_waits_for_the_app_to_listen() {
    let (listen, app) = (free_port(), free_port());
    let script = format!(
        "import time, http.server, sys\ntime.sleep(1.0)\nhttp.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port={app}, bind='127.0.0.1')"
    );
    let t = Tandem::spawn(&[
        "--set",
        "admin.listen=127.0.0.1:0",
        "--proxy",
        &format!("127.0.0.1:{listen}=127.0.0.1:{app}"),
        "--",
        "python3",
        "-c",
        &script,
    ]);
    let admin = t.admin_addr();
    let started = t.wait_event("started");
    // Not ready while the app sleeps: /readyz says so.
    let (code, _) = tandem::admin_client::get(&admin, "/readyz").unwrap();
    assert_eq!(code, 503, "ready before the app listens");
    // A request sent now is held, not failed, and served once the app listens.
    let got = crate::support::http(&format!("127.0.0.1:{listen}"), "GET", "/", b"", &[]).unwrap();
    assert_eq!(got.0, 200, "{}", got.1);
    let ready = t.wait_event("ready");
    assert!(
        crate::support::seen(&ready) >= crate::support::seen(&started) + Duration::from_millis(900),
        "ready before the app could listen: started {started}, ready {ready}"
    );
}

/// `--set` and `TANDEM_*` reach every key of the schema, optional tables included; `tandem
/// check` shows the implicit probe and lists the optional tables it did not get.
#[test]
fn flags_and_variables_set_optional_tables_and_check_lists_them() {
    let (code, out, err) = run(&[
        "check",
        "--set",
        "health.readiness.kind=tcp",
        "--set",
        "health.readiness.target=127.0.0.1:3000",
        "--set",
        "health.readiness.interval=250ms",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[health.readiness]"), "{out}");
    assert!(
        out.contains("kind = \"tcp\"  # flag --set health.readiness.kind"),
        "{out}"
    );
    assert!(out.contains("interval = \"250ms\""), "{out}");
    // Not set: listed, commented out, so a user can find them.
    assert!(out.contains("# [health.liveness]"), "{out}");
    assert!(out.contains("# [logs.sinks.file]"), "{out}");
    assert!(!out.contains("# [health.readiness]\n"), "{out}");

    // The same from the environment.
    let out = std::process::Command::new(crate::support::bin())
        .args(["check"])
        .env("TANDEM_HEALTH_LIVENESS_KIND", "exec")
        .env("TANDEM_HEALTH_LIVENESS_TARGET", "true")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("kind = \"exec\"  # env TANDEM_HEALTH_LIVENESS_KIND"),
        "{text}"
    );

    // Half a table: the error names the table, what is missing and who began it.
    let (code, _, err) = run(&["check", "--set", "health.readiness.kind=tcp"]);
    assert_eq!(code, 64);
    assert!(
        err.contains("[health.readiness]") && err.contains("target") && err.contains("--set"),
        "{err}"
    );
    // A wrong type in an optional table is refused, naming the key.
    let (code, _, err) = run(&["check", "--set", "health.readiness.failure_threshold=many"]);
    assert_eq!(code, 64);
    assert!(err.contains("health.readiness.failure_threshold"), "{err}");

    // With a proxy and no readiness probe, check shows the implicit one.
    let (code, out, err) = run(&["check", "--proxy", "127.0.0.1:18080=127.0.0.1:3000"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("implicit probe: tcp 127.0.0.1:3000"), "{out}");
}

/// A probe set only by flags runs: the app is ready when the probe passes.
#[test]
fn a_probe_set_by_flags_gates_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let app = free_port();
    let mut args: Vec<String> = [
        "--set",
        "admin.listen=127.0.0.1:0",
        "--set",
        "health.readiness.kind=tcp",
        "--set",
        &format!("health.readiness.target=127.0.0.1:{app}"),
        "--set",
        "health.readiness.interval=50ms",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let Some(cmd) = python_http_server(dir.path(), app) else {
        return;
    };
    args.extend(cmd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut t = Tandem::spawn(&args);
    t.wait_event("ready");
    t.signal(Signal::SIGTERM);
    // Python dies of SIGTERM (no handler): 143.
    assert_eq!(t.wait_code(), 143);
}
