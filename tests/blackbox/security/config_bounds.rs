//! Hostile or broken config files: every one is refused before anything starts, with exit 64
//! and a message naming the file (and, where there is one, the line and key). None may panic,
//! hang or eat the host's memory.
use std::fs;

use crate::support::run;

/// The config-error exit code (EX_USAGE).
const CONFIG: i32 = 64;

/// `tandem check --config <file with text>`: (exit code, stderr).
fn check(text: impl AsRef<[u8]>) -> (i32, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tandem.toml");
    fs::write(&cfg, text).unwrap();
    let (code, _, stderr) = run(&["check", "--config", cfg.to_str().unwrap()]);
    (code, stderr, dir)
}

/// Durations that overflow a clock (`Instant + d` panics) are refused at load, naming the file,
/// line and key: in the supervisor's keys, the proxy's, and on the command line.
#[test]
fn durations_longer_than_a_year_are_refused_where_written() {
    let cases = [
        ("[app]\nstop_timeout = \"18446744073709551615s\"\n", 2, "app.stop_timeout"),
        ("[restart]\npolicy = \"always\"\ninitial_delay = \"99999999999999h\"\n", 3, "restart.initial_delay"),
        ("[shutdown]\ndelay = \"400days\"\n", 2, "shutdown.delay"),
        (
            "[[proxy.listeners]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:3000\"\n[proxy.listeners.timeouts]\nconnect = \"18446744073709551615s\"\n",
            5,
            "proxy.listeners.timeouts.connect",
        ),
        (
            "[[proxy.listeners]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:3000\"\nhold_timeout = \"99999999999999h\"\n",
            4,
            "proxy.listeners.hold_timeout",
        ),
    ];
    for (text, line, key) in cases {
        let (code, stderr, dir) = check(text);
        assert_eq!(code, CONFIG, "{text}: {stderr}");
        let file = dir.path().join("tandem.toml");
        let at = format!("{}:{line}:", file.display());
        assert!(stderr.contains(&at), "{text}: no {at} in {stderr}");
        assert!(stderr.contains(key), "{text}: no key {key} in {stderr}");
        assert!(stderr.contains("too long"), "{text}: {stderr}");
    }
    // The same value as a flag names the flag.
    let (code, _, stderr) = run(&["check", "--stop-timeout", "18446744073709551615s"]);
    assert_eq!(code, CONFIG, "{stderr}");
    assert!(stderr.contains("app.stop_timeout"), "{stderr}");
    // A year is still fine.
    let (code, stderr, _dir) = check("[app]\nstop_timeout = \"365days\"\n");
    assert_eq!(code, 0, "{stderr}");
}

