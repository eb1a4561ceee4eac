//! Compose on this machine's Docker engine, both modes, with the README's exact files:
//! `compose/entrypoint.yml` (tandem as the image's ENTRYPOINT, PID 1) and
//! `compose/extra-service.yml` (tandem in the app container's network namespace).
//!
//! Images come from `compose/build-images.sh` (static binaries, `FROM scratch`, no registry),
//! built once per test run. Each test uses its own Compose project name and host port
//! (published on 127.0.0.1 only) and runs `down -v` when it ends, pass or fail. When no
//! Docker engine answers the tests fail (see `support::can_run`).
use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    nomad::flood_index,
    support::{children, free_port, http, proc_state},
};

/// Bound on one docker/compose command (`up` of a built image, `stop` with a drain).
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// Bound on a container becoming healthy, a restart, a zombie being reaped.
const CONTAINER_PATIENCE: Duration = Duration::from_secs(60);
const IMAGE: &str = "tandem-legacy-app:dev";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Output of a finished command.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run a command to completion within `limit` (killed by pid and failed past it); output is
/// read in threads so a chatty command cannot block on a full pipe.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Out {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Out {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The Compose command on this machine (`docker compose` or `docker-compose`), once the
/// engine answers; None to skip (see `support::can_run`).
fn compose_cmd() -> Option<Vec<String>> {
    let skip = |why: String| {
        crate::support::can_run(false, why);
        None
    };
    let answers = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
            .map(|mut c| {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match c.try_wait() {
                        Ok(Some(st)) => return st.success(),
                        Ok(None) if Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(20))
                        }
                        _ => {
                            let _ = c.kill();
                            let _ = c.wait();
                            return false;
                        }
                    }
                }
            })
            .unwrap_or(false)
    };
    if !answers(&["docker", "info", "--format", "{{.ServerVersion}}"]) {
        return skip("no Docker engine answers `docker info`".into());
    }
    if answers(&["docker", "compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if answers(&["docker-compose", "version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        skip("neither `docker compose` nor `docker-compose` works".into())
    }
}

/// Build the image once per test run (`compose/build-images.sh`, as the README says).
fn build_image() {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return;
    }
    let started = Instant::now();
    let out = run_bounded(
        Command::new(repo().join("compose/build-images.sh"))
            .arg(IMAGE)
            .current_dir(repo()),
        Duration::from_secs(1200),
    );
    assert_eq!(
        out.code,
        Some(0),
        "compose/build-images.sh failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    eprintln!("built {IMAGE} in {:?}", started.elapsed());
    *built = true;
}

/// One Compose project from a file in compose/, torn down (`down -v`) when dropped.
struct Project {
    compose: Vec<String>,
    file: PathBuf,
    name: String,
    port: u16,
}

