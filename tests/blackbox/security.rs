//! Security at the edge, seen from outside the binary: an admin port reachable from other
//! hosts without a token is refused at start-up; secrets in the app's log lines reach every
//! sink redacted; `tandem check` hides credentials in URLs; the app runs as nobody while
//! tandem (root) serves a privileged port in front of it.
use std::fs;

// The edge under attack (issue 19), one file per concern, in tests/blackbox/security/.
mod config_bounds;
mod h2_floods;
mod headers;
mod protocol;
mod recording;
mod slow_reader;
mod smuggling;
mod terminal;

use crate::support::run;

/// The config-error exit code (EX_USAGE).
const CONFIG: i32 = 64;

#[test]
fn admin_on_a_non_loopback_address_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let app = format!("touch {}", marker.display());
    let (code, _, stderr) = run(&["--admin", "0.0.0.0:0", "--", "sh", "-c", &app]);
    assert_eq!(code, CONFIG, "{stderr}");
    assert!(
        stderr.contains("admin.listen") && stderr.contains("admin.token_file"),
        "the error says what to set: {stderr}"
    );
    assert!(
        !marker.exists(),
        "the app was started despite the config error"
    );
    let (code, _, stderr) = run(&["check", "--admin", "0.0.0.0:0"]);
    assert_eq!(code, CONFIG, "{stderr}");

    // With a token file it is accepted, and `tandem check` shows the path, never the token.
    let token = dir.path().join("admin-token");
    fs::write(&token, "s3cret-admin-token-0123456789\n").unwrap();
    let cfg = dir.path().join("tandem.toml");
    fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"0.0.0.0:0\"\ntoken_file = {:?}\n[app.env]\nDB_PASSWORD = \"hunter2\"\nMODE = \"prod\"\n",
            token.display()
        ),
    )
    .unwrap();
    let (code, out, stderr) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        out.contains("admin-token") && !out.contains("s3cret"),
        "{out}"
    );
    // Secret-looking values in the config are masked too; the rest is shown.
    assert!(
        !out.contains("hunter2") && out.contains("DB_PASSWORD = \"[REDACTED]\""),
        "{out}"
    );
    assert!(out.contains("\"prod\""), "{out}");

    // A token too short to be one is refused.
    fs::write(&token, "short").unwrap();
    let (code, _, stderr) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, CONFIG, "{stderr}");
    assert!(stderr.contains("admin.token_file"), "{stderr}");
}

fn assert_redacted(what: &str, text: &str) {
    for secret in [
        "abc.DEF-123",
        "hunter2",
        "AKIAIOSFODNN7EXAMPLE",
        "eyJzdWIiOiJhbGljZSJ9",
        "swordfish",
    ] {
        assert!(!text.contains(secret), "{what} holds {secret}: {text}");
    }
    assert!(text.contains("Bearer [REDACTED]"), "{what}: {text}");
    assert!(text.contains("password=[REDACTED]"), "{what}: {text}");
    assert!(
        text.contains("[REDACTED_JWT]") && text.contains("[REDACTED_AWS_KEY]"),
        "{what}: {text}"
    );
}

#[test]
fn secrets_reach_every_sink_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let cfg = dir.path().join("tandem.toml");
    fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"\"\n[logs.sinks.file]\npath = {:?}\n",
            file.display()
        ),
    )
    .unwrap();
    let script = r#"echo 'GET /orders Authorization: Bearer abc.DEF-123 user=bob password=hunter2'
echo 'jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl key AKIAIOSFODNN7EXAMPLE'
echo '{"msg":"login","password":"swordfish","auth":"Bearer abc.DEF-123"}' >&2"#;
    let (code, stdout, stderr) =
        run(&["--config", cfg.to_str().unwrap(), "--", "sh", "-c", script]);
    assert_eq!(code, 0, "{stderr}");
    assert_redacted("the stdout sink", &stdout);
    assert!(stdout.contains("\"password\":\"[REDACTED]\""), "{stdout}");
    assert_redacted("the file sink", &fs::read_to_string(&file).unwrap());
}

#[test]
fn admin_port_off_loopback_requires_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-admin-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut t = crate::support::Tandem::spawn(&[
        "--admin",
        "0.0.0.0:0",
        "--set",
        &format!("admin.token_file={}", token_file.display()),
        "--",
        "sleep",
        "1000",
    ]);
    let addr = t.wait_event("admin_listening")["addr"]
        .as_str()
        .unwrap()
        .replace("0.0.0.0", "127.0.0.1");
    let (status, head, _) = crate::support::http(&addr, "GET", "/status", b"", &[]).unwrap();
    assert_eq!(status, 401, "{head}");
    // Probes carry no secret: /readyz and /healthz answer without the token.
    let probe = crate::support::http(&addr, "GET", "/healthz", b"", &[]).unwrap();
    assert_eq!(probe.0, 200);
    let bad = crate::support::http(
        &addr,
        "GET",
        "/metrics",
        b"",
        &[("Authorization", "Bearer wrong-token-wrong-token")],
    )
    .unwrap();
    assert_eq!(bad.0, 401);
    let auth = format!("Bearer {token}");
    let (status, _, body) =
        crate::support::http(&addr, "GET", "/status", b"", &[("Authorization", &auth)]).unwrap();
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\"phase\""), "{body}");
    t.signal(nix::sys::signal::Signal::SIGTERM);
    t.wait();
}

