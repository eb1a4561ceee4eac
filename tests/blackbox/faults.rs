//! The fault matrix (docs/RELIABILITY.md): what tandem does when the app, tandem itself or
//! the world misbehaves. Apps nobody here wrote where an app is involved: Python's
//! `http.server`, the shell, coreutils.
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::apps::python_http_server;
use crate::support::{
    eventually, free_port, group_members, http, proc_state, run, wait_file, Tandem,
};

fn admin(t: &Tandem) -> String {
    t.admin_addr()
}

/// A hung app (Python's http.server stopped with SIGSTOP: its port still accepts, nothing
/// answers) fails its HTTP liveness probe and is stopped (SIGKILL after `stop_timeout`, since a
/// stopped process cannot act on SIGTERM) and started again.
#[test]
fn a_hung_app_is_restarted_by_its_liveness_probe() {
    let dir = tempfile::tempdir().unwrap();
    let app = free_port();
    let mut args: Vec<String> = [
        "--restart",
        "always",
        "--set",
        "admin.listen=127.0.0.1:0",
        "--set",
        "app.stop_timeout=500ms",
        "--set",
        "health.liveness.kind=http",
        "--set",
        &format!("health.liveness.target=http://127.0.0.1:{app}/"),
        "--set",
        "health.liveness.interval=100ms",
        "--set",
        "health.liveness.timeout=200ms",
        // Time for python to listen (on a loaded machine) before the first check.
        "--set",
        "health.liveness.initial_delay=2s",
        "--",
    ]
    .map(String::from)
    .to_vec();
    args.extend(python_http_server(dir.path(), app).expect("python3 runs the app"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut t = Tandem::spawn(&args);
    t.collect_stdout();
    let first = t.app_pid();
    // Passing first, so the failure is the hang and not a slow start.
    eventually("the app answers", || {
        http(&format!("127.0.0.1:{app}"), "GET", "/", b"", &[]).is_ok_and(|r| r.0 == 200)
    });
    kill(Pid::from_raw(first), Signal::SIGSTOP).unwrap();
    let failed = t.wait_event("liveness_failed");
    assert_eq!(failed["pid"].as_i64(), Some(i64::from(first)), "{failed}");
    t.wait_event("killed");
    let second = t.wait_event_nth("started", 1)["pid"].as_i64().unwrap();
    assert_ne!(second, i64::from(first));
    eventually("the new instance answers", || {
        http(&format!("127.0.0.1:{app}"), "GET", "/", b"", &[]).is_ok_and(|r| r.0 == 200)
    });
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// An app that never listens never becomes ready: /readyz stays 503, a request waits its
/// `hold_timeout` and gets 503 with Retry-After, and tandem keeps running.
#[test]
fn an_app_that_never_listens_is_never_ready_and_requests_get_503_after_the_hold() {
    let (listen, app) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[proxy.listeners]]\nlisten = \"127.0.0.1:{listen}\"\nupstream = \"127.0.0.1:{app}\"\nhold_timeout = \"500ms\"\n"
        ),
    )
    .unwrap();
    let mut t = Tandem::spawn(&["--config", cfg.to_str().unwrap(), "--", "sleep", "600"]);
    t.collect_stdout();
    let admin = admin(&t);
    t.wait_event("started");
    let got = http(&format!("127.0.0.1:{listen}"), "GET", "/", b"", &[]).unwrap();
    assert_eq!(got.0, 503, "{}", got.1);
    assert!(
        got.1.to_ascii_lowercase().contains("retry-after"),
        "{}",
        got.1
    );
    assert_eq!(tandem::admin_client::get(&admin, "/readyz").unwrap().0, 503);
    assert!(!t.event_names().contains(&"ready".to_string()));
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 143);
}

/// An app that closes its stdout early keeps running and keeps being heard on stderr; its
/// exit is still reported with its code.
#[test]
fn an_app_that_closes_stdout_early_is_still_supervised() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "exec 1>&-; echo after-close >&2; touch {}/closed; sleep 0.3; echo still-here >&2; exit 7",
        dir.path().display()
    );
    let mut t = Tandem::spawn(&["--", "sh", "-c", &script]);
    t.collect_stdout();
    wait_file(&dir.path().join("closed"));
    assert_eq!(t.wait_code(), 7);
    let msgs: Vec<String> = t
        .records()
        .iter()
        .filter_map(|r| r["msg"].as_str().map(String::from))
        .collect();
    assert!(msgs.contains(&"after-close".to_string()), "{msgs:?}");
    assert!(msgs.contains(&"still-here".to_string()), "{msgs:?}");
}

