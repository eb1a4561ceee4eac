//! Signals: forwarded ones reach the app; stop signals run the stop sequence in order.
use std::path::Path;

use nix::sys::signal::Signal;

use crate::support::{eventually, wait_file, Tandem};

/// A shell app that records the signals it traps into `dir/log` and says when it is ready.
fn recorder(dir: &Path, traps: &str) -> String {
    format!(
        "cd {dir}; {traps}; touch ready; while :; do sleep 0.1 & wait $!; done",
        dir = dir.display()
    )
}

#[test]
fn forwarded_signal_reaches_the_app_and_term_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = recorder(
        dir.path(),
        "trap 'echo usr1 >> log' USR1; trap 'echo term >> log; exit 0' TERM",
    );
    let mut t = Tandem::spawn(&["--", "sh", "-c", &script]);
    wait_file(&dir.path().join("ready"));
    t.signal(Signal::SIGUSR1);
    let log = dir.path().join("log");
    eventually("app recorded USR1", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("usr1")
    });
    t.wait_event("signal_forwarded");
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 0);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "usr1\nterm\n");
    t.assert_order(&["stopping", "stop_signal_sent", "exited"]);
}

#[test]
fn custom_stop_signal_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let script = recorder(
        dir.path(),
        "trap 'echo term >> log; exit 1' TERM; trap 'echo quit >> log; exit 3' QUIT",
    );
    let mut t = Tandem::spawn(&["--stop-signal", "SIGQUIT", "--", "sh", "-c", &script]);
    wait_file(&dir.path().join("ready"));
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 3);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log")).unwrap(),
        "quit\n"
    );
    assert_eq!(t.wait_event("stop_signal_sent")["signal"], "SIGQUIT");
}

#[test]
fn app_ignoring_term_is_killed_after_stop_timeout_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let script = recorder(dir.path(), "trap '' TERM");
    let mut t = Tandem::spawn(&["--stop-timeout", "1500ms", "--", "sh", "-c", &script]);
    wait_file(&dir.path().join("ready"));
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 137);
    t.assert_order(&["stop_signal_sent", "killed", "exited"]);
    let killed = t.wait_event("killed");
    assert_eq!(killed["reason"], "stop_timeout");
    assert!(
        killed["elapsed_ms"].as_u64().unwrap() >= 1500,
        "killed before stop_timeout: {killed}"
    );
}

#[test]
fn second_stop_signal_kills_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let script = recorder(dir.path(), "trap '' TERM INT");
    // A stop_timeout far beyond the test's patience: only the second signal can end this.
    let mut t = Tandem::spawn(&["--stop-timeout", "10m", "--", "sh", "-c", &script]);
    wait_file(&dir.path().join("ready"));
    t.signal(Signal::SIGTERM);
    t.wait_event("stop_signal_sent");
    t.signal(Signal::SIGINT);
    assert_eq!(t.wait_code(), 137);
    assert_eq!(t.wait_event("killed")["reason"], "second_stop_signal");
}

#[test]
fn the_same_stop_signal_delivered_twice_at_once_is_one_request() {
    // GNU timeout signals the process and its group: two SIGTERMs a few µs apart.
    let dir = tempfile::tempdir().unwrap();
    let script = recorder(dir.path(), "trap 'sleep 0.5; exit 0' TERM");
    let mut t = Tandem::spawn(&["--", "sh", "-c", &script]);
    wait_file(&dir.path().join("ready"));
    t.signal(Signal::SIGTERM);
    t.signal(Signal::SIGTERM);
    assert_eq!(
        t.wait_code(),
        0,
        "the app was killed: {:?}",
        t.event_names()
    );
    assert!(!t.event_names().contains(&"killed".to_string()));
}

/// Each signal a user, a terminal or `systemctl reload` commonly sends to tandem, with nothing
/// forwarded: tandem keeps running (the app too), and a SIGTERM afterwards still runs the
/// whole stop sequence. Before, SIGHUP (and USR1, USR2, ALRM) ended tandem by the signal's
/// default action: no stop sequence, no log flush.
#[test]
fn signals_tandem_owns_never_end_it_when_not_forwarded() {
    for sig in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGALRM,
        Signal::SIGWINCH,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let script = recorder(dir.path(), "trap 'echo term >> log; exit 0' TERM");
        let mut t = Tandem::spawn(&["--set", "app.forward_signals=[]", "--", "sh", "-c", &script]);
        wait_file(&dir.path().join("ready"));
        t.signal(sig);
        if sig == Signal::SIGHUP {
            // HUP is tandem's own reload whether or not it is forwarded.
            t.wait_event("reloaded");
        } else {
            assert_eq!(t.wait_event("signal_ignored")["signal"], sig.as_str());
        }
        assert!(
            t.child.try_wait().unwrap().is_none(),
            "{sig} ended tandem: {:?}",
            t.event_names()
        );
        t.signal(Signal::SIGTERM);
        assert_eq!(t.wait_code(), 0, "{sig}: {:?}", t.event_names());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "term\n",
            "{sig}: the app got a signal it was not meant to"
        );
        t.assert_order(&["stopping", "stop_signal_sent", "exited"]);
    }
}

/// With HUP in the forward list (the default), tandem reloads its own files and the app gets
/// the HUP too.
#[test]
fn hup_is_both_tandems_reload_and_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let script = recorder(
        dir.path(),
        "trap 'echo hup >> log' HUP; trap 'echo term >> log; exit 0' TERM",
    );
    let mut t = Tandem::spawn(&["--", "sh", "-c", &script]);
    wait_file(&dir.path().join("ready"));
    t.signal(Signal::SIGHUP);
    let log = dir.path().join("log");
    eventually("app recorded HUP", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("hup")
    });
    t.wait_event("reloaded");
    t.wait_event("signal_forwarded");
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 0);
}
