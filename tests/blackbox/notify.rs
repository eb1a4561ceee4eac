//! systemd's notify protocol on a real unix datagram socket the test owns: READY=1 only once
//! the readiness probe passes, WATCHDOG=1 while healthy and none while the app hangs,
//! STOPPING=1 on SIGTERM.
use std::{
    os::unix::net::UnixDatagram,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use nix::sys::signal::Signal;

use crate::support::{bin, eventually, free_port, http, legacy_app, seen, since_epoch, Tandem};

type Messages = Arc<Mutex<Vec<(Duration, String)>>>;

fn listen(sock: &std::path::Path, stop: Arc<AtomicBool>) -> Messages {
    let rx = UnixDatagram::bind(sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let msgs: Messages = Arc::default();
    let out = msgs.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = rx.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines() {
                    out.lock().unwrap().push((since_epoch(), line.to_string()));
                }
            }
        }
    });
    msgs
}

fn count(msgs: &Messages, what: &str) -> usize {
    msgs.lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m == what)
        .count()
}

#[test]
fn notify_sequence_follows_readiness_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let msgs = listen(&sock, stop.clone());
    let port = free_port();
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[app]
command = ["{app}", "--port", "{port}", "--startup-delay", "1000"]
stop_timeout = "1500ms"
[admin]
listen = ""
[restart]
policy = "on-failure"
initial_delay = "50ms"
[health.readiness]
kind = "http"
target = "http://127.0.0.1:{port}/health"
interval = "100ms"
[health.liveness]
kind = "http"
target = "http://127.0.0.1:{port}/health"
interval = "200ms"
timeout = "200ms"
failure_threshold = 2
initial_delay = "1500ms"
"#,
            app = legacy_app().display()
        ),
    )
    .unwrap();
    let mut t = Tandem::spawn_cmd(
        Command::new(bin())
            .args(["--config", cfg.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &sock)
            .env("WATCHDOG_USEC", "300000"),
    );
    t.collect_stdout();
    let app = format!("127.0.0.1:{port}");

    // READY=1 arrives, and only once the app really answers (it listens after 1 s).
    eventually("READY=1", || count(&msgs, "READY=1") == 1);
    assert_eq!(
        http(&app, "GET", "/health", b"", &[]).unwrap().0,
        200,
        "READY=1 before the app was ready"
    );
    let ready_at = msgs
        .lock()
        .unwrap()
        .iter()
        .find(|(_, m)| m == "READY=1")
        .unwrap()
        .0;
    assert!(
        !msgs
            .lock()
            .unwrap()
            .iter()
            .any(|(at, m)| m == "WATCHDOG=1" && *at < ready_at),
        "watchdog pings before READY=1"
    );
    assert!(msgs
        .lock()
        .unwrap()
        .iter()
        .any(|(_, m)| m == "STATUS=starting"));

    // Healthy: pings every WATCHDOG_USEC/2.
    eventually("3 watchdog pings", || count(&msgs, "WATCHDOG=1") >= 3);

    // The app hangs: liveness fails, pings stop; tandem stops the hung app (it ignores
    // SIGTERM, so SIGKILL after stop_timeout) and starts a new one.
    thread::spawn(move || {
        let _ = http(&app, "GET", "/hang", b"", &[]);
    });
    let failed = seen(&t.wait_event("liveness_failed"));
    let exited = seen(&t.wait_event_after("exited", failed));
    assert!(
        exited - failed >= Duration::from_millis(1200),
        "the hang window is too short to tell"
    );
    let margin = Duration::from_millis(150);
    let pings_while_hung: Vec<_> = msgs
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, m)| m == "WATCHDOG=1" && *at > failed + margin && *at + margin < exited)
        .map(|(at, _)| *at)
        .collect();
    assert!(
        pings_while_hung.is_empty(),
        "watchdog pinged while the app hung: {pings_while_hung:?} (hung {failed:?}..{exited:?})"
    );
    assert_eq!(
        t.wait_event_after("killed", failed)["reason"],
        "stop_timeout"
    );
    t.wait_event_nth("started", 1);
    let pings_before = count(&msgs, "WATCHDOG=1");
    eventually("pings resume after the restart", || {
        count(&msgs, "WATCHDOG=1") > pings_before
    });

    t.signal(Signal::SIGTERM);
    t.wait();
    eventually("STOPPING=1", || count(&msgs, "STOPPING=1") == 1);
    assert_eq!(
        count(&msgs, "READY=1"),
        1,
        "READY=1 is sent once per tandem"
    );
    stop.store(true, Ordering::Relaxed);
}