/// An app that daemonizes (double fork) and exits: its main process's code is tandem's, and
/// the daemon left in its group is killed (`app.kill_group_on_exit`), not orphaned.
#[test]
fn an_app_that_daemonizes_and_exits_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "(sh -c 'echo $$ > {d}/daemon; exec sleep 600' &) ; while [ ! -s {d}/daemon ]; do sleep 0.01; done; exit 0",
        d = dir.path().display()
    );
    let mut t = Tandem::spawn(&["--", "sh", "-c", &script]);
    let pgid = t.app_pid();
    assert_eq!(t.wait_code(), 0);
    let daemon: i32 = std::fs::read_to_string(dir.path().join("daemon"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("the daemon is gone", || {
        proc_state(daemon).is_none_or(|s| s == 'Z') && group_members(pgid).is_empty()
    });
}

/// The app forks 10,000 short-lived children (a shell loop of `true &`): all are reaped,
/// none is left a zombie, and the app's own exit code comes through.
#[test]
fn ten_thousand_short_lived_grandchildren_are_all_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "i=0; while [ $i -lt 10000 ]; do ( true & ); i=$((i+1)); done; touch {}/done; exit 5",
        dir.path().display()
    );
    let mut t = Tandem::spawn(&["--", "sh", "-c", &script]);
    let tandem_pid = t.pid();
    assert_eq!(t.wait_code(), 5);
    wait_file(&dir.path().join("done"));
    let reaped = t.wait_event("exit")["orphans_reaped"].as_u64().unwrap();
    assert!(reaped >= 9_000, "reaped only {reaped} of 10,000 orphans");
    assert!(crate::support::children(tandem_pid).is_empty());
}

/// The guard process (which kills the app's group if tandem is SIGKILLed) is itself killed:
/// tandem notices, logs it, starts a new guard, and the protection holds: SIGKILL tandem
/// afterwards and the app's whole group is gone.
#[test]
fn a_killed_guard_is_replaced_and_still_protects_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "cd {}; sleep 1000 & sleep 1000 & touch ready; wait",
        dir.path().display()
    );
    let mut t = Tandem::spawn(&["--", "sh", "-c", &script]);
    wait_file(&dir.path().join("ready"));
    let pgid = t.app_pid();
    let guard = crate::support::children(t.pid())
        .into_iter()
        .find(|p| *p != pgid)
        .expect("tandem's guard child");
    kill(Pid::from_raw(guard), Signal::SIGKILL).unwrap();
    let lost = t.wait_event("guard_lost");
    assert_eq!(lost["pid"].as_i64(), Some(i64::from(guard)));
    let restored = t.wait_event("guard_restored");
    let new_guard = restored["pid"].as_i64().unwrap() as i32;
    assert_ne!(new_guard, guard);
    assert!(proc_state(new_guard).is_some_and(|s| s != 'Z'));
    t.signal(Signal::SIGKILL);
    t.wait();
    eventually("the app's process group is gone", || {
        group_members(pgid).is_empty()
    });
}

/// A proxy port already taken: a clear error naming the listener and the address, exit 70,
/// and the app is never started.
#[test]
fn a_taken_proxy_port_is_a_clear_error_and_the_app_never_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let (code, _, err) = run(&[
        "--set",
        "admin.listen=127.0.0.1:0",
        "--proxy",
        &format!("{addr}=127.0.0.1:1"),
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(code, 70, "{err}");
    assert!(err.contains("bind_failed"), "{err}");
    assert!(
        err.contains(&addr.to_string()),
        "the error must name {addr}: {err}"
    );
    assert!(!marker.exists(), "the app was started");
    drop(taken);
}

/// tandem SIGTERMed twice in a row while the app ignores SIGTERM: the second one kills the
/// app's group at once (no stop_timeout wait) and tandem exits 137, with its exit event.
#[test]
fn sigterm_twice_kills_at_once_and_still_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "trap '' TERM; touch {}/ready; sleep 1000 & wait",
        dir.path().display()
    );
    let mut t = Tandem::spawn(&["--stop-timeout", "10m", "--", "sh", "-c", &script]);
    wait_file(&dir.path().join("ready"));
    let pgid = t.app_pid();
    t.signal(Signal::SIGTERM);
    t.wait_event("stop_signal_sent");
    std::thread::sleep(Duration::from_millis(300));
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 137);
    t.wait_event("exit");
    eventually("the app's process group is gone", || {
        group_members(pgid).is_empty()
    });
}

