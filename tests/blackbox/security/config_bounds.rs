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

/// Runs `tandem ARGS` under a 4 GiB address-space limit (so a tandem that reads without
/// bound fails on this host instead of exhausting it), killed by PID after PATIENCE.
/// Returns (exit code, or -1 when killed by a signal; stderr).
fn run_bounded(args: &[&str]) -> (i32, String) {
    use std::io::Read as _;
    use std::process::{Command, Stdio};

    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" \"$@\"")
        .arg(crate::support::bin())
        .args(args)
        .env("TANDEM_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tandem {args:?} did not exit within {:?}",
                crate::support::PATIENCE
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    (status.code().unwrap_or(-1), stderr)
}

/// `/dev/zero`, a FIFO and a directory as `--config`: refused at once, naming the file,
/// instead of reading until memory runs out or blocking forever.
#[test]
fn config_files_must_be_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let dir_path = dir.path().to_str().unwrap().to_string();
    for path in ["/dev/zero", fifo.to_str().unwrap(), &dir_path] {
        let (code, stderr) = run_bounded(&["check", "--config", path]);
        assert_eq!(code, CONFIG, "{path}: {stderr}");
        assert!(
            stderr.contains(path) && stderr.contains("not a regular file"),
            "{path}: {stderr}"
        );
    }
    // An include is read the same way.
    let (code, stderr, _dir) = check("include = [\"/dev/zero\"]\n");
    assert_eq!(code, CONFIG, "{stderr}");
    assert!(stderr.contains("/dev/zero"), "{stderr}");
}

/// Huge, deeply nested, non-UTF-8 and self-including files: a clear error each, exit 64.
#[test]
fn hostile_config_files_get_clear_errors() {
    // 10 MB in one string: over the 4 MiB bound on a config file.
    let big = format!("[service]\nname = \"{}\"\n", "a".repeat(10 * 1024 * 1024));
    let (code, stderr, _dir) = check(&big);
    assert_eq!(code, CONFIG, "{}", &stderr[..stderr.len().min(500)]);
    assert!(
        stderr.contains("larger than"),
        "{}",
        &stderr[..stderr.len().min(500)]
    );

    // Deep nesting, in arrays and in inline tables: toml's own depth limit, no stack overflow.
    for text in [
        format!("x = {}1{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        format!("x = {}1{}\n", "{a=".repeat(100_000), "}".repeat(100_000)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("deep.toml");
        fs::write(&cfg, text).unwrap();
        let (code, stderr) = run_bounded(&["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, CONFIG, "{stderr}");
        assert!(stderr.contains("deep.toml"), "{stderr}");
    }

    // Invalid UTF-8 names the file.
    let (code, stderr, dir) = check(b"[service]\nname = \"\xff\xfe\"\n");
    assert_eq!(code, CONFIG, "{stderr}");
    let file = dir.path().join("tandem.toml");
    assert!(
        stderr.contains(file.to_str().unwrap()) && stderr.contains("UTF-8"),
        "{stderr}"
    );

    // An include cycle names the chain.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    fs::write(&a, "include = [\"b.toml\"]\n").unwrap();
    fs::write(&b, "include = [\"a.toml\"]\n").unwrap();
    let (code, _, stderr) = run(&["check", "--config", a.to_str().unwrap()]);
    assert_eq!(code, CONFIG, "{stderr}");
    assert!(
        stderr.contains("include cycle") && stderr.contains("a.toml -> "),
        "{stderr}"
    );
}
