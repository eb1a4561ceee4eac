//! Config reload in place (issue 16): `tandem reload` and SIGHUP re-read the config and apply
//! the proxy's listeners under load without restarting the app; a broken config is refused
//! whole, with its file and line, and the old one keeps serving.
use std::{
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{
    apps::python_http_server,
    support::{bin, eventually, free_port, http, require_tool, Tandem},
};

/// A client thread sending GETs to `addr` until `stop`; counts successes and failures.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Vec<String>>>,
}

fn load(addr: &str, threads: usize, stop: &Arc<AtomicBool>) -> Load {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let threads = (0..threads)
        .map(|_| {
            let (addr, stop, ok, failed) =
                (addr.to_string(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match http(&addr, "GET", "/who.txt", b"", &[]) {
                        Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        Ok((code, head, _)) => {
                            errors.push(format!("{code}: {head}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            errors.push(e.to_string());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                errors
            })
        })
        .collect();
    Load {
        ok,
        failed,
        threads,
    }
}

impl Load {
    /// Stop (with `stop` set) and return the failures' descriptions.
    fn join(self) -> (u64, u64, Vec<String>) {
        let errors = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

fn body(addr: &str) -> Option<String> {
    match http(addr, "GET", "/who.txt", b"", &[]) {
        Ok((200, _, b)) => Some(String::from_utf8_lossy(&b).trim().to_string()),
        _ => None,
    }
}

fn status(admin: &str) -> Value {
    let (code, _, b) = http(admin, "GET", "/status", b"", &[]).unwrap();
    assert_eq!(code, 200);
    serde_json::from_slice(&b).unwrap()
}

fn tandem_reload(admin: &str) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["reload", "--admin", admin])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A second `http.server`, started by the test (stopped by its PID).
struct SecondApp(Child);

impl Drop for SecondApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn listener(name: &str, port: u16, upstream: u16) -> String {
    format!(
        "[[proxy.listeners]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{upstream}\"\n"
    )
}

#[test]
fn reload_adds_changes_and_removes_listeners_under_load_and_refuses_a_broken_config() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (site1, site2) = (dir.path().join("one"), dir.path().join("two"));
    for (site, who) in [(&site1, "one"), (&site2, "two")] {
        std::fs::create_dir(site).unwrap();
        std::fs::write(site.join("who.txt"), format!("{who}\n")).unwrap();
    }
    let (app, app2) = (free_port(), free_port());
    let (keep, change, gone, added) = (free_port(), free_port(), free_port(), free_port());
    let before = [
        listener("keep", keep, app),
        listener("change", change, app),
        listener("gone", gone, app),
    ]
    .concat();
    let command: Vec<String> = python_http_server(&site1, app)
        .unwrap()
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    // SIGHUP is not forwarded: http.server would die of it (its default action).
    let original = format!(
        "[app]\ncommand = [{}]\nstop_timeout = \"2s\"\nforward_signals = []\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[restart]\npolicy = \"always\"\n{before}",
        command.join(", ")
    );
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(&cfg, &original).unwrap();
    let mut t = Tandem::spawn(&["--config", cfg.to_str().unwrap()]);
    t.collect_stdout();
    let admin = t.admin_addr();
    t.wait_event("ready");

    let mut second = Command::new(python_http_server(&site2, app2).unwrap()[0].clone());
    second.args(&python_http_server(&site2, app2).unwrap()[1..]);
    let _second = SecondApp(
        second
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the second app serves", || {
        body(&format!("127.0.0.1:{app2}")).is_some()
    });

    let (keep_addr, change_addr) = (format!("127.0.0.1:{keep}"), format!("127.0.0.1:{change}"));
    let (gone_addr, added_addr) = (format!("127.0.0.1:{gone}"), format!("127.0.0.1:{added}"));
    assert_eq!(body(&change_addr).as_deref(), Some("one"));
    assert_eq!(body(&gone_addr).as_deref(), Some("one"));
    let pid = status(&admin)["app_pid"].as_i64().unwrap();

    // Load on the unchanged listener (3 clients) and the changed one (1) across the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let on_keep = load(&keep_addr, 3, &stop);
    let on_change = load(&change_addr, 1, &stop);
    eventually("the clients are under way", || {
        on_keep.ok.load(Ordering::Relaxed) > 20 && on_change.ok.load(Ordering::Relaxed) > 5
    });

    // keep: as is; change: a new upstream; gone: removed; added: new. And a key that needs a
    // new app process, reported, not applied.
    let after = [
        listener("keep", keep, app),
        listener("change", change, app2),
        listener("added", added, app),
    ]
    .concat();
    let new_cfg = original.replace(&before, &after) + "[app.env]\nRELOADED = \"1\"\n";
    assert_ne!(new_cfg, original, "the listeners block was replaced");
    std::fs::write(&cfg, &new_cfg).unwrap();
    let (code, out, err) = tandem_reload(&admin);
    assert_eq!(code, 0, "tandem reload: {out} {err}");
    // Applied when `tandem reload` returns: the new listener serves at once.
    assert_eq!(
        body(&added_addr).as_deref(),
        Some("one"),
        "the added listener serves"
    );
    let result: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        result["applied"],
        serde_json::json!([
            "proxy.listeners",
            "health.readiness (implicit: the proxy's upstreams)"
        ]),
        "{result}"
    );
    assert_eq!(
        result["pending_restart"],
        serde_json::json!(["app.env"]),
        "{result}"
    );
    eventually("the changed listener goes to the new upstream", || {
        body(&change_addr).as_deref() == Some("two")
    });
    eventually("the removed listener refuses connections", || {
        std::net::TcpStream::connect(&gone_addr).is_err()
    });
    // More requests on the new settings, then stop the clients.
    let served = on_keep.ok.load(Ordering::Relaxed);
    eventually("the clients go on after the reload", || {
        on_keep.ok.load(Ordering::Relaxed) > served + 20
    });
    stop.store(true, Ordering::Relaxed);
    let (keep_ok, keep_failed, keep_errors) = on_keep.join();
    let (change_ok, change_failed, change_errors) = on_change.join();
    assert_eq!(
        keep_failed, 0,
        "failed on the unchanged listener: {keep_errors:?}"
    );
    assert_eq!(
        change_failed, 0,
        "failed on the changed listener: {change_errors:?}"
    );
    assert!(keep_ok > 0 && change_ok > 0);
    let s = status(&admin);
    assert_eq!(
        s["app_pid"].as_i64().unwrap(),
        pid,
        "the app was not restarted"
    );
    assert_eq!(s["restarts"], 0);
    assert_eq!(s["reload"]["ok"], true, "{s}");
    let names: Vec<&str> = s["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["keep", "change", "added"]);

    // A broken config on SIGHUP: refused whole, the error names file and line, the old
    // config still serves.
    let broken = new_cfg.replace("policy = \"always\"", "policy = \"sometimes\"");
    assert_ne!(broken, new_cfg);
    let line = broken
        .lines()
        .position(|l| l.contains("sometimes"))
        .unwrap()
        + 1;
    std::fs::write(&cfg, &broken).unwrap();
    t.signal(Signal::SIGHUP);
    let failed = t.wait_event("reload_failed");
    let want = format!("{}:{line}: restart.policy", cfg.display());
    assert!(
        failed["error"].as_str().unwrap().contains(&want),
        "{failed} lacks {want}"
    );
    let s = status(&admin);
    assert_eq!(s["reload"]["ok"], false, "{s}");
    assert_eq!(s["reload"]["trigger"], "sighup", "{s}");
    assert!(
        s["reload"]["error"].as_str().unwrap().contains(&want),
        "{s}"
    );
    // The status page shows it too.
    let (code, _, page) = http(&admin, "GET", "/", b"", &[]).unwrap();
    let page = String::from_utf8_lossy(&page);
    assert_eq!(code, 200);
    assert!(
        page.contains("refused, the old config stays") && page.contains(&want),
        "{page}"
    );
    assert_eq!(body(&keep_addr).as_deref(), Some("one"));
    assert_eq!(body(&added_addr).as_deref(), Some("one"));
    assert_eq!(s["app_pid"].as_i64().unwrap(), pid);
    let (code, out, err) = tandem_reload(&admin);
    assert_ne!(code, 0, "tandem reload of a broken config: {out}");
    assert!(err.contains(&want), "stderr {err:?} lacks {want}");

    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn reload_on_the_admin_port_needs_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-admin-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut t = Tandem::spawn(&[
        "--admin",
        "127.0.0.1:0",
        "--set",
        &format!("admin.token_file={}", token_file.display()),
        "--",
        "sleep",
        "1000",
    ]);
    let admin = t.admin_addr();
    let (code, head, _) = http(&admin, "POST", "/admin/reload", b"", &[]).unwrap();
    assert_eq!(code, 401, "{head}");
    let (code, out, err) = tandem_reload(&admin);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("401"), "{err}");
    assert!(
        !t.events().iter().any(|e| e["event"] == "config_reloaded"),
        "a refused request reloaded"
    );

    // With the token: the same flags read again, nothing changed, nothing pending.
    let out = Command::new(bin())
        .args(["reload", "--admin", &admin, "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["trigger"], "admin", "{result}");
    assert_eq!(result["applied"], serde_json::json!([]), "{result}");
    assert_eq!(result["pending_restart"], serde_json::json!([]), "{result}");

    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn restart_on_the_admin_port_holds_requests_and_counts_a_restart() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("who.txt"), "one\n").unwrap();
    let (app, web) = (free_port(), free_port());
    let (mut t, admin) = crate::apps::http_server_behind_tandem(
        dir.path(),
        &site,
        app,
        &listener("web", web, app),
        None,
    );
    let web_addr = format!("127.0.0.1:{web}");
    let before = status(&admin);
    let pid = before["app_pid"].as_i64().unwrap();
    assert_eq!(before["restarts"], 0);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&web_addr, 3, &stop);
    eventually("the clients are under way", || {
        clients.ok.load(Ordering::Relaxed) > 20
    });
    let out = Command::new(bin())
        .args(["restart", "--admin", &admin])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["ok"], true, "{result}");
    let new_pid = result["pid"].as_i64().unwrap();
    assert_ne!(new_pid, pid, "a new app process");
    let served = clients.ok.load(Ordering::Relaxed);
    eventually("the clients go on after the restart", || {
        clients.ok.load(Ordering::Relaxed) > served + 20
    });
    stop.store(true, Ordering::Relaxed);
    let (_, failed, errors) = clients.join();
    assert_eq!(failed, 0, "failed across the restart: {errors:?}");
    let after = status(&admin);
    assert_eq!(after["restarts"], 1, "{after}");
    assert_eq!(after["app_pid"].as_i64().unwrap(), new_pid);
    t.assert_order(&[
        "restart_requested",
        "stop_signal_sent",
        "exited",
        "restarting",
    ]);
    assert_eq!(
        t.wait_event_nth("started", 1)["pid"].as_i64(),
        Some(new_pid)
    );

    t.signal(Signal::SIGTERM);
    t.wait();
}
