//! The admin port: readiness follows the lifecycle, metrics count what happened, and a real
//! Prometheus scrapes them; `tandem status` shows a table (and `--json` the raw `/status`),
//! with per-listener stats and the app's last log records, redacted and behind the token.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use nix::sys::signal::Signal;
use tandem::admin_client::get;

use crate::apps::python_http_server;
use crate::support::{bin, eventually, http, require_tool, wait_file, Tandem};

fn cli(args: &[&str]) -> i32 {
    Command::new(bin())
        .args(args)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .code()
        .unwrap()
}

#[test]
fn endpoints_follow_the_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("touch {}/ready; exec sleep 1000", dir.path().display());
    let mut t = Tandem::spawn(&[
        "--admin",
        "127.0.0.1:0",
        "--name",
        "billing",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let addr = t.admin_addr();
    wait_file(&dir.path().join("ready"));
    eventually("readyz 200", || {
        get(&addr, "/readyz").is_ok_and(|(c, _)| c == 200)
    });
    assert_eq!(get(&addr, "/healthz").unwrap().0, 200);
    let (code, body) = get(&addr, "/status").unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["service"], "billing");
    assert_eq!(status["phase"], "running");
    assert_eq!(status["app_pid"].as_i64().unwrap() as i32, t.app_pid());
    let (code, page) = get(&addr, "/").unwrap();
    assert!(
        code == 200 && page.contains("billing") && page.contains("running"),
        "{page}"
    );
    assert_eq!(get(&addr, "/nope").unwrap().0, 404);

    let (code, metrics) = get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("tandem_app_starts_total 1"), "{metrics}");
    assert!(
        metrics.contains("tandem_app_up 1") && metrics.contains("tandem_app_ready 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_lifecycle_phase{phase=\"running\"} 1"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    // The log pipeline's counters: the app wrote nothing yet.
    assert!(metrics.contains("tandem_log_lines_in_total 0"), "{metrics}");
    assert!(
        metrics.contains("tandem_log_dropped_total{sink=\"stdout\"} 0"),
        "{metrics}"
    );

    assert_eq!(cli(&["health", "--admin", &addr]), 0);
    let out = Command::new(bin())
        .args(["status", "--json", "--admin", &addr])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"phase\":\"running\""));

    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 143);
    // tandem is gone: the health check must fail, not hang.
    assert_eq!(cli(&["health", "--admin", &addr]), 1);
}

#[test]
fn not_ready_while_restarting() {
    let mut t = Tandem::spawn(&[
        "--admin",
        "127.0.0.1:0",
        "--restart",
        "on-failure",
        "--set",
        "restart.initial_delay=10m",
        "--set",
        "restart.max_delay=10m",
        "--",
        "sh",
        "-c",
        "exit 4",
    ]);
    let addr = t.admin_addr();
    t.wait_event("restarting");
    let (code, body) = get(&addr, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("restarting"), "{body}");
    assert_eq!(cli(&["health", "--admin", &addr]), 1);
    let (_, metrics) = get(&addr, "/metrics").unwrap();
    assert!(
        metrics.contains("tandem_app_exits_total{code=\"4\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tandem_app_ready 0"), "{metrics}");
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 4);
}

#[test]
fn explicit_admin_address_in_use_is_fatal() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut t = Tandem::spawn(&["--admin", &addr, "--", "true"]);
    assert_eq!(t.wait_code(), 70);
    assert!(t.event_names().contains(&"bind_failed".to_string()));
    assert!(
        !t.event_names().contains(&"started".to_string()),
        "the app must not start"
    );
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(dir: &Path, target: &str) -> (Prometheus, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tandem\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Prometheus(child), web)
}

#[test]
fn a_real_prometheus_scrapes_metrics() {
    if !require_tool("prometheus") {
        return;
    }
    let mut t = Tandem::spawn(&["--admin", "127.0.0.1:0", "--", "sleep", "1000"]);
    let addr = t.admin_addr();
    let dir = tempfile::tempdir().unwrap();
    let (_prom, web) = start_prometheus(dir.path(), &addr);
    let query = |q: &str| -> Option<String> {
        let (code, body) = get(&web, &format!("/api/v1/query?query={q}")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200)
            .then(|| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_string)
            })
            .flatten()
    };
    eventually("prometheus scraped tandem (up == 1)", || {
        query("up").as_deref() == Some("1")
    });
    eventually("prometheus has tandem_app_starts_total == 1", || {
        query("tandem_app_starts_total").as_deref() == Some("1")
    });
    assert_eq!(query("tandem_app_up").as_deref(), Some("1"));
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// The fields `/status` had before the table, which scripts read (`tandem status --json`).
const STATUS_FIELDS: [&str; 9] = [
    "service",
    "version",
    "phase",
    "ready",
    "app_pid",
    "restarts",
    "last_exit_code",
    "uptime_seconds",
    "listeners",
];

