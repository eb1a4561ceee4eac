//! OpenTelemetry export against receivers this project did not write: PyPI `oteltest`'s sinks
//! (gRPC and HTTP/protobuf, driven by tests/otel/receiver.py, which prints every request it
//! decodes as JSON) and the crate `fake-opentelemetry-collector` (in-process gRPC).
//!
//! Each test runs the real tandem in front of the real legacy-app: spans with the caller's
//! trace, one client span per attempt, the app's logs linked to the trace, metrics equal to
//! what a real Prometheus scrapes, a receiver down then up, and the flush at SIGTERM.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use base64::Engine;
use nix::sys::signal::Signal;
use serde_json::Value;
use tandem::admin_client::get;

use crate::support::{eventually, free_port, http, legacy_app, require_tool, Tandem, PATIENCE};

pub(crate) const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub(crate) const PARENT: &str = "00f067aa0ba902b7";

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `oteltest` is importable from scripts/test's target/py (see `support::can_run`).
pub(crate) fn require_oteltest() -> bool {
    if !require_tool("python3") {
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import oteltest.sink, grpc"])
        .env("PYTHONPATH", repo().join("target/py"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    crate::support::can_run(ok, "oteltest is not installed in target/py")
}

/// An `oteltest` receiver in a child process; every request it decodes, as JSON.
pub(crate) struct Receiver {
    child: Child,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    /// `kind`: "grpc" or "http"; listens on 127.0.0.1:`port`.
    pub(crate) fn start(kind: &str, port: u16) -> Receiver {
        Receiver::start_with(kind, port, &[])
    }

    /// [`Receiver::start`] with more of receiver.py's arguments (`--tls CERT KEY`, ...).
    pub(crate) fn start_with(kind: &str, port: u16, args: &[&str]) -> Receiver {
        let mut child = Command::new("python3")
            .arg(repo().join("tests/otel/receiver.py"))
            .args([kind, &port.to_string()])
            .args(args)
            .env("PYTHONPATH", repo().join("target/py"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the oteltest receiver");
        let stdout = child.stdout.take().expect("piped");
        let requests: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let reqs = requests.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("ready").is_some() {
                    let _ = tx.send(());
                } else {
                    reqs.lock().unwrap().push(v);
                }
            }
        });
        rx.recv_timeout(PATIENCE).expect("the receiver is ready");
        Receiver { child, requests }
    }

    pub(crate) fn of(&self, signal: &str) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["signal"] == signal)
            .cloned()
            .collect()
    }

    /// Every span received, with its resource's attributes.
    pub(crate) fn spans(&self) -> Vec<Item> {
        self.flatten("traces", "resourceSpans", "scopeSpans", "spans")
    }

    /// Every log record received, with its resource's attributes.
    pub(crate) fn logs(&self) -> Vec<Item> {
        self.flatten("logs", "resourceLogs", "scopeLogs", "logRecords")
    }

    fn flatten(&self, signal: &str, res: &str, scope: &str, items: &str) -> Vec<Item> {
        let mut out = Vec::new();
        for r in self.of(signal) {
            for rs in r["request"][res].as_array().into_iter().flatten() {
                let resource = attrs(&rs["resource"]["attributes"]);
                for ss in rs[scope].as_array().into_iter().flatten() {
                    for it in ss[items].as_array().into_iter().flatten() {
                        out.push(Item {
                            resource: resource.clone(),
                            attrs: attrs(&it["attributes"]),
                            v: it.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// The last value of each series of metric `name` in the latest push that has it, summed.
    fn metric_sum(&self, name: &str) -> Option<f64> {
        let pushes = self.of("metrics");
        for p in pushes.iter().rev() {
            for rm in p["request"]["resourceMetrics"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                    for m in sm["metrics"].as_array().into_iter().flatten() {
                        if m["name"] != name {
                            continue;
                        }
                        let points = m["sum"]["dataPoints"]
                            .as_array()
                            .or_else(|| m["gauge"]["dataPoints"].as_array())?;
                        return Some(points.iter().map(number).sum());
                    }
                }
            }
        }
        None
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A span or log record with its attributes and its resource's.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    resource: BTreeMap<String, String>,
    pub(crate) attrs: BTreeMap<String, String>,
    pub(crate) v: Value,
}

impl Item {
    /// An id field (base64 in protobuf's JSON) as hex.
    pub(crate) fn id(&self, field: &str) -> String {
        let b64 = self.v[field].as_str().unwrap_or("");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn number(p: &Value) -> f64 {
    p["asDouble"]
        .as_f64()
        .or_else(|| p["asInt"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0)
}

fn attrs(list: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kv in list.as_array().into_iter().flatten() {
        let v = &kv["value"];
        let text = v["stringValue"]
            .as_str()
            .map(str::to_string)
            .or_else(|| v["intValue"].as_str().map(str::to_string))
            .or_else(|| v["boolValue"].as_bool().map(|b| b.to_string()))
            .or_else(|| v["doubleValue"].as_f64().map(|d| d.to_string()))
            .unwrap_or_else(|| v.to_string());
        out.insert(kv["key"].as_str().unwrap_or("").to_string(), text);
    }
    out
}

/// tandem supervising legacy-app on `port` behind one proxy listener, exporting to `endpoint`.
pub(crate) fn start_tandem(dir: &Path, port: u16, telemetry: &str) -> (Tandem, String, String) {
    start_tandem_env(dir, port, telemetry, &[])
}

/// [`start_tandem`] with more variables in tandem's environment.
pub(crate) fn start_tandem_env(
    dir: &Path,
    port: u16,
    telemetry: &str,
    env: &[(&str, &str)],
) -> (Tandem, String, String) {
    let cfg = dir.join("tandem.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[service]
name = "legacy"
version = "1.2.3"
[app]
command = ["{app}", "--port", "{port}"]
stop_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[restart]
policy = "on-failure"
initial_delay = "50ms"
max_delay = "200ms"
start_limit_burst = 20
[health.readiness]
kind = "http"
target = "http://127.0.0.1:{port}/health"
interval = "50ms"
timeout = "500ms"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:{port}"
[telemetry]
{telemetry}
"#,
            app = legacy_app().display()
        ),
    )
    .unwrap();
    let mut t = Tandem::spawn_cmd(
        Command::new(crate::support::bin())
            .args(["--config", cfg.to_str().unwrap()])
            // The test's own environment must not redirect the export.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_SDK_DISABLED")
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test",
            )
            .envs(env.iter().copied()),
    );
    t.collect_stdout();
    let proxy = t.wait_event("proxy_listening")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = t.admin_addr();
    t.wait_event("ready");
    (t, proxy, admin)
}

/// A counter's value on tandem's /metrics (0 when the series does not exist yet).
pub(crate) fn scrape(admin: &str, series: &str) -> f64 {
    let (_, body) = get(admin, "/metrics").unwrap();
    body.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn grpc_spans_follow_the_callers_trace_and_show_each_attempt() {
    if !require_oteltest() {
        return;
    }
    let otlp = free_port();
    let rx = Receiver::start("grpc", otlp);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut t, proxy, _admin) = start_tandem(
        dir.path(),
        port,
        &format!(
            "endpoint = \"http://127.0.0.1:{otlp}\"\nprotocol = \"grpc\"\ntraces.batch_delay = \"100ms\"\nlogs.batch_delay = \"100ms\"\nmetrics.enabled = false\n"
        ),
    );

    // 1. A request in the caller's trace.
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let (status, head, _) = http(
        &proxy,
        "GET",
        "/",
        b"",
        &[("traceparent", &tp), ("user-agent", "otel-test/1")],
    )
    .unwrap();
    assert_eq!(status, 200, "{head}");

    // 2. A request whose first attempt dies with the app (killed mid-request): retried once
    // the app is back, so it has two attempts.
    let trace2 = "0af7651916cd43dd8448eb211c80319c";
    let tp2 = format!("00-{trace2}-b7ad6b7169203331-01");
    let proxy2 = proxy.clone();
    let slow = thread::spawn(move || {
        http(
            &proxy2,
            "GET",
            "/slow?ms=3000",
            b"",
            &[("traceparent", &tp2)],
        )
        .unwrap()
    });
    eventually("the app logged the slow request", || {
        t.records().iter().any(|r| {
            r["msg"]
                .as_str()
                .is_some_and(|m| m.contains("slow request"))
        })
    });
    let app = t.app_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(app), Signal::SIGKILL).unwrap();
    let (status, head, _) = slow.join().unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-tandem-attempt-count: 2"),
        "{head}"
    );

    // 3. A malformed traceparent starts a new trace, and the request still succeeds.
    let (status, _, _) = http(
        &proxy,
        "GET",
        "/health",
        b"",
        &[("traceparent", "00-zz-1-01")],
    )
    .unwrap();
    assert_eq!(status, 200);

    let mut spans = Vec::new();
    eventually("the spans of all three requests arrive", || {
        spans = rx.spans();
        let of = |trace: &str| spans.iter().filter(|s| s.id("traceId") == trace).count();
        of(TRACE) >= 2
            && of(trace2) >= 3
            && spans
                .iter()
                .any(|s| s.attrs.get("url.path").map(String::as_str) == Some("/health"))
    });
    // The server span: the caller's trace and parent, HTTP semantic conventions.
    let server = spans
        .iter()
        .find(|s| s.id("traceId") == TRACE && s.v["kind"] == "SPAN_KIND_SERVER")
        .expect("a server span in the caller's trace");
    assert_eq!(server.id("parentSpanId"), PARENT);
    assert_eq!(server.v["name"], "GET");
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/"),
        ("http.response.status_code", "200"),
        ("server.address", "127.0.0.1"),
        ("network.peer.address", "127.0.0.1"),
        ("user_agent.original", "otel-test/1"),
    ] {
        assert_eq!(
            server.attrs.get(k).map(String::as_str),
            Some(v),
            "{k}: {server:?}"
        );
    }
    assert_eq!(server.resource["service.name"], "legacy");
    assert_eq!(server.resource["service.version"], "1.2.3");
    assert_eq!(server.resource["deployment.environment.name"], "test");
    assert!(
        server.resource.contains_key("host.name"),
        "{:?}",
        server.resource
    );
    assert!(server.resource.contains_key("service.instance.id"));
    // One client span per attempt, children of the server span.
    let server_id = server.id("spanId");
    let clients: Vec<&Item> = spans
        .iter()
        .filter(|s| s.id("parentSpanId") == server_id)
        .collect();
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0].v["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(clients[0].attrs["server.port"], port.to_string());

    let server2 = spans
        .iter()
        .find(|s| s.id("traceId") == trace2 && s.v["kind"] == "SPAN_KIND_SERVER")
        .expect("server span of the retried request");
    let attempts: Vec<&Item> = spans
        .iter()
        .filter(|s| s.id("parentSpanId") == server2.id("spanId"))
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .any(|a| a.v["status"]["code"] == "STATUS_CODE_ERROR"
                && a.attrs.get("error.type").map(String::as_str) == Some("upstream_reset")),
        "the first attempt failed: {attempts:?}"
    );
    assert!(attempts
        .iter()
        .any(|a| a.attrs.get("http.response.status_code").map(String::as_str) == Some("200")));
    let new_trace = spans
        .iter()
        .find(|s| s.attrs.get("url.path").map(String::as_str) == Some("/health"))
        .unwrap();
    assert_ne!(new_trace.id("traceId"), "");
    assert_eq!(
        new_trace.id("parentSpanId"),
        "",
        "a new trace has no parent"
    );

    // The app received a traceparent of the same trace: it logged it, and its log record
    // arrives linked to the client span that carried it.
    let client_id = clients[0].id("spanId");
    let mut logs = Vec::new();
    eventually(
        "the app's request log line arrives linked to the trace",
        || {
            logs = rx.logs();
            logs.iter()
                .any(|l| l.id("traceId") == TRACE && l.id("spanId") == client_id)
        },
    );
    let linked = logs
        .iter()
        .find(|l| l.id("traceId") == TRACE && l.id("spanId") == client_id)
        .unwrap();
    assert_eq!(linked.v["body"]["stringValue"], "request");
    assert_eq!(linked.attrs["path"], "/");
    assert_eq!(linked.v["severityText"], "INFO");
    assert_eq!(linked.resource["service.name"], "legacy");
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn http_logs_and_metrics_match_what_prometheus_scrapes() {
    if !require_oteltest() || !require_tool("prometheus") {
        return;
    }
    let otlp = free_port();
    let rx = Receiver::start("http", otlp);
    let dir = tempfile::tempdir().unwrap();
    let (mut t, proxy, admin) = start_tandem(
        dir.path(),
        free_port(),
        &format!(
            "endpoint = \"http://127.0.0.1:{otlp}\"\nprotocol = \"http/protobuf\"\nlogs.batch_delay = \"100ms\"\ntraces.enabled = false\nmetrics.interval = \"500ms\"\n"
        ),
    );
    let sent = 7;
    for i in 0..sent {
        let (status, _, _) = http(&proxy, "GET", &format!("/?n={i}"), b"", &[]).unwrap();
        assert_eq!(status, 200);
    }
    // A real Prometheus scraping /metrics.
    let prom_dir = dir.path().join("prom");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tandem\n    static_configs:\n      - targets: ['{admin}']\n"),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            prom_dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = |q: &str| -> Option<f64> {
        let (code, body) = get(&web, &format!("/api/v1/query?query={q}")).ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200).then_some(())?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let want = f64::from(sent);
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    let (mut via_prom, mut via_otlp) = (None, None);
    while std::time::Instant::now() < deadline {
        via_prom = query("sum(tandem_proxy_requests_total)");
        via_otlp = rx.metric_sum("tandem_proxy_requests");
        if via_prom == Some(want) && via_otlp == Some(want) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(via_prom, Some(want), "Prometheus sees every request");
    assert_eq!(via_otlp, Some(want), "the OTLP push says the same");
    // The same families, not a parallel set: a gauge and the drop counters too.
    assert_eq!(rx.metric_sum("tandem_app_up"), Some(1.0));
    let pushes = rx.of("metrics");
    let resource = attrs(&pushes[0]["request"]["resourceMetrics"][0]["resource"]["attributes"]);
    assert_eq!(resource["service.name"], "legacy");

    // The app's log lines, over HTTP/protobuf, with the resource attributes.
    let mut logs = Vec::new();
    eventually("the app's log lines arrive", || {
        logs = rx.logs();
        logs.iter()
            .filter(|l| l.v["body"]["stringValue"] == "request")
            .count()
            >= sent as usize
    });
    let l = logs
        .iter()
        .find(|l| l.v["body"]["stringValue"] == "request")
        .unwrap();
    assert_eq!(l.resource["service.name"], "legacy");
    assert_eq!(l.resource["deployment.environment.name"], "test");
    assert!(l.resource.contains_key("host.name"));
    assert_eq!(l.attrs["log.iostream"], "stdout");
    assert_eq!(l.v["severityNumber"], "SEVERITY_NUMBER_INFO");
    assert!(l.v["observedTimeUnixNano"].as_str().is_some());
    assert!(l.v["timeUnixNano"].as_str().is_some(), "the line's own ts");
    assert_eq!(rx.of("traces").len(), 0, "traces.enabled = false");
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// VmRSS of `pid` in kB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

#[test]
fn receiver_down_then_up_drops_are_counted_and_export_resumes() {
    if !require_oteltest() {
        return;
    }
    // The receiver's port is chosen now, but nothing listens there yet.
    let otlp = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (mut t, proxy, admin) = start_tandem(
        dir.path(),
        free_port(),
        &format!(
            "endpoint = \"http://127.0.0.1:{otlp}\"\nprotocol = \"http/protobuf\"\ntimeout = \"1s\"\nretry_for = \"1s\"\ntraces.queue_size = 32\ntraces.batch_size = 8\ntraces.batch_delay = \"50ms\"\nlogs.queue_size = 32\nlogs.batch_size = 8\nmetrics.enabled = false\n"
        ),
    );
    // While it is down tandem keeps serving, and what it cannot hold is counted.
    let mut peak = 0;
    for round in 0..4 {
        for _ in 0..100 {
            let (status, _, _) = http(&proxy, "GET", "/", b"", &[]).unwrap();
            assert_eq!(status, 200);
        }
        let rss = rss_kb(t.pid());
        if round == 0 {
            peak = rss;
        }
        // Memory is bounded by the queues: 300 more requests' spans and logs did not pile up.
        assert!(
            rss < peak + 16 * 1024,
            "RSS grew from {peak} kB to {rss} kB while the receiver was down"
        );
    }
    eventually("spans were dropped and counted on /metrics", || {
        scrape(&admin, "tandem_otlp_dropped_total{signal=\"traces\"") > 0.0
    });
    assert!(scrape(&admin, "tandem_otlp_dropped_total{signal=\"logs\"") > 0.0);
    // The failed export is counted when its request comes back, which may be after the queue
    // already dropped: the two counters are read until both moved, not at one instant.
    eventually("a failed export request was counted on /metrics", || {
        scrape(
            &admin,
            "tandem_otlp_failed_requests_total{signal=\"traces\"}",
        ) > 0.0
    });
    assert_eq!(
        scrape(&admin, "tandem_otlp_exported_total{signal=\"traces\"}"),
        0.0
    );

    // The receiver comes up: export resumes without a restart of tandem.
    let rx = Receiver::start("http", otlp);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    eventually("a span sent after the receiver came up arrives", || {
        let _ = http(&proxy, "GET", "/health", b"", &[("traceparent", &tp)]);
        thread::sleep(Duration::from_millis(200));
        rx.spans().iter().any(|s| s.id("traceId") == TRACE)
    });
    assert!(scrape(&admin, "tandem_otlp_exported_total{signal=\"traces\"}") > 0.0);
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// A receiver that accepts and then never answers (`Hang`), or answers every connection with
/// bytes that are not HTTP (`Garbage`): the fault matrix's "OTLP backend slow or answering
/// garbage". Serves until the test ends (its thread is detached).
#[derive(Clone, Copy, Debug)]
enum BadReceiver {
    Hang,
    Garbage,
}

fn bad_receiver(kind: BadReceiver) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for conn in l.incoming().flatten() {
            match kind {
                BadReceiver::Hang => held.push(conn),
                BadReceiver::Garbage => {
                    use std::io::{Read, Write};
                    let mut conn = conn;
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut buf = [0u8; 65536];
                    let _ = conn.read(&mut buf);
                    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
                    let _ = conn.write_all(b"\x16\x03\x01garbage\r\n\r\n");
                    let _ = conn.write_all(&junk);
                }
            }
        }
    });
    port
}

/// The OTLP backend hangs or answers garbage, over both protocols: the app's traffic is
/// unaffected, memory stays bounded by the queues, every failed export is counted, and SIGTERM
/// still ends tandem within its shutdown timeout (the flush gives up, it does not wait).
#[test]
fn hanging_or_garbage_receivers_never_slow_the_app_and_failures_are_counted() {
    for kind in [BadReceiver::Hang, BadReceiver::Garbage] {
        for protocol in ["http/protobuf", "grpc"] {
            let otlp = bad_receiver(kind);
            let dir = tempfile::tempdir().unwrap();
            let (mut t, proxy, admin) = start_tandem(
                dir.path(),
                free_port(),
                &format!(
                    "endpoint = \"http://127.0.0.1:{otlp}\"\nprotocol = \"{protocol}\"\ntimeout = \"500ms\"\nretry_for = \"500ms\"\nshutdown_timeout = \"2s\"\ntraces.queue_size = 32\ntraces.batch_size = 8\ntraces.batch_delay = \"50ms\"\nlogs.queue_size = 32\nlogs.batch_size = 8\nmetrics.interval = \"200ms\"\n"
                ),
            );
            let mut first = 0;
            for round in 0..4 {
                for _ in 0..100 {
                    let (status, _, _) = http(&proxy, "GET", "/", b"", &[]).unwrap();
                    assert_eq!(status, 200, "{kind:?} {protocol}");
                }
                let rss = rss_kb(t.pid());
                if round == 0 {
                    first = rss;
                }
                assert!(
                    rss < first + 16 * 1024,
                    "{kind:?} {protocol}: RSS grew from {first} kB to {rss} kB"
                );
            }
            eventually("failed exports are counted", || {
                scrape(
                    &admin,
                    "tandem_otlp_failed_requests_total{signal=\"traces\"}",
                ) > 0.0
            });
            assert_eq!(
                scrape(&admin, "tandem_otlp_exported_total{signal=\"traces\"}"),
                0.0,
                "{kind:?} {protocol}: nothing counts as exported"
            );
            let stop = std::time::Instant::now();
            t.signal(Signal::SIGTERM);
            let code = t.wait_code();
            assert_eq!(code, 0, "{kind:?} {protocol}");
            // shutdown_timeout (2 s) bounds the flush; the app's own stop is quick.
            assert!(
                stop.elapsed() < Duration::from_secs(15),
                "{kind:?} {protocol}: stop took {:?}",
                stop.elapsed()
            );
        }
    }
}

#[test]
fn sigterm_flushes_the_last_spans_and_logs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut collector = rt
        .block_on(fake_opentelemetry_collector::FakeCollectorServer::start())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Batches would wait a minute: only the flush at stop can deliver them in time.
    let (mut t, proxy, _admin) = start_tandem(
        dir.path(),
        free_port(),
        &format!(
            "endpoint = \"{}\"\nprotocol = \"grpc\"\ntraces.batch_delay = \"60s\"\nlogs.batch_delay = \"60s\"\nmetrics.interval = \"60s\"\nshutdown_timeout = \"10s\"\n",
            collector.endpoint()
        ),
    );
    let traces = [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
    ];
    for tr in traces {
        let tp = format!("00-{tr}-{PARENT}-01");
        let (status, _, _) = http(&proxy, "GET", "/", b"", &[("traceparent", &tp)]).unwrap();
        assert_eq!(status, 200);
    }
    t.signal(Signal::SIGTERM);
    t.wait();
    let flushed = t.wait_event("otlp_flushed");
    assert_eq!(flushed["traces"], true, "{flushed}");
    assert_eq!(flushed["logs"], true, "{flushed}");
    // tandem has exited: everything below was sent before it did.
    let spans = rt.block_on(collector.exported_spans(6, Duration::from_secs(2)));
    for tr in traces {
        let of_trace: Vec<_> = spans.iter().filter(|s| s.trace_id == tr).collect();
        assert!(
            of_trace.iter().any(|s| s.kind == "SPAN_KIND_SERVER"
                && s.parent_span_id == PARENT
                // The fake collector keeps attribute values in their Debug form.
                && s.attributes
                    .get("http.response.status_code")
                    .is_some_and(|v| v.contains("IntValue(200)"))),
            "{tr}: {of_trace:?}"
        );
        assert!(of_trace.iter().any(|s| s.kind == "SPAN_KIND_CLIENT"));
    }
    let logs = rt.block_on(collector.exported_logs(3, Duration::from_secs(2)));
    for tr in traces {
        assert!(
            logs.iter().any(|l| l.trace_id == tr),
            "the app's last log lines, linked to {tr}: {logs:?}"
        );
    }
    // The last metrics push carries the final request count.
    let metrics = rt.block_on(collector.exported_metrics(1, Duration::from_secs(2)));
    assert!(!metrics.is_empty(), "a last metrics push at stop");
}

#[test]
fn bad_telemetry_settings_are_errors_naming_the_key_or_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "[app]\ncommand = [\"true\"]\n[telemetry]\nendpoint = \"http://127.0.0.1:4317\"\nprotocol = \"udp\"\n",
    )
    .unwrap();
    let (code, _, err) = crate::support::run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("telemetry.protocol"), "{err}");
    // A malformed standard variable stops tandem before anything starts, naming it.
    let out = Command::new(crate::support::bin())
        .args(["--admin", "", "--", "true"])
        .env("TANDEM_LOG_FORMAT", "json")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_TRACES_SAMPLER", "sometimes")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("OTEL_TRACES_SAMPLER"), "{err}");
    // A CA file that is not there: exit 64 naming the variable and the file.
    let out = Command::new(crate::support::bin())
        .args(["--admin", "", "--", "true"])
        .env("TANDEM_LOG_FORMAT", "json")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE: /nonexistent/ca.pem"),
        "{err}"
    );
}
