//! Config errors name file, line and key; `tandem check` shows where each value came from.
use std::process::Command;

use crate::support::{bin, run};

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn expect_error(text: &str, line: usize, key: &str) {
    let f = config_file(text);
    let path = f.path().to_str().unwrap();
    let (code, _, err) = run(&["--config", path, "--", "true"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains(path), "no file name in: {err}");
    assert!(
        err.contains(&format!(":{line}:")),
        "no line {line} in: {err}"
    );
    assert!(err.contains(key), "no key {key} in: {err}");
}

#[test]
fn unknown_key() {
    expect_error(
        "[app]\nstop_timeout = \"5s\"\nstop_timout = \"5s\"\n",
        3,
        "app.stop_timout",
    );
}

#[test]
fn wrong_type() {
    expect_error(
        "[restart]\npolicy = \"always\"\nstart_limit_burst = \"lots\"\n",
        3,
        "restart.start_limit_burst",
    );
}

#[test]
fn bad_duration() {
    expect_error(
        "[app]\n\nstop_timeout = \"ten seconds\"\n",
        3,
        "app.stop_timeout",
    );
}

#[test]
fn bad_value() {
    expect_error("[restart]\npolicy = \"sometimes\"\n", 2, "restart.policy");
}

#[test]
fn missing_command_is_a_usage_error() {
    let (code, _, err) = run(&[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no command"), "{err}");
}

#[test]
fn check_prints_merged_config_with_sources() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("platform.toml"),
        "[app]\nstop_timeout = \"20s\"\n[restart]\nmax_delay = \"2m\"\n",
    )
    .unwrap();
    let svc = dir.path().join("service.toml");
    std::fs::write(&svc, "include = [\"platform.toml\"]\n[service]\nname = \"billing\"\n[app]\ncommand = [\"./billing\"]\n").unwrap();
    let out = Command::new(bin())
        .args([
            "check",
            "--config",
            svc.to_str().unwrap(),
            "--stop-timeout",
            "3s",
        ])
        .env("TANDEM_RESTART_POLICY", "always")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("stop_timeout = \"3s\"  # flag --stop-timeout"),
        "{text}"
    );
    assert!(
        text.contains("policy = \"always\"  # env TANDEM_RESTART_POLICY"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "max_delay = \"2m\"  # file {}",
            dir.path().join("platform.toml").display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("name = \"billing\"  # file {}", svc.display())),
        "{text}"
    );
    assert!(text.contains("jitter = 0.2  # default"), "{text}");
}

#[test]
fn bad_environment_variable_is_named() {
    let out = Command::new(bin())
        .args(["--", "true"])
        .env("TANDEM_APP_STOP_TIMEOUT", "soon")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("TANDEM_APP_STOP_TIMEOUT"), "{err}");
}

/// The `error` of the one `config_error` event in tandem's JSON stderr.
fn config_error(stderr: &str) -> String {
    let errors: Vec<String> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "config_error")
        .map(|e| e["error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].clone()
}

#[test]
fn late_errors_name_file_line_and_key_in_run_and_check() {
    // Errors found only after the layers are merged (a pattern compiled, the admin token file
    // read, an OTLP header's value, which only the exporter's start checked before): `tandem
    // check` and a run report the same `file:line: key:` and exit with the same code, 64.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let cases = [
        (
            "[logs.stderr.multiline]\npreset = \"custom\"\nstart = \"([\"\n",
            3,
            "logs.stderr.multiline.start",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:0\"\n\ntoken_file = \"/nonexistent/tandem-token\"\n",
            4,
            "admin.token_file",
        ),
        (
            "[telemetry]\nendpoint = \"http://127.0.0.1:9\"\n[telemetry.headers]\n\"x-api-key\" = \"a\\u0001b\"\n",
            4,
            "telemetry.headers.x-api-key",
        ),
    ];
    for (text, line, key) in cases {
        let f = config_file(text);
        let path = f.path().to_str().unwrap();
        let want = format!("{path}:{line}: {key}: ");
        let (check_code, _, check_err) = run(&["check", "--config", path]);
        let (run_code, _, run_err) =
            run(&["--config", path, "--", "touch", marker.to_str().unwrap()]);
        assert_eq!(check_code, 64, "check: {check_err}");
        assert_eq!(run_code, check_code, "run: {run_err}");
        let (check_msg, run_msg) = (config_error(&check_err), config_error(&run_err));
        assert!(check_msg.starts_with(&want), "{want} in: {check_msg}");
        assert_eq!(run_msg, check_msg);
        assert!(!marker.exists(), "the app ran despite: {run_msg}");
    }
}

#[test]
fn shipped_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for cfg in ["examples/tandem.toml", "systemd/legacy-app.toml"] {
        let path = root.join(cfg);
        let (code, out, err) = run(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{cfg}: {err}");
        assert!(out.contains("[app]"), "{cfg}: {out}");
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if !crate::support::require_tool("systemd-analyze") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("systemd/verify.sh"))
        .env("TANDEM_BIN", bin())
        .env("LEGACY_APP_BIN", crate::support::legacy_app())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