/// A card number the app writes in its request log, and the rule that hides it.
const CARD: &str = "4111111111111111";
const REDACT: &str = "[logs.redact]\npatterns = ['card=\\d{12,19}']\n";

fn status_json(addr: &str) -> serde_json::Value {
    let (code, body) = get(addr, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn status_shows_a_table_listener_stats_and_redacted_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (app, listen) = (free_port(), free_port());
    let Some(command) = python_http_server(dir.path(), app) else {
        return;
    };
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(&cfg, REDACT).unwrap();
    let proxy = format!("127.0.0.1:{listen}=127.0.0.1:{app}");
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "--name",
        "files",
        "--admin",
        "127.0.0.1:0",
        "--proxy",
        &proxy,
        "--",
    ];
    args.extend(command.iter().map(String::as_str));
    let mut t = Tandem::spawn(&args);
    t.collect_stdout();
    let addr = t.admin_addr();
    t.wait_event("ready");
    let front = format!("127.0.0.1:{listen}");
    // http.server logs every request on stderr, the query string with it.
    for _ in 0..5 {
        let (code, _, _) = http(&front, "GET", &format!("/?card={CARD}"), b"", &[]).unwrap();
        assert_eq!(code, 200);
    }
    eventually("5 requests counted, with latency, and logged", || {
        let s = status_json(&addr);
        let st = &s["listeners"][0]["stats"];
        st["requests"] == 5
            && st["latency_ms"]["p99"].as_f64().is_some()
            && s["recent_logs"].as_array().is_some_and(|l| {
                l.iter()
                    .filter(|r| r["msg"].as_str().is_some_and(|m| m.contains("GET /?")))
                    .count()
                    == 5
            })
    });
    let s = status_json(&addr);
    let l = &s["listeners"][0];
    assert_eq!(l["addr"], front.as_str(), "{s}");
    assert_eq!(l["stats"]["responses_5xx"], 0, "{s}");
    assert_eq!(l["stats"]["error_rate"], 0.0, "{s}");
    assert!(l["stats"]["rate_per_second"].as_f64().unwrap() > 0.0, "{s}");
    // The app's lines, after redaction: the rule hid the card number.
    let logs = s["recent_logs"].as_array().unwrap();
    assert!(logs.len() <= 50, "{s}");
    let line = logs
        .iter()
        .find(|r| r["msg"].as_str().unwrap().contains("GET /?"))
        .unwrap();
    assert!(
        line["msg"].as_str().unwrap().contains("[REDACTED]"),
        "{line}"
    );
    assert_eq!(line["stream"], "stderr");
    assert_eq!(line["pid"].as_i64().unwrap() as i32, t.app_pid());
    let (_, body) = get(&addr, "/status").unwrap();
    assert!(!body.contains(CARD), "{body}");
    let (code, page) = get(&addr, "/").unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains("[REDACTED]") && !page.contains(CARD),
        "{page}"
    );
    assert!(
        page.contains(&front) && page.contains("Last log records"),
        "{page}"
    );

    // The table, stdout not a terminal: no escapes.
    let out = Command::new(bin())
        .args(["status", "--admin", &addr])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(!table.contains('\x1b'), "{table:?}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("SERVICE") && lines[0].contains("PID"),
        "{table}"
    );
    let head: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(head[..3], ["files", "running", "yes"], "{table}");
    assert_eq!(head[3], t.app_pid().to_string(), "{table}");
    let row = lines
        .iter()
        .find(|l| l.contains(&front))
        .unwrap_or_else(|| panic!("no listener row: {table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // name (the listen port), address, requests, 5xx, tandem errors, ...
    assert_eq!(cells[1..5], [front.as_str(), "5", "0", "0"], "{table}");

    // --json: /status as it is, every field scripts read.
    let out = Command::new(bin())
        .args(["status", "--json", "--admin", &addr])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in STATUS_FIELDS {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    assert_eq!(v["phase"], "running");
    assert_eq!(v["app_pid"].as_i64().unwrap() as i32, t.app_pid());
    assert!(v["app_uptime_seconds"].is_u64(), "{v}");
    assert_eq!(v["listeners"][0]["addr"], front.as_str());
    assert!(v["listeners"][0]["name"].is_string());

    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn status_and_its_log_records_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "admin-token-0123456789abcdef";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n{REDACT}",
            token_file.display()
        ),
    )
    .unwrap();
    let script = format!(
        "echo 'marker-line card={CARD}'; touch {}/ready; exec sleep 1000",
        dir.path().display()
    );
    let mut t = Tandem::spawn(&["--config", cfg.to_str().unwrap(), "--", "sh", "-c", &script]);
    t.collect_stdout();
    let addr = t.admin_addr();
    wait_file(&dir.path().join("ready"));
    let bearer = format!("Bearer {token}");
    let with_token = |path: &str| {
        let (code, _, body) = http(&addr, "GET", path, b"", &[("Authorization", &bearer)]).unwrap();
        (code, String::from_utf8(body).unwrap())
    };
    eventually("the app's line on /status", || {
        with_token("/status").1.contains("marker-line")
    });
    let (code, body) = with_token("/status");
    assert_eq!(code, 200);
    assert!(
        body.contains("marker-line [REDACTED]") && !body.contains(CARD),
        "{body}"
    );
    assert!(with_token("/").1.contains("marker-line"));
    // Without the token (or with a wrong one): refused, and nothing of the records.
    for path in ["/status", "/"] {
        let (code, body) = get(&addr, path).unwrap();
        assert_eq!(code, 401, "{path}: {body}");
        assert!(!body.contains("marker-line"), "{path}: {body}");
        let (code, _, body) = http(
            &addr,
            "GET",
            path,
            b"",
            &[("Authorization", "Bearer wrong-token-0123456789")],
        )
        .unwrap();
        assert_eq!(code, 401, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("marker-line"));
    }
    // `tandem status` without the token: the refusal on stderr, exit 1, never the records.
    let out = Command::new(bin())
        .args(["status", "--admin", &addr])
        .env_remove("TANDEM_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("admin token required") && !text.contains("marker-line"),
        "{text}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("marker-line"));
    // With --token-file it shows them.
    let out = Command::new(bin())
        .args(["status", "--json", "--admin", &addr, "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("marker-line"));
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// The status page in a real headless browser (tests/browser/status_page.py: Debian's
/// chromium and chromedriver, Selenium from PyPI): the restart button restarts the app with the
/// token and the count on the page goes up; without the token the page and the action refuse.
#[test]
fn the_status_page_in_a_headless_browser_restarts_the_app_with_the_token() {
    if !require_tool("chromium") || !require_tool("chromedriver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "browser-admin-token-0123456789\n").unwrap();
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n[restart]\npolicy = \"always\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let mut t = Tandem::spawn(&["--config", cfg.to_str().unwrap(), "--", "sleep", "1000"]);
    t.collect_stdout();
    let addr = t.admin_addr();
    t.wait_event("started");

    // The action without the token, or posted from another site's page: refused.
    let (code, head, _) = http(&addr, "POST", "/admin/restart", b"", &[]).unwrap();
    assert_eq!(code, 401, "{head}");
    let bearer = "Bearer browser-admin-token-0123456789";
    let (code, head, _) = http(
        &addr,
        "POST",
        "/admin/restart",
        b"",
        &[("Authorization", bearer), ("Origin", "http://evil.example")],
    )
    .unwrap();
    assert_eq!(code, 403, "{head}");
    let (_, _, body) = http(&addr, "GET", "/status", b"", &[("Authorization", bearer)]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["restarts"], 0, "nothing restarted yet: {v}");

    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/browser/status_page.py"
        ))
        .arg(&addr)
        .arg(&token_file)
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, body) = http(&addr, "GET", "/status", b"", &[("Authorization", bearer)]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["restarts"], 1, "one restart, from the page's button: {v}");
    t.signal(Signal::SIGTERM);
    t.wait();
}
