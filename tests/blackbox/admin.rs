//! The admin port: readiness follows the lifecycle, metrics count what happened, and a real
//! Prometheus scrapes them.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use nix::sys::signal::Signal;
use tandem::admin_client::get;

use crate::support::{bin, eventually, require_tool, wait_file, Tandem};

fn admin_addr(t: &Tandem) -> String {
    t.wait_event("admin_listening")["addr"]
        .as_str()
        .unwrap()
        .to_string()
}

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
    let addr = admin_addr(&t);
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
        .args(["status", "--admin", &addr])
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
    let addr = admin_addr(&t);
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
    let addr = admin_addr(&t);
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