/// A privileged port on 127.0.0.1 that is free now.
fn free_privileged_port() -> Option<u16> {
    [443u16, 80, 1023, 1000, 999, 888]
        .into_iter()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// The real uid line of `/proc/<pid>/status`: real, effective, saved, filesystem.
fn uids(pid: i32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect()
}

#[test]
fn app_runs_unprivileged_while_tandem_binds_a_privileged_port() {
    use std::os::unix::fs::PermissionsExt;

    if !crate::support::can_run(
        nix::unistd::geteuid().is_root(),
        "tandem must run as root to bind a privileged port and switch users",
    ) {
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        crate::support::can_run(false, "no user 'nobody'");
        return;
    };
    let Some(listen) = free_privileged_port() else {
        crate::support::can_run(false, "no free privileged port on 127.0.0.1");
        return;
    };
    // target/ may not be traversable by nobody: run a copy from a world-readable directory.
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let app = dir.path().join("legacy-app");
    fs::copy(crate::support::legacy_app(), &app).unwrap();
    fs::set_permissions(&app, fs::Permissions::from_mode(0o755)).unwrap();
    let port = crate::support::free_port();
    let cfg = dir.path().join("tandem.toml");
    fs::write(
        &cfg,
        format!(
            r#"
[app]
command = ["{app}", "--port", "{port}"]
user = "nobody"
stop_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[health.readiness]
kind = "http"
target = "http://127.0.0.1:{port}/health"
interval = "50ms"
timeout = "500ms"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{port}"
"#,
            app = app.display()
        ),
    )
    .unwrap();
    let mut t = crate::support::Tandem::spawn(&["--config", cfg.to_str().unwrap()]);
    t.collect_stdout();
    let proxy = t.wait_event("proxy_listening")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(proxy, format!("127.0.0.1:{listen}"));
    let pid = t.app_pid();
    t.wait_event("ready");

    // tandem holds the privileged port as root; the app runs as nobody, every uid of it.
    assert_eq!(uids(t.pid()), vec![0; 4], "tandem itself runs as root");
    assert_eq!(
        uids(pid),
        vec![nobody.uid.as_raw(); 4],
        "the app (pid {pid}) runs as nobody"
    );
    let (status, _, body) = crate::support::http(&proxy, "GET", "/", b"", &[]).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    t.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn check_redacts_url_credentials_and_names_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tandem.toml");
    let ca = dir.path().join("app-ca.pem");
    fs::write(
        &cfg,
        format!(
            r#"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:3000"
[proxy.listeners.upstream_tls]
ca_file = "{ca}"
server_name = "app.internal"
[proxy.listeners.auth.jwt]
jwks_url = "https://tandem:hunter2pw@idp.test/.well-known/jwks.json"
"#,
            ca = ca.display()
        ),
    )
    .unwrap();
    let (code, out, stderr) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!out.contains("hunter2pw"), "{out}");
    assert!(out.contains("https://[REDACTED]@idp.test/"), "{out}");
    assert!(out.contains("app-ca.pem"), "{out}");

    // A missing ca_file is named as a key.
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("ca_file = \"{}\"\n", ca.display()), "");
    fs::write(&cfg, text).unwrap();
    let (code, _, stderr) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, CONFIG, "{stderr}");
    assert!(stderr.contains("upstream_tls.ca_file"), "{stderr}");
    assert!(!stderr.contains("hunter2pw"), "{stderr}");
}

#[test]
fn events_do_not_print_secrets_from_the_command_line() {
    let (code, _, stderr) = run(&[
        "--",
        "sh",
        "-c",
        "exit 0",
        "app",
        "--password=hunter2xyz",
        "--jwks=https://bob:pw-in-url-42@idp.test/jwks",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("\"event\":\"started\""), "{stderr}");
    for secret in ["hunter2xyz", "pw-in-url-42"] {
        assert!(
            !stderr.contains(secret),
            "tandem's events hold {secret}: {stderr}"
        );
    }
}

/// A flood of failed TLS handshakes (here: plain HTTP sent to a TLS port, as a scanner or a
/// client without TLS would) is counted in full on `/metrics`, while the log gets a bounded
/// number of `tls_handshake_failed` events instead of one per connection.
#[test]
fn failed_handshakes_are_all_counted_but_logged_boundedly() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    let port = crate::support::free_port();
    let cfg = dir.path().join("tandem.toml");
    fs::write(
        &cfg,
        format!(
            r#"
[app]
command = ["{app}", "--port", "{port}"]
[admin]
listen = "127.0.0.1:0"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:{port}"
[proxy.listeners.tls]
cert = "{cert}"
key = "{key}"
"#,
            app = crate::support::legacy_app().display(),
            cert = cert_path.display(),
            key = key_path.display(),
        ),
    )
    .unwrap();
    let mut t = crate::support::Tandem::spawn(&["--config", cfg.to_str().unwrap()]);
    t.collect_stdout();
    let proxy = t.wait_event("proxy_listening")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = t.admin_addr();

    const ATTEMPTS: usize = 40;
    for _ in 0..ATTEMPTS {
        // Not TLS: the handshake fails at once and the connection is closed.
        let _ = crate::support::http(&proxy, "GET", "/", b"", &[]);
    }
    let failures = || {
        let (_, _, body) = crate::support::http(&admin, "GET", "/metrics", b"", &[]).unwrap();
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("tandem_proxy_tls_handshake_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    crate::support::eventually("every failed handshake counted", || {
        failures() >= ATTEMPTS as f64
    });
    assert_eq!(failures(), ATTEMPTS as f64);
    let logged = t
        .events()
        .iter()
        .filter(|e| e["event"] == "tls_handshake_failed")
        .count();
    assert!(logged >= 1, "the first failures are logged");
    assert!(
        logged <= 10,
        "{logged} tls_handshake_failed events for {ATTEMPTS} failures: the log is not bounded"
    );

    t.signal(nix::sys::signal::Signal::SIGTERM);
    t.wait_code();
}