impl Project {
    fn up(file: &str) -> Option<Project> {
        let compose = compose_cmd()?;
        build_image();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = Project {
            compose,
            file: repo().join("compose").join(file),
            name: format!("tandemtest{}x{n}", std::process::id()),
            port: free_port(),
        };
        let out = p.run(&["up", "-d"]);
        assert_eq!(
            out.code,
            Some(0),
            "up failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        Some(p)
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .args(["--project-name", &self.name, "--file"])
            .arg(&self.file)
            .args(args)
            .env("TANDEM_HTTP_PORT", self.port.to_string());
        run_bounded(&mut cmd, COMMAND_LIMIT)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The container id of `service` (also once it has exited).
    fn container(&self, service: &str) -> String {
        let out = self.run(&["ps", "-q", service]);
        let id = out.stdout.trim().to_string();
        assert!(!id.is_empty(), "no container for {service}: {}", out.stderr);
        id
    }

    /// `docker inspect --format FORMAT` of `service`'s container.
    fn inspect(&self, service: &str, format: &str) -> String {
        let id = self.container(service);
        let out = run_bounded(
            Command::new("docker").args(["inspect", "--format", format, &id]),
            COMMAND_LIMIT,
        );
        assert_eq!(out.code, Some(0), "inspect: {}", out.stderr);
        out.stdout.trim().to_string()
    }

    /// Host pid of the container's PID 1.
    fn pid1(&self, service: &str) -> i32 {
        self.inspect(service, "{{.State.Pid}}").parse().unwrap()
    }

    fn wait_healthy(&self, service: &str) {
        wait_until(&format!("{service} is healthy"), || {
            self.inspect(service, "{{.State.Health.Status}}") == "healthy"
        });
    }

    /// JSON objects in `compose logs SERVICE` (each line after the `name |` prefix).
    fn json_logs(&self, service: &str) -> Vec<Value> {
        let out = self.run(&["logs", "--no-color", service]);
        out.stdout
            .lines()
            .filter_map(|l| {
                let json = &l[l.find('{')?..];
                serde_json::from_str::<Value>(json).ok()
            })
            .collect()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let out = self.run(&["down", "-v", "--timeout", "5"]);
        if out.code != Some(0) {
            eprintln!("compose down failed for {}: {}", self.name, out.stderr);
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + CONTAINER_PATIENCE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "not within {CONTAINER_PATIENCE:?}: {what}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Every process under `pid` (host pids), depth first.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = children(pid);
    while let Some(p) = todo.pop() {
        out.push(p);
        todo.extend(children(p));
    }
    out
}

/// The app's host pid: the child of the container's PID 1 that runs legacy-app.
fn app_pid(pid1: i32) -> Option<i32> {
    children(pid1)
        .into_iter()
        .find(|p| cmdline(*p).starts_with("/legacy-app ") && !cmdline(*p).contains("--sleep"))
}

fn get_ok(addr: &str, path: &str) -> String {
    let (status, head, body) =
        http(addr, "GET", path, b"", &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {head}");
    String::from_utf8_lossy(&body).into_owned()
}

fn msg(r: &Value) -> &str {
    r["msg"].as_str().unwrap_or("")
}

#[test]
fn entrypoint_mode_proxies_structures_logs_restarts_reaps_and_drains_on_stop() {
    let Some(p) = Project::up("entrypoint.yml") else {
        return;
    };
    p.wait_healthy("app");

    // tandem is PID 1 of the container and the app is its child.
    let pid1 = p.pid1("app");
    assert!(cmdline(pid1).starts_with("/tandem "), "{}", cmdline(pid1));
    let first_app = app_pid(pid1).expect("legacy-app runs under tandem");

    // Requests through the published proxy port reach the app.
    let body = get_ok(&p.addr(), "/");
    assert!(body.contains("hello from legacy-app"), "{body}");

    // `compose logs` shows the app's lines as tandem's JSON records.
    wait_until("the app's startup line is a record", || {
        p.json_logs("app").iter().any(|r| {
            r["service"] == "legacy-app"
                && r["stream"] == "stdout"
                && msg(r) == "listening"
                && r["fields"]["port"] == 3000
        })
    });

    // Killing the app inside the container: tandem restarts it, the container stays up.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first_app),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("tandem restarted the app", || {
        app_pid(pid1).is_some_and(|p| p != first_app)
    });
    let body = get_ok(&p.addr(), "/");
    assert!(body.contains("hello from legacy-app"), "{body}");
    assert_eq!(p.pid1("app"), pid1, "the container was not restarted");
    assert_eq!(p.inspect("app", "{{.RestartCount}}"), "0");
    wait_until("the restart is in the events", || {
        p.json_logs("app")
            .iter()
            .any(|e| e["event"] == "exited" && e["exit_code"] == 137)
            && p.json_logs("app")
                .iter()
                .filter(|e| e["event"] == "started")
                .count()
                >= 2
    });

    // Zombies: the app double-forks a child that outlives its parent; it is reparented to
    // PID 1 (tandem), which reaps it when it exits.
    let body = get_ok(&p.addr(), "/orphan?ms=1500");
    assert!(body.contains("orphaned"), "{body}");
    wait_until("the orphan is a child of tandem (PID 1)", || {
        children(pid1)
            .iter()
            .any(|c| cmdline(*c).contains("--sleep-ms"))
    });
    wait_until(
        "the orphan exited and was reaped: no zombie in the container",
        || {
            let procs = descendants(pid1);
            !procs.iter().any(|c| cmdline(*c).contains("--sleep-ms"))
                && !procs.iter().any(|c| proc_state(*c) == Some('Z'))
        },
    );

    // `compose stop`: the in-flight request is drained, then the app is stopped, and the
    // container ends with the app's own exit code.
    let addr = p.addr();
    let slow = thread::spawn(move || http(&addr, "GET", "/slow?ms=2000", b"", &[]));
    // legacy-app logs this line before it starts waiting: the request is in flight.
    wait_until("the slow request reached the app", || {
        p.json_logs("app")
            .iter()
            .any(|e| msg(e).contains("slow request: sleeping 2000ms"))
    });
    let out = p.run(&["stop"]);
    assert_eq!(out.code, Some(0), "stop: {}", out.stderr);
    let (status, head, _) = slow.join().unwrap().expect("the slow request");
    assert_eq!(status, 200, "drained, not cut: {head}");
    assert_eq!(p.inspect("app", "{{.State.Status}}"), "exited");
    let logs = p.json_logs("app");
    let app_exit = logs
        .iter()
        .rev()
        .find(|e| e["event"] == "exited")
        .expect("the app's exit event");
    let code = p.inspect("app", "{{.State.ExitCode}}");
    assert_eq!(code, app_exit["exit_code"].to_string(), "{app_exit}");
    assert_eq!(code, "0", "legacy-app exits 0 on SIGTERM");
    let names: Vec<&str> = logs.iter().filter_map(|e| e["event"].as_str()).collect();
    let at = |n: &str| {
        names
            .iter()
            .rposition(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert!(at("drained") < at("stop_signal_sent"), "{names:?}");
    assert!(logs
        .iter()
        .any(|r| msg(r).ends_with("received SIGTERM, shutting down")));
}

#[test]
fn extra_service_mode_proxies_checks_and_structures_the_apps_log_file() {
    let Some(p) = Project::up("extra-service.yml") else {
        return;
    };
    // `up` started the client only once tandem was healthy (depends_on: service_healthy);
    // its own check then passed too.
    p.wait_healthy("tandem");
    wait_until("the client ran and exited 0", || {
        p.inspect("client", "{{.State.Status}}") == "exited"
    });
    assert_eq!(p.inspect("client", "{{.State.ExitCode}}"), "0");

    // tandem shares the app's network namespace: the app's published port is tandem's proxy.
    let body = get_ok(&p.addr(), "/");
    assert!(body.contains("hello from legacy-app"), "{body}");

    // The app logs to a file in the shared volume; tandem tails it: every line exactly once.
    let body = get_ok(&p.addr(), "/flood?lines=200");
    assert!(body.contains("wrote 200 lines"), "{body}");
    let mut counts = vec![0; 200];
    wait_until(
        "all 200 flood lines are records in `compose logs tandem`",
        || {
            counts = vec![0; 200];
            for r in p.json_logs("tandem") {
                if let Some(i) = flood_index(msg(&r), 200) {
                    assert_eq!(r["resource"]["log.file.path"], "/var/log/app/app.log");
                    assert_eq!(r["service"], "legacy-app");
                    counts[i] += 1;
                }
            }
            counts.iter().all(|c| *c >= 1)
        },
    );
    assert!(counts.iter().all(|c| *c == 1), "each line once: {counts:?}");

    // The app container restarts (docker/compose#6626): tandem, left in the old namespace,
    // fails its liveness probe, exits 69, and Docker restarts it into the new one.
    let app_id = p.container("app");
    let out = run_bounded(
        Command::new("docker").args(["restart", "--time", "5", &app_id]),
        COMMAND_LIMIT,
    );
    assert_eq!(out.code, Some(0), "docker restart: {}", out.stderr);
    wait_until("tandem exited 69 and was restarted", || {
        p.inspect("tandem", "{{.RestartCount}}") != "0"
    });
    wait_until("the proxy answers again after the app's restart", || {
        http(&p.addr(), "GET", "/", b"", &[]).is_ok_and(|(s, _, _)| s == 200)
    });
    let events = p.json_logs("tandem");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "liveness_failed" && e["exit_code"] == 69),
        "tandem left with 69"
    );
    // Its checkpoint is in the volume: the restarted tandem repeats no line.
    let get = |i: usize| {
        events
            .iter()
            .filter(|r| flood_index(msg(r), 200) == Some(i))
            .count()
    };
    assert!(
        (0..200).all(|i| get(i) == 1),
        "no line repeated after the restart"
    );

    // `compose stop`: both end cleanly (the app with its own code, tandem with 0).
    let out = p.run(&["stop"]);
    assert_eq!(out.code, Some(0), "stop: {}", out.stderr);
    assert_eq!(p.inspect("app", "{{.State.ExitCode}}"), "0");
    assert_eq!(p.inspect("tandem", "{{.State.ExitCode}}"), "0");
}

/// What extra-service mode relies on, without Docker: beside the app, a failed liveness probe
/// makes tandem exit 69 when a restart is asked for, and only warn when it is not.
#[test]
fn beside_the_app_a_failed_liveness_probe_exits_69_only_when_a_restart_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port(); // nothing listens here: the "app" is gone
    let cfg = |policy: &str| {
        let path = dir.path().join(format!("{policy}.toml"));
        std::fs::write(
            &path,
            format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n[restart]\npolicy = \"{policy}\"\n\
                 [health.liveness]\nkind = \"tcp\"\ntarget = \"127.0.0.1:{dead}\"\n\
                 interval = \"50ms\"\ntimeout = \"100ms\"\nfailure_threshold = 2\n\
                 [logs.tail]\npaths = [{:?}]\ncheckpoint = {:?}\n",
                dir.path()
                    .join(format!("{policy}.log"))
                    .display()
                    .to_string(),
                dir.path()
                    .join(format!("{policy}.ckpt"))
                    .display()
                    .to_string(),
            ),
        )
        .unwrap();
        path
    };
    let always = cfg("always");
    let mut t = crate::support::Tandem::spawn(&["--config", always.to_str().unwrap()]);
    t.wait_event("liveness_failed");
    assert_eq!(t.wait_code(), 69);

    let never = cfg("never");
    let mut t = crate::support::Tandem::spawn(&["--config", never.to_str().unwrap()]);
    let admin = t.admin_addr();
    t.wait_event("liveness_failed");
    // The admin port answers after the failure was handled: tandem stayed beside the app
    // (with a restart asked for it returns from that same step, see above).
    let (status, head, _) = http(&admin, "GET", "/healthz", b"", &[]).expect("admin answers");
    assert_eq!(status, 200, "{head}");
    assert!(
        t.child.try_wait().unwrap().is_none(),
        "still beside the app"
    );
    t.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(t.wait_code(), 0);
}
