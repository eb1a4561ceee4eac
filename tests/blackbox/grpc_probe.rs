//! The `grpc` probe kind against a real gRPC server with the standard health service
//! (tests/grpc/health_server.py: PyPI grpcio and grpcio-health-checking, installed by
//! scripts/test in target/py): readiness follows the server's SERVING / NOT_SERVING, and a
//! failing gRPC liveness probe gets the app restarted with the gRPC reason in the event.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tandem::admin_client::get;

use crate::support::{can_run, eventually, free_port, require_tool, seen, Tandem, PATIENCE};

/// Where scripts/test installs the Python packages (`pip --target`).
fn pydeps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py")
}

fn server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/grpc/health_server.py")
}

/// python3 with grpcio and its health service importable (see `support::can_run`).
fn python_grpc_health() -> bool {
    if !require_tool("python3") {
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_health.v1.health"])
        .env("PYTHONPATH", pydeps())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    can_run(
        ok,
        format_args!(
            "grpcio-health-checking is not importable from {}",
            pydeps().display()
        ),
    )
}

/// tandem with `health` (a TOML fragment) in its config, running the health server on `port`.
fn start(dir: &Path, port: u16, health: &str) -> Tandem {
    let config = dir.join("tandem.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[restart]\npolicy = \"always\"\ninitial_delay = \"100ms\"\nmax_delay = \"500ms\"\n{health}"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(crate::support::bin());
    cmd.arg("--config")
        .arg(&config)
        .arg("--")
        .arg("python3")
        .arg(server_script())
        .arg(port.to_string())
        .env("PYTHONPATH", pydeps())
        .current_dir(dir);
    let mut t = Tandem::spawn_cmd(&mut cmd);
    t.collect_stdout();
    t
}

fn readyz(admin: &str) -> Option<u16> {
    get(admin, "/readyz").ok().map(|(code, _)| code)
}

/// The app's current pid, from `/status`.
fn app_pid(admin: &str) -> i32 {
    let (_, body) = get(admin, "/status").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["app_pid"].as_i64().expect("app_pid on /status") as i32
}

#[test]
fn grpc_readiness_follows_the_health_service() {
    if !python_grpc_health() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut t = start(
        dir.path(),
        port,
        &format!(
            "[health.readiness]\nkind = \"grpc\"\ntarget = \"127.0.0.1:{port}\"\ninterval = \"100ms\"\ntimeout = \"2s\"\nfailure_threshold = 2\n"
        ),
    );
    let admin = t.admin_addr();
    eventually("ready while SERVING", || readyz(&admin) == Some(200));
    let pid = app_pid(&admin);
    assert_eq!(pid, t.app_pid(), "still the first instance");

    kill(Pid::from_raw(pid), Signal::SIGUSR1).unwrap();
    eventually("not ready once NOT_SERVING", || readyz(&admin) == Some(503));

    kill(Pid::from_raw(pid), Signal::SIGUSR2).unwrap();
    eventually("ready again once SERVING", || readyz(&admin) == Some(200));
    assert_eq!(app_pid(&admin), pid, "readiness never restarts the app");
    assert!(
        !t.event_names().iter().any(|e| e == "liveness_failed"),
        "{:?}",
        t.event_names()
    );

    t.signal(Signal::SIGTERM);
    t.wait();
}

/// A liveness probe asking about a service the server does not know (grpc-status 5,
/// NOT_FOUND) fails, and the app is stopped and started again; the event names the gRPC status.
#[test]
fn a_failing_grpc_liveness_probe_restarts_the_app_and_names_the_grpc_status() {
    if !python_grpc_health() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut t = start(
        dir.path(),
        port,
        &format!(
            "[health.readiness]\nkind = \"grpc\"\ntarget = \"127.0.0.1:{port}/tandem.Test\"\ninterval = \"100ms\"\ntimeout = \"2s\"\n\
             [health.liveness]\nkind = \"grpc\"\ntarget = \"127.0.0.1:{port}/no.such.Service\"\ninterval = \"200ms\"\ntimeout = \"2s\"\nfailure_threshold = 2\n\
             initial_delay = \"3s\"\n"
        ),
    );
    t.wait_event("started");
    // The initial delay is time for python to import grpc and listen (on a loaded machine);
    // should an instance be slower, its failure is a refused connection and the next instance
    // gets the same time: look for the gRPC failure (each wait bounded by PATIENCE, at most 50).
    let mut reasons = Vec::new();
    let failed = (0..50)
        .map(|n| t.wait_event_nth("liveness_failed", n))
        .find(|e| {
            let reason = e["reason"].as_str().unwrap_or("").to_string();
            reasons.push(reason.clone());
            reason.contains("grpc-status 5 (NOT_FOUND)")
        })
        .unwrap_or_else(|| {
            panic!("no liveness failure naming NOT_FOUND within {PATIENCE:?} each: {reasons:?}")
        });
    let failed_pid = failed["pid"].as_i64().expect("the failed instance's pid");
    // The failed instance is stopped and a new one started.
    let restarted = t.wait_event_after("started", seen(&failed));
    assert_ne!(restarted["pid"].as_i64(), Some(failed_pid), "{restarted}");

    t.signal(Signal::SIGTERM);
    t.wait();
}
