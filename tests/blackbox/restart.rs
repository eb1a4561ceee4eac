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
