//! `tandem upgrade` (issue 16): tandem execs a new binary in its own process under load; the
//! app (Python's http.server, nobody here wrote it) keeps its pid and its pipes, no request
//! fails, every line the app wrote is delivered once; a binary that cannot take over is
//! refused before anything is touched.
use std::{
    collections::HashMap,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{
    apps::python_http_server,
    support::{bin, binary_copy, eventually, free_port, http, require_tool, Tandem},
};

/// Client threads sending `GET /who.txt?c=<thread>-<n>` until `stop`: the ids answered 200,
/// and the failures' descriptions.
pub(crate) struct Load {
    pub(crate) answered: Arc<Mutex<Vec<String>>>,
    pub(crate) failed: Arc<Mutex<Vec<String>>>,
    pub(crate) ok: Arc<AtomicU64>,
    pub(crate) threads: Vec<std::thread::JoinHandle<()>>,
}

pub(crate) fn load(addr: &str, threads: usize, stop: &Arc<AtomicBool>) -> Load {
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let ok = Arc::new(AtomicU64::new(0));
    let threads = (0..threads)
        .map(|t| {
            let (addr, stop, answered, failed, ok) = (
                addr.to_string(),
                stop.clone(),
                answered.clone(),
                failed.clone(),
                ok.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{t}-{n}");
                    n += 1;
                    match http(&addr, "GET", &format!("/who.txt?c={id}"), b"", &[]) {
                        Ok((200, _, _)) => {
                            answered.lock().unwrap().push(id);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((code, head, _)) => {
                            failed.lock().unwrap().push(format!("{id}: {code} {head}"))
                        }
                        Err(e) => failed.lock().unwrap().push(format!("{id}: {e}")),
                    }
                }
            })
        })
        .collect();
    Load {
        answered,
        failed,
        ok,
        threads,
    }
}

fn status(admin: &str) -> Value {
    let (code, _, b) = http(admin, "GET", "/status", b"", &[]).unwrap();
    assert_eq!(code, 200);
    serde_json::from_slice(&b).unwrap()
}

