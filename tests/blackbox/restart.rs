//! Restart policy, growing backoff, start limit.
use nix::sys::signal::Signal;

use crate::support::{run, Tandem};

#[test]
fn on_failure_restarts_with_growing_delays_until_the_start_limit() {
    let mut t = Tandem::spawn(&[
        "--restart",
        "on-failure",
        "--set",
        "restart.initial_delay=20ms",
        "--set",
        "restart.start_limit_burst=5",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(t.wait_code(), 75, "start limit code");
    let events = t.events();
    let starts = events.iter().filter(|e| e["event"] == "started").count();
    assert_eq!(starts, 5);
    let delays: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "restarting")
        .map(|e| e["delay_ms"].as_u64().unwrap())
        .collect();
    // One delay per exit: the fifth restart is refused when it comes due.
    assert_eq!(delays.len(), 5, "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "delays must grow: {delays:?}"
    );
    assert!(events.iter().any(|e| e["event"] == "start_limit_hit"));
}

#[test]
fn never_does_not_restart() {
    let mut t = Tandem::spawn(&["--restart", "never", "--", "sh", "-c", "exit 3"]);
    assert_eq!(t.wait_code(), 3);
    assert_eq!(
        t.event_names().iter().filter(|n| *n == "started").count(),
        1
    );
    assert!(!t.event_names().contains(&"restarting".to_string()));
}

#[test]
fn on_failure_does_not_restart_a_clean_exit_but_always_does() {
    let (code, _, err) = run(&["--restart", "on-failure", "--", "true"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("\"event\":\"started\"").count(), 1, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let script = format!("echo run >> {}", count.display());
    let (code, _, err) = run(&[
        "--restart",
        "always",
        "--set",
        "restart.initial_delay=10ms",
        "--set",
        "restart.start_limit_burst=3",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code, 75, "{err}");
    assert_eq!(std::fs::read_to_string(count).unwrap().lines().count(), 3);
}

#[test]
fn stop_during_backoff_exits_with_the_last_code() {
    let mut t = Tandem::spawn(&[
        "--restart",
        "on-failure",
        "--set",
        "restart.initial_delay=10m",
        "--set",
        "restart.max_delay=10m",
        "--",
        "sh",
        "-c",
        "exit 5",
    ]);
    t.wait_event("restarting");
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 5);
}

/// `tandem restart` (issue 16): the config read again and its app section applied, and the
/// rolling mode (a second app process on a fresh port, the old one drained, then stopped).
mod asked {
    use std::{
        path::Path,
        process::{Command, Stdio},
        sync::{
            atomic::{AtomicBool, AtomicU64, Ordering},
            Arc, Mutex,
        },
        thread::JoinHandle,
    };

    use nix::sys::signal::Signal;
    use serde_json::Value;

    use crate::support::{
        bin, binary_copy, eventually, free_port, http, proc_state, require_tool, run, Tandem,
    };

    fn status(admin: &str) -> Value {
        let (code, _, b) = http(admin, "GET", "/status", b"", &[]).unwrap();
        assert_eq!(code, 200);
        serde_json::from_slice(&b).unwrap()
    }

    /// `tandem restart --admin ADMIN`: exit code, stdout, stderr.
    fn tandem_restart(admin: &str) -> (i32, String, String) {
        let out = Command::new(bin())
            .args(["restart", "--admin", admin])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The app's records (its stdout lines through tandem's log pipeline) from process `pid`.
    fn lines_of(t: &Tandem, pid: i64) -> Vec<String> {
        t.records()
            .iter()
            .filter(|r| r["pid"].as_i64() == Some(pid))
            .filter_map(|r| r["msg"].as_str().map(str::to_string))
            .collect()
    }

    /// Python's own `http.server` module, after a line saying what `WHO` it was given.
    fn who_config(path: &Path, site: &Path, app: u16, web: u16, who: &str) {
        std::fs::write(
            path,
            format!(
                r#"[app]
command = ["sh", "-c", "echo WHO=$WHO; exec python3 -m http.server --bind 127.0.0.1 --directory {site} {app}"]
stop_timeout = "5s"
[app.env]
WHO = "{who}"
[admin]
listen = "127.0.0.1:0"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:{web}"
upstream = "127.0.0.1:{app}"
"#,
                site = site.display()
            ),
        )
        .unwrap();
    }

    /// The app process behind the proxy's port `web` (its `/pid` answer) is `pid`.
    fn assert_served_by(web: u16, pid: i64) {
        let (code, _, b) = http(&format!("127.0.0.1:{web}"), "GET", "/pid", b"", &[]).unwrap();
        assert_eq!(
            (code, String::from_utf8_lossy(&b).into_owned()),
            (200, pid.to_string())
        );
    }

    #[test]
    fn restart_applies_the_changed_app_env_and_a_broken_config_refuses_it() {
        if !require_tool("python3") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir(&site).unwrap();
        std::fs::write(site.join("who.txt"), "here\n").unwrap();
        let cfg = dir.path().join("tandem.toml");
        let (app, web) = (free_port(), free_port());
        who_config(&cfg, &site, app, web, "one");
        let mut t = Tandem::spawn_cmd(Command::new(bin()).arg("--config").arg(&cfg));
        t.collect_stdout();
        let admin = t.admin_addr();
        t.wait_event("ready");
        let old = status(&admin)["app_pid"].as_i64().unwrap();
        eventually("the first app says WHO=one", || {
            lines_of(&t, old).contains(&"WHO=one".to_string())
        });

        who_config(&cfg, &site, app, web, "two");
        let (code, out, err) = tandem_restart(&admin);
        assert_eq!(code, 0, "{out} {err}");
        let reply: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["mode"], "stop-start", "{reply}");
        assert_eq!(reply["applied"], serde_json::json!(["app.env"]), "{reply}");
        let new = reply["pid"].as_i64().unwrap();
        assert_ne!(new, old, "a new app process");
        eventually("the new app says WHO=two", || {
            lines_of(&t, new).contains(&"WHO=two".to_string())
        });
        let st = status(&admin);
        assert_eq!(st["restarts"], 1, "{st}");
        assert_eq!(st["reload"]["trigger"], "restart", "{st}");
        assert_eq!(
            st["reload"]["applied"],
            serde_json::json!(["app.env"]),
            "{st}"
        );
        eventually("served by the new app", || {
            matches!(
                http(&format!("127.0.0.1:{web}"), "GET", "/who.txt", b"", &[]),
                Ok((200, _, _))
            )
        });

        // A broken file: refused with its file and line, the app keeps running.
        std::fs::write(&cfg, "[app]\nstop_timeout = \"soon\"\n").unwrap();
        let (code, out, err) = tandem_restart(&admin);
        assert_ne!(code, 0, "{out} {err}");
        let at = format!("{}:2", cfg.display());
        assert!(
            err.contains(&at) && err.contains("app.stop_timeout"),
            "{err}"
        );
        let st = status(&admin);
        assert_eq!(st["app_pid"].as_i64(), Some(new), "{st}");
        assert_eq!(st["restarts"], 1, "{st}");
        assert_eq!(st["reload"]["ok"], false, "{st}");
        assert_eq!(
            proc_state(new as i32).map(|s| s != 'Z'),
            Some(true),
            "still running"
        );
        assert_eq!(t.child.try_wait().unwrap(), None, "tandem still runs");

        t.signal(Signal::SIGTERM);
        t.wait();
    }

    /// A stdlib-only Python app: port from `PORT`, POSTs answered after 300 ms (echoing the
    /// body), GETs with its pid; prints when each request finished and when it gets SIGTERM.
    const SLOW_APP: &str = r#"
import os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def say(msg):
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):
        self.reply(str(os.getpid()).encode())
        say("request finished GET")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        time.sleep(0.3)
        self.reply(body)
        say("request finished POST")

server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)

def on_term(signum, frame):
    say("got SIGTERM")
    threading.Thread(target=server.shutdown).start()

signal.signal(signal.SIGTERM, on_term)
say("listening on " + os.environ["PORT"])
server.serve_forever()
"#;

    /// Client threads sending POSTs (`posts` of them) and GETs until `stop`.
    struct Load {
        ok: Arc<AtomicU64>,
        failed: Arc<AtomicU64>,
        pids: Arc<Mutex<Vec<String>>>,
        threads: Vec<JoinHandle<Vec<String>>>,
    }

    fn load(addr: &str, posts: usize, gets: usize, stop: &Arc<AtomicBool>) -> Load {
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let pids: Arc<Mutex<Vec<String>>> = Arc::default();
        let threads = (0..posts + gets)
            .map(|i| {
                let post = i < posts;
                let (addr, stop, ok, failed, pids) = (
                    addr.to_string(),
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    pids.clone(),
                );
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    let mut n = 0u64;
                    // Bounded: a stuck loop ends the test rather than hanging it.
                    while !stop.load(Ordering::Relaxed) && n < 100_000 {
                        n += 1;
                        let body = format!("client {i} request {n}");
                        let res = if post {
                            http(&addr, "POST", "/work", body.as_bytes(), &[])
                        } else {
                            http(&addr, "GET", "/pid", b"", &[])
                        };
                        match res {
                            Ok((200, _, b)) if !post || b == body.as_bytes() => {
                                if !post {
                                    let pid = String::from_utf8_lossy(&b).into_owned();
                                    let mut p = pids.lock().unwrap();
                                    if !p.contains(&pid) {
                                        p.push(pid);
                                    }
                                }
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((code, head, b)) => {
                                errors.push(format!(
                                    "{code}: {head} {}",
                                    String::from_utf8_lossy(&b)
                                ));
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                errors.push(e.to_string());
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            ok,
            failed,
            pids,
            threads,
        }
    }

    fn rolling_config(dir: &Path, app: u16, web: u16) -> std::path::PathBuf {
        let script = dir.join("slow_app.py");
        std::fs::write(&script, SLOW_APP).unwrap();
        let command = format!("\"python3\", \"-u\", \"{}\"", script.display());
        write_rolling_config(dir, app, web, &command, "")
    }

    /// The rolling config with `command` (TOML array items) and `extra` keys for the listener.
    fn write_rolling_config(
        dir: &Path,
        app: u16,
        web: u16,
        command: &str,
        extra: &str,
    ) -> std::path::PathBuf {
        let cfg = dir.join("tandem.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"[app]
command = [{command}]
stop_timeout = "5s"
[restart]
mode = "rolling"
policy = "on-failure"
ready_timeout = "8s"
[admin]
listen = "127.0.0.1:0"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:{web}"
upstream = "127.0.0.1:{app}"
{extra}
"#
            ),
        )
        .unwrap();
        cfg
    }

    #[test]
    fn rolling_restart_under_posts_fails_no_request_and_stops_the_old_app_after_its_last() {
        if !require_tool("python3") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (app, web) = (free_port(), free_port());
        let cfg = rolling_config(dir.path(), app, web);
        let mut t = Tandem::spawn_cmd(Command::new(bin()).arg("--config").arg(&cfg));
        t.collect_stdout();
        let admin = t.admin_addr();
        t.wait_event("ready");
        let tandem_pid = t.pid();
        let old = status(&admin)["app_pid"].as_i64().unwrap();
        eventually("the first app listens on the configured port", || {
            lines_of(&t, old).contains(&format!("listening on {app}"))
        });

        let stop = Arc::new(AtomicBool::new(false));
        let clients = load(&format!("127.0.0.1:{web}"), 4, 2, &stop);
        eventually("the clients are under way", || {
            clients.ok.load(Ordering::Relaxed) > 30
        });
        let (code, out, err) = tandem_restart(&admin);
        assert_eq!(code, 0, "{out} {err}");
        let reply: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["mode"], "rolling", "{reply}");
        let new = reply["pid"].as_i64().unwrap();
        assert_ne!(new, old, "a second app process");
        let served = clients.ok.load(Ordering::Relaxed);
        eventually("the clients go on after the restart", || {
            clients.ok.load(Ordering::Relaxed) > served + 30
        });
        stop.store(true, Ordering::Relaxed);
        let (ok, failed, pids) = (
            clients.ok.clone(),
            clients.failed.clone(),
            clients.pids.clone(),
        );
        let errors: Vec<String> = clients
            .threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(
            failed.load(Ordering::Relaxed),
            0,
            "failed across the rolling restart ({} ok): {errors:?}",
            ok.load(Ordering::Relaxed)
        );
        let pids = pids.lock().unwrap().clone();
        assert!(
            pids.contains(&old.to_string()) && pids.contains(&new.to_string()),
            "GETs answered by both processes: {pids:?}"
        );

        let st = status(&admin);
        assert_eq!(st["app_pid"].as_i64(), Some(new), "{st}");
        assert_eq!(st["restarts"], 1, "{st}");
        assert_eq!(st["phase"], "running", "{st}");
        assert_eq!(t.pid(), tandem_pid);
        assert_eq!(
            t.child.try_wait().unwrap(),
            None,
            "tandem itself was not restarted"
        );
        // The new process got a port of its own, not the old one's.
        let new_lines = lines_of(&t, new);
        let listening = new_lines
            .iter()
            .find(|l| l.starts_with("listening on "))
            .cloned()
            .unwrap_or_default();
        assert!(
            !listening.is_empty() && listening != format!("listening on {app}"),
            "{new_lines:?}"
        );

        // From the old process's own output: its SIGTERM came after its last finished request.
        eventually("the old app got its SIGTERM and its output is in", || {
            lines_of(&t, old).iter().any(|l| l == "got SIGTERM")
        });
        eventually("the old app is gone", || {
            proc_state(old as i32).is_none_or(|s| s == 'Z')
        });
        let old_lines = lines_of(&t, old);
        let term = old_lines.iter().position(|l| l == "got SIGTERM").unwrap();
        let last = old_lines
            .iter()
            .rposition(|l| l.starts_with("request finished"))
            .expect("the old app finished requests");
        assert!(
            last < term,
            "a request finished after the old app's SIGTERM: {old_lines:?}"
        );
        assert!(
            old_lines
                .iter()
                .filter(|l| *l == "request finished POST")
                .count()
                > 0,
            "{old_lines:?}"
        );
        t.assert_order(&[
            "rolling_started",
            "proxy_reconfigured",
            "old_app_drained",
            "stop_signal_sent",
        ]);
        // With four clients' 300 ms POSTs always under way, the switch left some in flight on
        // the old process: the drain waited for them (and cut none).
        let drained = t.wait_event("old_app_drained");
        assert!(drained["finished"].as_u64() > Some(0), "{drained}");
        assert_eq!(drained["cut"], 0, "{drained}");

        // A reload that changes the listener afterwards keeps it on the new process's port.
        let script = dir.path().join("slow_app.py");
        let command = format!("\"python3\", \"-u\", \"{}\"", script.display());
        write_rolling_config(dir.path(), app, web, &command, "hold_timeout = \"20s\"");
        let out = Command::new(bin())
            .args(["reload", "--admin", &admin])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(stdout.contains("proxy.listeners"), "{stdout}");
        assert_served_by(web, new);

        t.signal(Signal::SIGTERM);
        assert_eq!(t.wait_code(), 0);
    }

    #[test]
    fn a_rolling_restart_whose_new_process_never_gets_ready_keeps_the_old_one() {
        if !require_tool("python3") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (app, web) = (free_port(), free_port());
        let script = dir.path().join("slow_app.py");
        let cfg = rolling_config(dir.path(), app, web);
        let mut t = Tandem::spawn_cmd(Command::new(bin()).arg("--config").arg(&cfg));
        t.collect_stdout();
        let admin = t.admin_addr();
        t.wait_event("ready");
        let old = status(&admin)["app_pid"].as_i64().unwrap();

        // The new command exits at once: refused, the old process keeps serving.
        write_rolling_config(
            dir.path(),
            app,
            web,
            "\"sh\", \"-c\", \"echo started on $PORT; exit 3\"",
            "",
        );
        let (code, out, err) = tandem_restart(&admin);
        assert_ne!(code, 0, "{out} {err}");
        assert!(err.contains("exited before it was ready"), "{err}");
        let st = status(&admin);
        assert_eq!(st["app_pid"].as_i64(), Some(old), "{st}");
        assert_eq!(st["restarts"], 0, "{st}");
        assert_served_by(web, old);
        let failed = t.wait_event("exited");
        assert_eq!(failed["role"], "replacement", "{failed}");

        // A new process that never listens: refused at restart.ready_timeout; meanwhile a
        // second restart (or an upgrade) is refused as busy.
        write_rolling_config(dir.path(), app, web, "\"sleep\", \"60\"", "");
        let first = {
            let admin = admin.clone();
            std::thread::spawn(move || tandem_restart(&admin))
        };
        let started = t.wait_event_nth("rolling_started", 1);
        assert!(started["pid"].as_i64().is_some(), "{started}");
        let (code, out, err) = tandem_restart(&admin);
        assert_ne!(code, 0, "{out} {err}");
        assert!(err.contains("a rolling restart is under way"), "{err}");
        let (code, out, err) = first.join().unwrap();
        assert_ne!(code, 0, "{out} {err}");
        assert!(err.contains("restart.ready_timeout"), "{err}");
        eventually("the process that never got ready is gone", || {
            proc_state(started["pid"].as_i64().unwrap() as i32).is_none_or(|s| s == 'Z')
        });
        let st = status(&admin);
        assert_eq!(st["app_pid"].as_i64(), Some(old), "{st}");
        assert_eq!(st["restarts"], 0, "{st}");

        // Fixed again: the rolling restart goes through.
        let command = format!("\"python3\", \"-u\", \"{}\"", script.display());
        write_rolling_config(dir.path(), app, web, &command, "");
        let (code, out, err) = tandem_restart(&admin);
        assert_eq!(code, 0, "{out} {err}");
        let st = status(&admin);
        assert_ne!(st["app_pid"].as_i64(), Some(old), "{st}");
        assert_eq!(st["restarts"], 1, "{st}");

        t.signal(Signal::SIGTERM);
        assert_eq!(t.wait_code(), 0);
    }

    #[test]
    fn after_a_rolling_restart_an_upgrade_keeps_the_proxy_on_the_new_port() {
        if !require_tool("python3") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let next = binary_copy(dir.path());
        let (app, web) = (free_port(), free_port());
        let cfg = rolling_config(dir.path(), app, web);
        let mut t = Tandem::spawn_cmd(Command::new(bin()).arg("--config").arg(&cfg));
        t.collect_stdout();
        let admin = t.admin_addr();
        t.wait_event("ready");
        let (code, out, err) = tandem_restart(&admin);
        assert_eq!(code, 0, "{out} {err}");
        let new = status(&admin)["app_pid"].as_i64().unwrap();

        let out = Command::new(bin())
            .args(["upgrade", "--admin", &admin, "--binary"])
            .arg(&next)
            .args(["--timeout", "30s"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let st = status(&admin);
        assert_eq!(st["app_pid"].as_i64(), Some(new), "{st}");
        assert_eq!(st["upgrade"]["ok"], true, "{st}");
        // The new image proxies to the port the rolling restart gave the app, not the
        // configured one (nothing listens there any more).
        eventually("the new image serves the adopted app", || {
            matches!(
                http(&format!("127.0.0.1:{web}"), "GET", "/pid", b"", &[]),
                Ok((200, _, b)) if b == new.to_string().as_bytes()
            )
        });
        // And a second rolling restart under the new image works from there.
        let (code, out, err) = tandem_restart(&admin);
        assert_eq!(code, 0, "{out} {err}");
        let newer = status(&admin)["app_pid"].as_i64().unwrap();
        assert_ne!(newer, new);
        assert_served_by(web, newer);

        t.signal(Signal::SIGTERM);
        assert_eq!(t.wait_code(), 0);
    }

    #[test]
    fn rolling_mode_needs_the_listeners_on_one_loopback_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        let (a, b, web, web2) = (free_port(), free_port(), free_port(), free_port());
        std::fs::write(
            &path,
            format!(
                "[app]\ncommand = [\"true\"]\n[restart]\nmode = \"rolling\"\n\
                 [[proxy.listeners]]\nlisten = \"127.0.0.1:{web}\"\nupstream = \"127.0.0.1:{a}\"\n\
                 [[proxy.listeners]]\nlisten = \"127.0.0.1:{web2}\"\nupstream = \"127.0.0.1:{b}\"\n"
            ),
        )
        .unwrap();
        let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{err}");
        let at = format!("{}:4: restart.mode", path.display());
        assert!(err.contains(&at) && err.contains("one port"), "{err}");

        std::fs::write(
            &path,
            "[app]\ncommand = [\"true\"]\n[restart]\nmode = \"rolling\"\n",
        )
        .unwrap();
        let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{err}");
        assert!(err.contains(&at) && err.contains("proxy listener"), "{err}");
    }
}
