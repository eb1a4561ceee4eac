//! Config reload in place (issue 16): `tandem reload` and SIGHUP re-read the config and apply
//! the proxy's listeners under load without restarting the app; a broken config is refused
//! whole, with its file and line, and the old one keeps serving.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{
    apps::{nginx, nginx_served, python_http_server},
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

/// `tandem reload` (with `--token-file` when given): its exit code, stdout and stderr.
fn tandem_reload(admin: &str, token_file: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["reload", "--admin", admin]);
    if let Some(file) = token_file {
        cmd.arg("--token-file").arg(file);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tandem reload` that succeeds: its JSON result, which says ok, `applied` and
/// `pending_restart` as given.
fn tandem_reload_ok(
    admin: &str,
    token_file: Option<&Path>,
    applied: &[&str],
    pending_restart: &[&str],
) -> Value {
    let (code, out, err) = tandem_reload(admin, token_file);
    assert_eq!(code, 0, "tandem reload: {out} {err}");
    let result: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["applied"], serde_json::json!(applied), "{result}");
    assert_eq!(
        result["pending_restart"],
        serde_json::json!(pending_restart),
        "{result}"
    );
    result
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

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// What the reload-under-load tests share: tandem (config in `dir/tandem.toml`, admin on a
/// free port, restarted always, SIGHUP not forwarded) running the app `command`, which serves
/// `/who.txt` on `app`, behind three listeners: keep, change and gone; and a second app
/// (Python's `http.server`, its `/who.txt` says "two", started by the test) for change to
/// move to. [`ThreeListeners::rewrite`] writes the config a reload then reads.
struct ThreeListeners {
    t: Tandem,
    admin: String,
    cfg: PathBuf,
    /// The config tandem started with, and its listeners' part.
    original: String,
    before: String,
    app: u16,
    app2: u16,
    keep: u16,
    change: u16,
    gone: u16,
    added: u16,
    _second: SecondApp,
}

impl ThreeListeners {
    /// Started, ready, each listener serving the app's `who` and the second app serving.
    fn start(dir: &Path, command: &[String], app: u16, who: &str) -> Self {
        let site2 = dir.join("two");
        std::fs::create_dir(&site2).unwrap();
        std::fs::write(site2.join("who.txt"), "two\n").unwrap();
        let app2 = free_port();
        let (keep, change, gone, added) = (free_port(), free_port(), free_port(), free_port());
        let before = [
            listener("keep", keep, app),
            listener("change", change, app),
            listener("gone", gone, app),
        ]
        .concat();
        let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
        // SIGHUP is not forwarded: http.server would die of it (its default action), and
        // nginx would read its own config again.
        let original = format!(
            "[app]\ncommand = [{}]\nstop_timeout = \"2s\"\nforward_signals = []\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[restart]\npolicy = \"always\"\n{before}",
            command.join(", ")
        );
        let cfg = dir.join("tandem.toml");
        std::fs::write(&cfg, &original).unwrap();
        let mut t = Tandem::spawn(&["--config", cfg.to_str().unwrap()]);
        t.collect_stdout();
        let admin = t.admin_addr();
        t.wait_event("ready");

        let second = python_http_server(&site2, app2).expect("python3 runs the second app");
        let second = SecondApp(
            Command::new(&second[0])
                .args(&second[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        eventually("the second app serves", || body(&local(app2)).is_some());
        for port in [keep, change, gone] {
            assert_eq!(body(&local(port)).as_deref(), Some(who), "on {port}");
        }
        ThreeListeners {
            t,
            admin,
            cfg,
            original,
            before,
            app,
            app2,
            keep,
            change,
            gone,
            added,
            _second: second,
        }
    }

    /// Writes the config the next reload reads: keep as it was, change on the second app,
    /// gone removed, added new; `extra` appended. Returns it.
    fn rewrite(&self, extra: &str) -> String {
        let after = [
            listener("keep", self.keep, self.app),
            listener("change", self.change, self.app2),
            listener("added", self.added, self.app),
        ]
        .concat();
        let new_cfg = self.original.replace(&self.before, &after) + extra;
        assert_ne!(new_cfg, self.original, "the listeners block was replaced");
        std::fs::write(&self.cfg, &new_cfg).unwrap();
        new_cfg
    }

    /// Once the reload is done: the added listener serves the app's `who` (polled for at
    /// most a second), change reaches the second app, gone refuses connections, and
    /// `/status` lists keep, change and added.
    fn assert_applied(&self, who: &str) {
        let added = local(self.added);
        let deadline = Instant::now() + Duration::from_secs(1);
        while body(&added).as_deref() != Some(who) {
            assert!(
                Instant::now() < deadline,
                "the added listener does not serve {who:?} a second after the reload"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        eventually("the changed listener goes to the new upstream", || {
            body(&local(self.change)).as_deref() == Some("two")
        });
        eventually("the removed listener refuses connections", || {
            std::net::TcpStream::connect(local(self.gone)).is_err()
        });
        let s = status(&self.admin);
        assert_eq!(s["reload"]["ok"], true, "{s}");
        let names: Vec<&str> = s["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["keep", "change", "added"]);
    }

    /// The app's pid on `/status`.
    fn app_pid(&self) -> i64 {
        status(&self.admin)["app_pid"].as_i64().unwrap()
    }
}

/// Let each of `clients` (what it loads, its threads) serve 20 more requests, then stop
/// them all (`stop`) and assert none failed; returns how many each served.
fn stop_load(stop: &AtomicBool, clients: Vec<(&str, Load)>) -> Vec<u64> {
    for (what, c) in &clients {
        let served = c.ok.load(Ordering::Relaxed);
        eventually(&format!("the clients on {what} go on"), || {
            c.ok.load(Ordering::Relaxed) > served + 20
        });
    }
    stop.store(true, Ordering::Relaxed);
    clients
        .into_iter()
        .map(|(what, c)| {
            let (ok, failed, errors) = c.join();
            assert_eq!(failed, 0, "failed on {what}: {errors:?}");
            assert!(ok > 0, "nothing served on {what}");
            ok
        })
        .collect()
}

#[test]
fn reload_adds_changes_and_removes_listeners_under_load_and_refuses_a_broken_config() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site1 = dir.path().join("one");
    std::fs::create_dir(&site1).unwrap();
    std::fs::write(site1.join("who.txt"), "one\n").unwrap();
    let app = free_port();
    let command = python_http_server(&site1, app).unwrap();
    let mut l = ThreeListeners::start(dir.path(), &command, app, "one");
    let admin = l.admin.clone();
    let (keep_addr, added_addr) = (local(l.keep), local(l.added));
    let pid = l.app_pid();

    // Load on the unchanged listener (3 clients) and the changed one (1) across the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let on_keep = load(&keep_addr, 3, &stop);
    let on_change = load(&local(l.change), 1, &stop);
    eventually("the clients are under way", || {
        on_keep.ok.load(Ordering::Relaxed) > 20 && on_change.ok.load(Ordering::Relaxed) > 5
    });

    // keep: as is; change: a new upstream; gone: removed; added: new. And a key that needs a
    // new app process, reported, not applied.
    let new_cfg = l.rewrite("[app.env]\nRELOADED = \"1\"\n");
    tandem_reload_ok(
        &admin,
        None,
        &[
            "proxy.listeners",
            "health.readiness (implicit: the proxy's upstreams)",
        ],
        &["app.env"],
    );
    // Applied when `tandem reload` returns: the new listener serves at once.
    assert_eq!(
        body(&added_addr).as_deref(),
        Some("one"),
        "the added listener serves"
    );
    l.assert_applied("one");
    // More requests on the new settings, then stop the clients: none failed.
    stop_load(
        &stop,
        vec![
            ("the unchanged listener", on_keep),
            ("the changed listener", on_change),
        ],
    );
    let s = status(&admin);
    assert_eq!(
        s["app_pid"].as_i64().unwrap(),
        pid,
        "the app was not restarted"
    );
    assert_eq!(s["restarts"], 0);

    // A broken config on SIGHUP: refused whole, the error names file and line, the old
    // config still serves.
    let broken = new_cfg.replace("policy = \"always\"", "policy = \"sometimes\"");
    assert_ne!(broken, new_cfg);
    let line = broken
        .lines()
        .position(|l| l.contains("sometimes"))
        .unwrap()
        + 1;
    std::fs::write(&l.cfg, &broken).unwrap();
    l.t.signal(Signal::SIGHUP);
    let failed = l.t.wait_event("reload_failed");
    let want = format!("{}:{line}: restart.policy", l.cfg.display());
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
    let (code, out, err) = tandem_reload(&admin, None);
    assert_ne!(code, 0, "tandem reload of a broken config: {out}");
    assert!(err.contains(&want), "stderr {err:?} lacks {want}");

    l.t.signal(Signal::SIGTERM);
    l.t.wait();
}

/// The same reload on SIGHUP with Debian's nginx as the app: four clients on the unchanged
/// listener lose no request, and nginx is the same process after it.
#[test]
fn nginx_serves_through_a_reload_that_adds_changes_and_removes_listeners() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("nginx");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("who.txt"), "nginx\n").unwrap();
    let app = free_port();
    let Some(command) = nginx(&site, app, false) else {
        return;
    };
    let mut l = ThreeListeners::start(dir.path(), &command, app, "nginx");
    let pid = l.app_pid();

    let stop = Arc::new(AtomicBool::new(false));
    let on_keep = load(&local(l.keep), 4, &stop);
    eventually("the clients are under way", || {
        on_keep.ok.load(Ordering::Relaxed) > 20
    });
    l.rewrite("");
    l.t.signal(Signal::SIGHUP);
    let reloaded = l.t.wait_event("config_reloaded");
    assert_eq!(reloaded["trigger"], "sighup", "{reloaded}");
    l.assert_applied("nginx");
    let ok = stop_load(&stop, vec![("the unchanged listener", on_keep)])[0];
    // Every GET the clients counted went through nginx.
    assert!(
        nginx_served(&site) as u64 >= ok,
        "nginx logged {} requests, the clients {ok}",
        nginx_served(&site)
    );
    let s = status(&l.admin);
    assert_eq!(
        s["app_pid"].as_i64().unwrap(),
        pid,
        "nginx was not restarted"
    );
    assert_eq!(s["restarts"], 0, "{s}");
    assert_eq!(s["reload"]["trigger"], "sighup", "{s}");

    l.t.signal(Signal::SIGTERM);
    l.t.wait();
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
    let (code, out, err) = tandem_reload(&admin, None);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("401"), "{err}");
    assert!(
        !t.events().iter().any(|e| e["event"] == "config_reloaded"),
        "a refused request reloaded"
    );

    // With the token: the same flags read again, nothing changed, nothing pending.
    let result = tandem_reload_ok(&admin, Some(&token_file), &[], &[]);
    assert_eq!(result["trigger"], "admin", "{result}");

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