pub(crate) fn tandem_upgrade(admin: &str, binary: &str) -> (i32, String, String) {
    let out = Command::new(bin())
        .args([
            "upgrade",
            "--admin",
            admin,
            "--binary",
            binary,
            "--timeout",
            "30s",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The app behind a proxy listener, tandem started from `dir/tandem.toml`; returns tandem,
/// the proxy's and the admin port's addresses.
fn start(dir: &std::path::Path) -> (Tandem, String, String) {
    std::fs::write(dir.join("who.txt"), "one\n").unwrap();
    let (app, web, admin) = (free_port(), free_port(), free_port());
    let command: Vec<String> = python_http_server(dir, app)
        .unwrap()
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    let config = format!(
        "[app]\ncommand = [{}]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[proxy.listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:{web}\"\nupstream = \"127.0.0.1:{app}\"\n",
        command.join(", ")
    );
    let path = dir.join("tandem.toml");
    std::fs::write(&path, config).unwrap();
    let mut t = Tandem::spawn(&["--config", path.to_str().unwrap()]);
    t.collect_stdout();
    let web = format!("127.0.0.1:{web}");
    let admin = format!("127.0.0.1:{admin}");
    eventually("the app answers through the proxy", || {
        matches!(http(&web, "GET", "/who.txt", b"", &[]), Ok((200, _, _)))
    });
    (t, web, admin)
}

#[test]
fn upgrade_under_load_keeps_both_pids_fails_no_request_and_delivers_every_line_once() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The new binary: a copy, so /proc shows which image runs.
    let next = binary_copy(dir.path());
    let (mut t, web, admin) = start(dir.path());
    let before = status(&admin);
    let app_pid = before["app_pid"].as_i64().expect("app pid");
    assert!(before["upgrade"].is_null(), "{before}");

    let stop = Arc::new(AtomicBool::new(false));
    let l = load(&web, 4, &stop);
    eventually("load flows", || l.ok.load(Ordering::Relaxed) >= 40);
    // A key of tandem's own, which a reload leaves pending: the new image runs with it.
    let cfg = dir.path().join("tandem.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("[service]\nname = \"shop\"\n{text}")).unwrap();
    let (code, out, err) = tandem_upgrade(&admin, next.to_str().unwrap());
    assert_eq!(code, 0, "tandem upgrade failed: {out} {err}");
    let result: Value = serde_json::from_str(out.trim()).expect("JSON result");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["generation"], 1, "{result}");
    let at_upgrade = l.ok.load(Ordering::Relaxed);
    eventually("load flows after the upgrade", || {
        l.ok.load(Ordering::Relaxed) >= at_upgrade + 40
    });
    stop.store(true, Ordering::Relaxed);
    for th in l.threads {
        th.join().unwrap();
    }
    let failed = l.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "requests failed across the upgrade: {failed:?}"
    );

    // Same tandem process, running the new image; same app process, still its child.
    let exe = std::fs::read_link(format!("/proc/{}/exe", t.pid())).unwrap();
    assert_eq!(exe, next, "tandem's process runs the new binary");
    let after = status(&admin);
    assert_eq!(after["app_pid"].as_i64(), Some(app_pid), "{after}");
    assert_eq!(after["upgrade"]["ok"], true, "{after}");
    assert_eq!(
        after["upgrade"]["binary"],
        next.to_str().unwrap(),
        "{after}"
    );
    let (_, _, page) = http(&admin, "GET", "/", b"", &[]).unwrap();
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("(generation 1)") && page.contains("tandem-next"),
        "the status page shows the upgrade: {page}"
    );
    let ppid = std::fs::read_to_string(format!("/proc/{app_pid}/stat")).unwrap();
    let ppid: i32 = ppid
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert_eq!(ppid, t.pid(), "the app is still tandem's child");

    // Every answered request's log line (http.server writes one to stderr per request),
    // across both images, exactly once.
    t.signal(Signal::SIGTERM);
    t.wait();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in t.records() {
        let msg = r["msg"].as_str().unwrap_or("");
        if let Some(id) = msg
            .split("/who.txt?c=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        {
            if r["stream"] == "stderr" {
                *seen.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    assert!(
        t.records().iter().any(|r| r["service"] == "shop"),
        "the new image runs with the config's new service.name"
    );
    let answered = l.answered.lock().unwrap().clone();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "lines lost: {} of {}: {missing:?}",
        missing.len(),
        answered.len()
    );
    assert!(twice.is_empty(), "lines delivered twice: {twice:?}");
}

#[test]
fn an_upgrade_to_a_binary_that_cannot_take_over_is_refused_and_the_old_one_serves_on() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut t, web, admin) = start(dir.path());
    let exe = std::fs::read_link(format!("/proc/{}/exe", t.pid())).unwrap();
    let app_pid = status(&admin)["app_pid"].as_i64();

    let missing = dir.path().join("no-such-tandem");
    let (code, _, err) = tandem_upgrade(&admin, missing.to_str().unwrap());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no-such-tandem"),
        "the error names the path: {err}"
    );
    // An executable that is no tandem: refused by the hand-over pre-flight.
    let (code, _, err) = tandem_upgrade(&admin, "/bin/true");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a tandem"), "{err}");

    assert!(matches!(
        http(&web, "GET", "/who.txt", b"", &[]),
        Ok((200, _, _))
    ));
    let after = status(&admin);
    assert!(after["upgrade"].is_null(), "{after}");
    assert_eq!(after["app_pid"].as_i64(), app_pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", t.pid())).unwrap(),
        exe
    );
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn upgrade_beside_the_app_reads_its_log_files_on_without_loss_or_repeat() {
    // Nomad's sidecar shape: no command, the app's log files followed (tail mode, no
    // checkpoint file: the positions go over in the hand-over).
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("alloc/logs");
    std::fs::create_dir_all(&logs).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[admin]\nlisten = \"{admin}\"\n[logs.tail]\npaths = [\"{}/app.stdout.*\"]\npoll_interval = \"20ms\"\nstart_at = \"beginning\"\n",
        logs.display()
    );
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, config).unwrap();
    let next = binary_copy(dir.path());
    let mut t = Tandem::spawn(&["--config", path.to_str().unwrap()]);
    t.collect_stdout();
    eventually("the admin port answers", || {
        matches!(http(&admin, "GET", "/healthz", b"", &[]), Ok((200, _, _)))
    });

    // A writer appending numbered lines (sometimes in two writes, so a line is unfinished
    // when a reader looks) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (file, stop, written) = (logs.join("app.stdout.0"), stop.clone(), written.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let line = format!("line number {n} of the app\n");
                let (a, b) = line.split_at(7);
                f.write_all(a.as_bytes()).unwrap();
                if n.is_multiple_of(3) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                f.write_all(b.as_bytes()).unwrap();
                n += 1;
                written.store(n, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    eventually("lines flow", || written.load(Ordering::Relaxed) > 100);
    let (code, out, err) = tandem_upgrade(&admin, next.to_str().unwrap());
    assert_eq!(code, 0, "tandem upgrade failed: {out} {err}");
    let at = written.load(Ordering::Relaxed);
    eventually("lines flow after the upgrade", || {
        written.load(Ordering::Relaxed) > at + 100
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let total = written.load(Ordering::Relaxed);
    let count = |t: &Tandem| -> HashMap<u64, usize> {
        let mut seen = HashMap::new();
        for r in t.records() {
            if let Some(n) = r["msg"]
                .as_str()
                .and_then(|m| m.strip_prefix("line number "))
                .and_then(|m| m.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
            {
                *seen.entry(n).or_default() += 1;
            }
        }
        seen
    };
    eventually("every line delivered", || count(&t).len() as u64 >= total);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", t.pid())).unwrap(),
        next
    );
    t.signal(Signal::SIGTERM);
    t.wait();
    let seen = count(&t);
    let twice: Vec<(&u64, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
    let missing: Vec<u64> = (0..total).filter(|n| !seen.contains_key(n)).collect();
    assert!(missing.is_empty(), "lines lost: {missing:?}");
    assert!(twice.is_empty(), "lines delivered twice: {twice:?}");
}

#[test]
fn a_new_image_that_cannot_adopt_hands_back_to_the_old_binary() {
    if !require_tool("python3") {
        return;
    }
    // The config is valid at the pre-flight and broken when the new image loads it (edited
    // while the old image drains a held TCP connection): the old binary takes over again.
    let dir = tempfile::tempdir().unwrap();
    let (mut t, web, admin) = start(dir.path());
    let path = dir.path().join("tandem.toml");
    let app_port = std::fs::read_to_string(&path)
        .unwrap()
        .split("upstream = \"127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let raw = free_port();
    let config = std::fs::read_to_string(&path).unwrap()
        + &format!(
            "[[proxy.listeners]]\nname = \"raw\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:{raw}\"\nupstream = \"127.0.0.1:{app_port}\"\ndrain_timeout = \"2s\"\n"
        );
    std::fs::write(&path, &config).unwrap();
    let (code, out, err) = {
        let out = Command::new(bin())
            .args(["reload", "--admin", &admin])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{out} {err}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", t.pid())).unwrap();
    let app_pid = status(&admin)["app_pid"].as_i64();
    let next = binary_copy(dir.path());

    // A TCP connection held open: the drain waits for it (2 s).
    let _held = std::net::TcpStream::connect(format!("127.0.0.1:{raw}")).unwrap();
    let query = format!(
        "/admin/upgrade?binary={}",
        next.display().to_string().replace('/', "%2F")
    );
    let (code, _, body) = http(&admin, "POST", &query, b"", &[]).unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    std::fs::write(&path, "this is [not toml\n").unwrap();

    eventually("the old image reports the failed upgrade", || {
        http(&admin, "GET", "/status", b"", &[])
            .ok()
            .and_then(|(_, _, b)| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|s| s["upgrade"]["generation"] == 1)
    });
    let s = status(&admin);
    assert_eq!(s["upgrade"]["ok"], false, "{s}");
    assert!(
        s["upgrade"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("config"),
        "{s}"
    );
    assert_eq!(s["app_pid"].as_i64(), app_pid, "{s}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", t.pid())).unwrap(),
        exe
    );
    assert!(matches!(
        http(&web, "GET", "/who.txt", b"", &[]),
        Ok((200, _, _))
    ));
    t.signal(Signal::SIGTERM);
    t.wait();
}
