//! Shared helpers: run the real `tandem` binary, read its JSON events, wait with deadlines.
//!
//! Every wait is bounded; every process a test starts is stopped by PID when the test ends.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tandem")
}

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running tandem whose stderr events are collected as they arrive.
pub struct Tandem {
    pub child: Child,
    events: Arc<(Mutex<Vec<Value>>, Condvar)>,
    pub stderr_lines: Arc<Mutex<Vec<String>>>,
    /// JSON records from tandem's stdout, once [`Tandem::collect_stdout`] was called.
    records: Arc<Mutex<Vec<Value>>>,
}

/// Time since the test process's first call: events and other observations (sd_notify
/// datagrams) are stamped on this one clock so their order can be compared.
pub fn since_epoch() -> Duration {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

/// When the test saw an event (see [`since_epoch`]).
pub fn seen(event: &Value) -> Duration {
    Duration::from_nanos(event["_seen_ns"].as_u64().unwrap_or(0))
}

impl Tandem {
    /// Start `tandem ARGS...` with JSON events on stderr.
    pub fn spawn(args: &[&str]) -> Tandem {
        Self::spawn_cmd(Command::new(bin()).args(args))
    }

    /// Start a prepared command (its program must be tandem, or wrap it).
    pub fn spawn_cmd(cmd: &mut Command) -> Tandem {
        let mut child = cmd
            .env("TANDEM_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandem");
        let events: Arc<(Mutex<Vec<Value>>, Condvar)> = Arc::default();
        let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = child.stderr.take().expect("piped stderr");
        let (ev, lines) = (events.clone(), stderr_lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut v) = serde_json::from_str::<Value>(&line) {
                    if v.get("event").is_some() {
                        v["_seen_ns"] = (since_epoch().as_nanos() as u64).into();
                        ev.0.lock().unwrap().push(v);
                        ev.1.notify_all();
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        Tandem {
            child,
            events,
            stderr_lines,
            records: Arc::default(),
        }
    }

    /// Read tandem's stdout (the app's records, as JSON lines) in a thread from now on, so a
    /// chatty app never blocks on a full pipe.
    pub fn collect_stdout(&mut self) {
        let stdout = self.child.stdout.take().expect("stdout not taken yet");
        let records = self.records.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    records.lock().unwrap().push(v);
                }
            }
        });
    }

    /// Records read so far from stdout (see [`Tandem::collect_stdout`]).
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    /// Wait for a `name` event or fail after PATIENCE; like `wait_event` but for the n-th
    /// one after `after` (a [`seen`] stamp).
    pub fn wait_event_after(&self, name: &str, after: Duration) -> Value {
        let mut n = 0;
        loop {
            let e = self.wait_event_nth(name, n);
            if seen(&e) > after {
                return e;
            }
            n += 1;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// All events so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.0.lock().unwrap().clone()
    }

    /// Assert that the first events called `order[0]`, `order[1]`, ... came in that order.
    pub fn assert_order(&self, order: &[&str]) {
        let names = self.event_names();
        let pos = |n: &str| {
            names
                .iter()
                .position(|e| e == n)
                .unwrap_or_else(|| panic!("no {n} in {names:?}"))
        };
        for pair in order.windows(2) {
            assert!(
                pos(pair[0]) < pos(pair[1]),
                "{} before {}: {names:?}",
                pair[0],
                pair[1]
            );
        }
    }

    /// Names of all events so far, in order.
    pub fn event_names(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["event"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Wait for the `n`-th (0-based) event called `name`.
    pub fn wait_event_nth(&self, name: &str, n: usize) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let (lock, cv) = &*self.events;
        let mut evs = lock.lock().unwrap();
        loop {
            if let Some(e) = evs.iter().filter(|e| e["event"] == name).nth(n) {
                return e.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no event {name:?} #{n} within {PATIENCE:?}; got {:?}",
                evs.iter().map(|e| e["event"].clone()).collect::<Vec<_>>()
            );
            evs = cv.wait_timeout(evs, left).unwrap().0;
        }
    }

    /// The admin port's address, from the `admin_listening` event.
    pub fn admin_addr(&self) -> String {
        self.wait_event("admin_listening")["addr"]
            .as_str()
            .expect("admin_listening has an addr")
            .to_string()
    }

    pub fn wait_event(&self, name: &str) -> Value {
        self.wait_event_nth(name, 0)
    }

    /// The app's pid from the first `started` event.
    pub fn app_pid(&self) -> i32 {
        self.wait_event("started")["pid"]
            .as_i64()
            .expect("pid in started event") as i32
    }

    /// Send a signal to tandem.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal tandem");
    }

    /// Wait for tandem to exit; SIGKILL it (by pid) and fail if it does not in time.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                // Let the stderr thread drain the last events.
                std::thread::sleep(Duration::from_millis(50));
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "tandem did not exit within {PATIENCE:?}; events: {:?}",
                    self.event_names()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit code (panics if tandem itself was killed by a signal).
    pub fn wait_code(&mut self) -> i32 {
        let st = self.wait();
        st.code()
            .unwrap_or_else(|| panic!("tandem ended by a signal: {st:?}"))
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Path of the bundled example app (built with the workspace; built here if missing).
pub fn legacy_app() -> std::path::PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let path = Path::new(bin()).with_file_name("legacy-app");
    BUILT.call_once(|| {
        if !path.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "legacy-app"])
                .status()
                .expect("cargo build -p legacy-app");
            assert!(status.success(), "cannot build legacy-app");
        }
    });
    path
}

/// A free port on 127.0.0.1 (bound and released: another process could take it, which the
/// tests accept as a rare, loud failure).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run tandem to completion and return (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("TANDEM_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .output()
        .expect("run tandem");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Poll `cond` every 10 ms until it holds or PATIENCE runs out.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until a file exists (the app's way of saying "I got here").
pub fn wait_file(path: &Path) {
    eventually(&format!("{} exists", path.display()), || path.exists());
}

/// State letter of a process (R, S, Z, ...), or None when it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name, which may contain spaces.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Children of `pid` (all its threads), from /proc.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Pids whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                // fields after ')': state ppid pgrp ...
                if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
                    && f.first() != Some(&"Z")
                {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// The one way a test says it cannot run here (`why`: a tool, a package, root, an engine
/// missing): the test FAILS, so a machine that lacks what the suite needs cannot pass it by
/// skipping, unless the run opts out explicitly with `TANDEM_TEST_ALLOW_SKIP=1`, which turns
/// it into a skip with a message. Returns `false` (for `if !...{ return }`) when skipping.
pub fn can_run(ok: bool, why: impl std::fmt::Display) -> bool {
    if !ok {
        assert!(
            std::env::var_os("TANDEM_TEST_ALLOW_SKIP").is_some(),
            "{why} (scripts/test installs what the tests need; TANDEM_TEST_ALLOW_SKIP=1 skips instead)"
        );
        eprintln!("SKIP: {why}");
    }
    ok
}

/// Whether an external tool the test needs is on PATH (see [`can_run`]).
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    can_run(found, format_args!("{tool} is not on PATH"))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns the status, the
/// raw head and the body. Bounded by PATIENCE.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.set_write_timeout(Some(PATIENCE))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, head, raw[split + 4..].to_vec()))
}

/// A copy of tandem's binary at `dir/tandem-next` (mode 755), for `tandem upgrade --binary`:
/// `/proc/PID/exe` then shows which image runs.
pub fn binary_copy(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let next = dir.join("tandem-next");
    std::fs::copy(bin(), &next).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    next
}