/// The file sink's disk fills up (a 1 MiB tmpfs the test mounts): write errors are counted on
/// /metrics and reported, the app is not held up and exits as it would, and once space is
/// back the sink writes again. Needs root (to mount); skipped with a message otherwise.
#[test]
fn a_full_disk_for_the_file_sink_is_counted_and_writing_resumes_when_space_returns() {
    if !crate::support::can_run(
        nix::unistd::geteuid().is_root(),
        "mounting a tmpfs needs root",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tandem-test",
            mnt.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    // Leave almost nothing free.
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![b'x'; 1024 * 1024]);
    let go = dir.path().join("go");
    let script = format!(
        "i=0; while [ $i -lt 2000 ]; do echo \"phase-one line $i with some padding to fill the disk quickly\"; i=$((i+1)); done; \
         touch {d}/one-done; while [ ! -e {go} ]; do sleep 0.05; done; echo phase-two-line; sleep 1; exit 0",
        d = dir.path().display(),
        go = go.display()
    );
    let mut t = Tandem::spawn(&[
        "--set",
        "admin.listen=127.0.0.1:0",
        "--set",
        &format!("logs.sinks.file.path={}", mnt.join("app.jsonl").display()),
        "--set",
        "logs.sinks.file.max_size=0",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    t.collect_stdout();
    let admin = admin(&t);
    // The app is not held up by the full disk.
    wait_file(&dir.path().join("one-done"));
    eventually("write errors are counted", || {
        crate::otel::scrape(&admin, "tandem_log_sink_errors_total{sink=\"file\"}") >= 1.0
    });
    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    std::fs::write(&go, "").unwrap();
    assert_eq!(t.wait_code(), 0);
    let written = std::fs::read_to_string(mnt.join("app.jsonl")).unwrap_or_default();
    assert!(
        written.contains("phase-two-line"),
        "the sink did not resume after space returned; file has {} bytes",
        written.len()
    );
}

/// libfaketime, which makes a process see a wall clock the test sets (Debian's `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The wall clock steps ten years back, then ten years forward (an NTP step, a VM resumed
/// from a snapshot), under tandem, through libfaketime with the monotonic clock left real:
/// tandem's timers (restart back-off, probe intervals and timeouts, proxy timeouts) run on
/// the monotonic clock, so a killed app is restarted after its short back-off, the liveness
/// probe does not fire falsely, and proxied requests keep succeeding; only the records'
/// timestamps follow the wall clock.
#[test]
fn wall_clock_jumps_do_not_break_timers() {
    if !crate::support::can_run(
        std::path::Path::new(LIBFAKETIME).exists(),
        format_args!("{LIBFAKETIME} is not installed (Debian's faketime)"),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "+0d\n").unwrap();
    let (listen, app) = (free_port(), free_port());
    let mut t = Tandem::spawn_cmd(
        std::process::Command::new(crate::support::bin())
            .args([
                "--restart",
                "always",
                "--set",
                "restart.initial_delay=200ms",
                "--set",
                "admin.listen=127.0.0.1:0",
                "--set",
                "health.liveness.kind=tcp",
                "--set",
                &format!("health.liveness.target=127.0.0.1:{app}"),
                "--set",
                "health.liveness.interval=100ms",
                "--set",
                "health.liveness.timeout=500ms",
                // Time for python to listen before the first check (after each start).
                "--set",
                "health.liveness.initial_delay=1s",
                "--proxy",
                &format!("127.0.0.1:{listen}=127.0.0.1:{app}"),
                "--",
            ])
            .args(python_http_server(dir.path(), app).expect("python3 runs the app"))
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    );
    t.collect_stdout();
    let proxy = format!("127.0.0.1:{listen}");
    let admin = admin(&t);
    t.wait_event("ready");
    let mut restarts = 0;
    for (step, year) in [("-3650d", "2016-"), ("+3650d", "2036-")] {
        std::fs::write(&clock, format!("{step}\n")).unwrap();
        // The jump is in effect once a fresh record carries the new wall-clock time.
        eventually("records carry the jumped wall clock", || {
            let _ = http(&proxy, "GET", "/", b"", &[]);
            std::thread::sleep(Duration::from_millis(200));
            let records = t.records();
            let last = records
                .last()
                .and_then(|r| r["time"].as_str())
                .unwrap_or("");
            last.starts_with(year)
        });
        for i in 0..50 {
            let (status, _, _) = http(&proxy, "GET", "/", b"", &[]).unwrap();
            assert_eq!(status, 200, "request {i} after the {step} jump");
        }
        let pid = t.wait_event_nth("started", restarts)["pid"]
            .as_i64()
            .unwrap() as i32;
        if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
            panic!(
                "app {pid} gone before the kill ({e}) after the {step} jump: {:#?}",
                t.events()
            );
        }
        restarts += 1;
        let again = t.wait_event_nth("started", restarts)["pid"]
            .as_i64()
            .unwrap();
        assert_ne!(again, i64::from(pid), "restarted after the {step} jump");
        eventually("ready again", || {
            crate::support::http(&admin, "GET", "/readyz", b"", &[]).is_ok_and(|r| r.0 == 200)
        });
        // The probe's initial delay and many periods pass: no false liveness failure, no
        // extra restart.
        std::thread::sleep(Duration::from_secs(3));
        let names = t.event_names();
        assert!(
            !names.iter().any(|n| n == "liveness_failed"),
            "a false liveness failure after the {step} jump: {names:?}"
        );
        assert_eq!(
            names.iter().filter(|n| *n == "started").count(),
            restarts + 1,
            "{names:?}"
        );
    }
    t.signal(Signal::SIGTERM);
    // http.server does not handle SIGTERM: it dies of it, and tandem exits 128 + 15.
    assert_eq!(t.wait_code(), 143);
}

/// An app that dies after writing a response's head and before its body (a crash, or a
/// restart's SIGKILL between two writes): the proxy holds a replayable request's answer until
/// its body's first bytes, so the GET is sent again to the restarted app and the client gets
/// one whole answer. A POST is not held nor sent again: it reached the app once. The app is a
/// dozen lines of Python's `http.server`, head and body in separate writes.
#[test]
fn an_app_that_dies_between_head_and_body_has_the_get_replayed_and_the_post_not() {
    if !crate::support::require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (listen, app) = (free_port(), free_port());
    let script = dir.path().join("app.py");
    std::fs::write(
        &script,
        r#"
import http.server, os, sys
port, crash, seen = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        with open(seen, "a") as f:
            f.write(self.command + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()  # the head, in its own write
        if os.path.exists(crash):
            os.remove(crash)
            os._exit(1)  # the body never comes
        self.wfile.write(b"whole\n")
    do_GET = answer
    do_POST = answer
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#,
    )
    .unwrap();
    let (crash, seen) = (dir.path().join("crash"), dir.path().join("seen"));
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[app]
command = ["python3", {script:?}, "{app}", {crash:?}, {seen:?}]
[admin]
listen = "127.0.0.1:0"
[restart]
policy = "always"
initial_delay = "50ms"
[[proxy.listeners]]
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{app}"
"#,
            script = script.display().to_string(),
            crash = crash.display().to_string(),
            seen = seen.display().to_string(),
        ),
    )
    .unwrap();
    let mut t = Tandem::spawn(&["--config", cfg.to_str().unwrap()]);
    t.collect_stdout();
    t.wait_event("ready");
    let proxy = format!("127.0.0.1:{listen}");
    // A GET: the first instance sends the head and dies; the second answers it whole.
    std::fs::write(&crash, "").unwrap();
    let (status, head, body) = http(&proxy, "GET", "/", b"", &[]).unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"whole\n"[..]), "{head}");
    assert!(!crash.exists());
    t.wait_event_nth("started", 1);
    let lines = |m: &str| {
        std::fs::read_to_string(&seen)
            .unwrap()
            .lines()
            .filter(|l| *l == m)
            .count()
    };
    assert_eq!(
        lines("GET"),
        2,
        "sent to the dying app, then to the new one"
    );
    // A POST: held by nobody, sent once; the client sees the answer cut short.
    std::fs::write(&crash, "").unwrap();
    let got = http(&proxy, "POST", "/", b"order #1", &[]);
    assert!(
        !matches!(&got, Ok((200, _, b)) if b.as_slice() == b"whole\n"),
        "{got:?}"
    );
    t.wait_event_nth("started", 2);
    eventually("the new instance answers", || {
        http(&proxy, "GET", "/", b"", &[]).is_ok_and(|r| r.0 == 200)
    });
    assert_eq!(lines("POST"), 1, "the POST reached the app once");
    t.signal(Signal::SIGTERM);
    t.wait();
}
