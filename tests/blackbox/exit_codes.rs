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
