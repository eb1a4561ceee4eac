//! Config reload applies log settings and probes to the running app (issue 16): redaction
//! switches at the next line, a new readiness probe decides readiness without a blip, a new
//! liveness probe is watched; the app keeps its pid.
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{bin, eventually, free_port, http, Tandem};

fn status(admin: &str) -> Value {
    let (code, _, b) = http(admin, "GET", "/status", b"", &[]).unwrap();
    assert_eq!(code, 200);
    serde_json::from_slice(&b).unwrap()
}

fn reload(admin: &str) -> Value {
    let out = Command::new(bin())
        .args(["reload", "--admin", admin])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tandem reload: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

fn messages(t: &Tandem) -> Vec<String> {
    t.records()
        .iter()
        .filter_map(|r| r["msg"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn reload_applies_redaction_and_probes_to_the_running_app() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let base = format!(
        "[app]\ncommand = [\"sh\", \"-c\", \"i=0; while :; do echo \\\"paid with card 4111 line $i\\\"; i=$((i+1)); sleep 0.02; done\"]\n[admin]\nlisten = \"{admin}\"\n"
    );
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, &base).unwrap();
    let mut t = Tandem::spawn(&["--config", path.to_str().unwrap()]);
    t.collect_stdout();
    eventually("the app's lines arrive", || {
        messages(&t)
            .iter()
            .any(|m| m.starts_with("paid with card 4111"))
    });
    eventually("ready", || {
        matches!(http(&admin, "GET", "/readyz", b"", &[]), Ok((200, _, _)))
    });
    let pid = status(&admin)["app_pid"].as_i64().expect("pid");

    // Redaction and a readiness probe that fails (nothing listens on its port).
    let closed = free_port();
    std::fs::write(
        &path,
        format!(
            "{base}[logs.redact]\npatterns = [\"4111\"]\n[health.readiness]\nkind = \"tcp\"\ntarget = \"127.0.0.1:{closed}\"\ninterval = \"100ms\"\nfailure_threshold = 1\n"
        ),
    )
    .unwrap();
    let result = reload(&admin);
    assert_eq!(
        result["applied"],
        serde_json::json!(["health.readiness", "logs.redact"]),
        "{result}"
    );
    assert_eq!(result["pending_restart"], serde_json::json!([]), "{result}");
    eventually("lines are redacted from the next one on", || {
        messages(&t)
            .iter()
            .any(|m| m.starts_with("paid with card [REDACTED]"))
    });
    let msgs = messages(&t);
    let first = msgs
        .iter()
        .position(|m| m.starts_with("paid with card [REDACTED]"))
        .unwrap();
    // Give the reader a few more lines, then none after the switch may carry the secret.
    let seen = msgs.len();
    eventually("more lines", || messages(&t).len() > seen + 5);
    let leaked: Vec<String> = messages(&t)[first..]
        .iter()
        .filter(|m| m.contains("4111"))
        .cloned()
        .collect();
    assert!(
        leaked.is_empty(),
        "lines after the switch not redacted: {leaked:?}"
    );
    eventually("the new readiness probe decides: not ready", || {
        matches!(http(&admin, "GET", "/readyz", b"", &[]), Ok((503, _, _)))
    });
    assert_eq!(status(&admin)["app_pid"].as_i64(), Some(pid), "same app");

    // A liveness probe that fails: watched at once, so the app is restarted.
    std::fs::write(
        &path,
        format!(
            "{base}[logs.redact]\npatterns = [\"4111\"]\n[health.liveness]\nkind = \"exec\"\ntarget = [\"false\"]\ninterval = \"100ms\"\nfailure_threshold = 1\n"
        ),
    )
    .unwrap();
    let result = reload(&admin);
    assert_eq!(
        result["applied"],
        serde_json::json!(["health.liveness", "health.readiness"]),
        "{result}"
    );
    let failed = t.wait_event("liveness_failed");
    assert_eq!(failed["pid"].as_i64(), Some(pid), "{failed}");
    t.signal(nix::sys::signal::Signal::SIGTERM);
    t.wait();
}
