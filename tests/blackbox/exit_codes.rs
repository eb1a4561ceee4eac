//! Exit codes: the app's own, 128+N for signal N, and tandem's documented codes.
use crate::support::run;

#[test]
fn app_exit_code_is_passed_through() {
    for code in [0, 1, 7, 42, 255] {
        let (got, _, err) = run(&["--", "sh", "-c", &format!("exit {code}")]);
        assert_eq!(got, code, "{err}");
    }
}

#[test]
fn signal_death_is_128_plus_n() {
    let (got, _, err) = run(&["--", "sh", "-c", "kill -SEGV $$"]);
    assert_eq!(got, 139, "{err}");
    let (got, _, err) = run(&["--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(got, 137, "{err}");
}

#[test]
fn command_not_found_is_127() {
    let (got, _, err) = run(&["--", "/nonexistent/app"]);
    assert_eq!(got, 127, "{err}");
    assert!(err.contains("command not found: /nonexistent/app"), "{err}");
}

#[test]
fn not_executable_is_126() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.txt");
    std::fs::write(&path, "not a program").unwrap();
    let (got, _, err) = run(&["--", path.to_str().unwrap()]);
    assert_eq!(got, 126, "{err}");
}

#[test]
fn a_script_without_a_shebang_runs_through_sh_as_execvp_runs_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("no-shebang");
    let out = dir.path().join("out");
    std::fs::write(&script, format!("echo \"ran $1\" > {}\n", out.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (got, _, err) = run(&["--", script.to_str().unwrap(), "arg1"]);
    assert_eq!(got, 0, "{err}");
    assert_eq!(std::fs::read_to_string(out).unwrap().trim(), "ran arg1");
}

#[test]
fn the_app_is_looked_up_in_its_own_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let out = dir.path().join("out");
    let app = bin.join("tandem-test-only-here");
    std::fs::write(&app, format!("#!/bin/sh\necho found > {}\n", out.display())).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    // not in tandem's PATH: only the one app.env gives the app
    let path = format!("PATH=/nonexistent::{}:/usr/bin:/bin", bin.display());
    let (got, _, err) = run(&["-e", &path, "--", "tandem-test-only-here"]);
    assert_eq!(got, 0, "{err}");
    assert_eq!(std::fs::read_to_string(out).unwrap().trim(), "found");
    let (got, _, err) = run(&["--", "tandem-test-only-here"]);
    assert_eq!(got, 127, "{err}");
}

#[test]
fn the_app_starts_in_its_own_group_with_no_signal_blocked_and_sigpipe_at_its_default() {
    // tandem blocks signals in its threads and ignores SIGPIPE; the app inherits neither
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // `exec`: cat reads its own state as the app started (no fork of sh in between, which
    // blocks every signal for a moment)
    let script = format!(
        "exec cat /proc/self/stat /proc/self/status > {}",
        out.display()
    );
    let (got, _, err) = run(&["--", "sh", "-c", &script]);
    assert_eq!(got, 0, "{err}");
    let text = std::fs::read_to_string(out).unwrap();
    let stat = text.lines().next().unwrap();
    let pid: i32 = stat.split_whitespace().next().unwrap().parse().unwrap();
    // after "(comm)": state, ppid, pgrp
    let pgrp: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pgrp, pid, "{stat}");
    let mask = |field: &str| {
        let line = text.lines().find(|l| l.starts_with(field)).unwrap();
        u64::from_str_radix(line.trim_start_matches(field).trim(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{text}");
    // SIGPIPE (13) at its default; what tandem's own parent ignored stays ignored, as across
    // fork and exec
    assert_eq!(mask("SigIgn:") & (1 << (13 - 1)), 0, "{text}");
}

#[test]
fn workdir_and_env_reach_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = format!("echo \"$(pwd) $GREETING\" > {}", out.display());
    let (got, _, err) = run(&[
        "--workdir",
        "/tmp",
        "-e",
        "GREETING=hello",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(got, 0, "{err}");
    assert_eq!(std::fs::read_to_string(out).unwrap().trim(), "/tmp hello");
}

#[test]
fn version_and_help() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Exit codes") && out.contains("--stop-timeout"),
        "{out}"
    );
    let (code, _, err) = run(&["--no-such-flag"]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn app_runs_as_another_user() {
    if !crate::support::can_run(
        nix::unistd::geteuid().is_root(),
        "needs root to switch users",
    ) {
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        crate::support::can_run(false, "no user 'nobody'");
        return;
    };
    let (code, out, err) = run(&[
        "--user",
        "nobody",
        "--",
        "sh",
        "-c",
        "echo \"$(id -u) $(id -g) $USER\" >&2; exit 0",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let expect = format!("{} {} nobody", nobody.uid, nobody.gid);
    // The app's stderr reaches tandem's stdout as a log record (the log pipeline).
    assert!(
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|r| r["msg"] == expect.as_str() && r["stream"] == "stderr"),
        "expected a record {expect:?} in {out}"
    );
    let (code, _, err) = run(&["--user", "no-such-user-here", "--", "true"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no-such-user-here"), "{err}");
}
