//! The OTLP pass-through: a real instrumented app (the OpenTelemetry Python SDK from PyPI)
//! exports to the endpoint tandem injects, and a receiver tandem did not write (PyPI
//! `oteltest`'s sinks, via tests/otel/passthrough_sink.py) gets the app's telemetry with
//! tandem's resource attributes added and the app's own kept.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::support::{eventually, free_port, http, require_tool, wait_file, Tandem};

/// Where scripts/test installs the Python packages (`pip --target`).
fn pydeps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/otel")
        .join(name)
}

/// python3 with the OpenTelemetry SDK, its OTLP exporters and oteltest importable (see
/// `support::can_run`).
fn python_otel() -> bool {
    if !require_tool("python3") {
        return false;
    }
    let ok = Command::new("python3")
        .args([
            "-c",
            "import oteltest.sink, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http",
        ])
        .env("PYTHONPATH", pydeps())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    crate::support::can_run(
        ok,
        format_args!(
            "the Python OpenTelemetry packages are not importable from {}",
            pydeps().display()
        ),
    )
}

/// A running oteltest sink; killed (by pid) when dropped.
struct Sink {
    child: Child,
    out: PathBuf,
}

impl Sink {
    fn start(dir: &Path, protocol: &str, port: u16) -> Sink {
        let out = dir.join(format!("sink-{protocol}.jsonl"));
        let child = Command::new("python3")
            .arg(script("passthrough_sink.py"))
            .args([protocol, &port.to_string()])
            .arg(&out)
            .env("PYTHONPATH", pydeps())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the sink");
        wait_file(&PathBuf::from(format!("{}.ready", out.display())));
        Sink { child, out }
    }

    /// Requests received so far.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait for a `signal` request; return it.
    fn wait(&self, signal: &str) -> Value {
        let mut found = None;
        eventually(&format!("the sink received {signal}"), || {
            found = self.requests().into_iter().find(|r| r["signal"] == signal);
            found.is_some()
        });
        found.expect("found")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resource attributes of the first resource in an OTLP JSON request, as key → string.
fn resource(req: &Value, list: &str) -> std::collections::BTreeMap<String, String> {
    req["request"][list][0]["resource"]["attributes"]
        .as_array()
        .expect("resource attributes")
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap_or("").to_string(),
                kv["value"]["stringValue"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

fn span_names(req: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for rs in req["request"]["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(s["name"].as_str().unwrap_or("").to_string());
            }
        }
    }
    out
}

/// tandem with the pass-through on free ports; `extra` is more of `[telemetry.passthrough]`.
fn tandem(dir: &Path, extra: &str, env: &[(&str, &str)], command: &[&str]) -> (Tandem, Ports) {
    let ports = Ports {
        grpc: free_port(),
        http: free_port(),
        admin: free_port(),
    };
    let config = dir.join("tandem.toml");
    std::fs::write(
        &config,
        format!(
            "[service]\nname = \"shop\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n[telemetry.passthrough]\nenabled = true\ngrpc_listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\n{extra}\n",
            ports.admin, ports.grpc, ports.http
        ),
    )
    .unwrap();
    let mut cmd = Command::new(crate::support::bin());
    cmd.arg("--config").arg(&config).arg("--").args(command);
    cmd.env("PYTHONPATH", pydeps()).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") || k.starts_with("NOMAD_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut t = Tandem::spawn_cmd(&mut cmd);
    t.collect_stdout();
    (t, ports)
}

struct Ports {
    grpc: u16,
    http: u16,
    admin: u16,
}

fn app(spans: &[&str]) -> Vec<String> {
    let mut v = vec![
        "python3".to_string(),
        script("passthrough_app.py").display().to_string(),
    ];
    v.extend(spans.iter().map(|s| s.to_string()));
    v
}

fn metrics(admin: u16) -> String {
    let (_, _, body) = http(&format!("127.0.0.1:{admin}"), "GET", "/metrics", b"", &[]).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

fn printed(t: &Tandem, what: &str) -> bool {
    t.records()
        .iter()
        .any(|r| r["msg"].as_str().is_some_and(|m| m.starts_with(what)))
}

#[test]
fn a_grpc_app_reaches_an_http_receiver_with_tandems_resource() {
    if !python_otel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port();
    let sink = Sink::start(dir.path(), "http", sink_port);
    let endpoint = format!("endpoint = \"http://127.0.0.1:{sink_port}\"\nprotocol = \"http/protobuf\"\napp_protocol = \"grpc\"");
    let cmd = app(&["checkout", "pay"]);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (mut t, ports) = tandem(dir.path(), &endpoint, &[], &cmd);
    assert_eq!(t.wait_code(), 0);
    assert!(
        printed(&t, &format!("endpoint http://127.0.0.1:{}", ports.grpc)),
        "{:?}",
        t.records()
    );
    assert!(printed(&t, "exported"));

    let traces = sink.wait("traces");
    assert_eq!(span_names(&traces), ["checkout", "pay"]);
    let r = resource(&traces, "resourceSpans");
    // The app's own attributes are kept (but the instance is tandem's: the SDK makes one
    // up)...
    assert_eq!(r["service.name"], "py-app");
    assert_eq!(r["app.flavour"], "vanilla");
    assert_eq!(r["telemetry.sdk.name"], "opentelemetry");
    // ...and tandem's are added.
    assert!(
        r["service.instance.id"].ends_with(&format!("-{}", t.pid())),
        "{r:?}"
    );
    assert!(!r["host.name"].is_empty(), "{r:?}");
    assert!(
        !r.contains_key("process.pid"),
        "tandem's pid is not the app's: {r:?}"
    );
    let logs = sink.wait("logs");
    assert_eq!(
        resource(&logs, "resourceLogs")["service.instance.id"],
        r["service.instance.id"]
    );
    let metrics = sink.wait("metrics");
    assert_eq!(
        resource(&metrics, "resourceMetrics")["app.flavour"],
        "vanilla"
    );
}

#[test]
fn an_http_app_reaches_a_grpc_receiver_through_tandems_otel_env() {
    if !python_otel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port();
    let sink = Sink::start(dir.path(), "grpc", sink_port);
    let upstream = format!("http://127.0.0.1:{sink_port}");
    // The upstream comes from tandem's own standard variables; the app must not see them.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", upstream.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=blue"),
        ("NOMAD_ALLOC_ID", "alloc-7"),
        ("NOMAD_JOB_ID", "shop-job"),
    ];
    let cmd = app(&["browse"]);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (mut t, ports) = tandem(dir.path(), "", &env, &cmd);
    assert_eq!(t.wait_code(), 0);
    assert!(
        printed(&t, &format!("endpoint http://127.0.0.1:{}", ports.http)),
        "{:?}",
        t.records()
    );

    let traces = sink.wait("traces");
    assert_eq!(span_names(&traces), ["browse"]);
    assert_eq!(traces["headers"]["x-tenant"], "blue", "{traces}");
    let r = resource(&traces, "resourceSpans");
    assert_eq!(r["service.name"], "py-app");
    assert_eq!(r["app.flavour"], "vanilla");
    assert_eq!(r["service.instance.id"], "alloc-7");
    assert_eq!(r["nomad.alloc_id"], "alloc-7");
    assert_eq!(r["nomad.job_id"], "shop-job");
    assert!(!r["host.name"].is_empty(), "{r:?}");
    sink.wait("logs");
}

#[test]
fn an_absent_upstream_does_not_block_the_app_and_drops_are_counted() {
    if !python_otel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there.
    let dead = free_port();
    let extra = format!("endpoint = \"http://127.0.0.1:{dead}\"\nmax_retry_time = \"300ms\"\nshutdown_timeout = \"1s\"");
    let py = app(&["lost"]).join(" ");
    let (mut t, ports) = tandem(
        dir.path(),
        &extra,
        &[],
        &["sh", "-c", &format!("{py} && exec sleep 60")],
    );
    eventually("the app exported and went on", || printed(&t, "exported"));
    eventually("the drop is counted on /metrics", || {
        metrics(ports.admin).contains(
            "tandem_otlp_passthrough_dropped_total{signal=\"traces\",reason=\"retries_exhausted\"} 1",
        )
    });
    let m = metrics(ports.admin);
    assert!(
        m.contains("tandem_otlp_passthrough_received_total{signal=\"traces\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tandem_otlp_passthrough_forwarded_total{signal=\"traces\"} 0"),
        "{m}"
    );
    t.signal(nix::sys::signal::Signal::SIGTERM);
    t.wait();
    t.wait_event("otlp_passthrough_flushed");
}

#[test]
fn a_malformed_request_is_a_400_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, ports) = tandem(
        dir.path(),
        "endpoint = \"http://127.0.0.1:9\"\nmax_retry_time = \"100ms\"",
        &[],
        &["sleep", "60"],
    );
    // The app starts after every listener (the admin port too) is bound.
    t.wait_event("started");
    let addr = format!("127.0.0.1:{}", ports.http);
    let ct = [("Content-Type", "application/x-protobuf")];
    let (status, _, body) = http(&addr, "POST", "/v1/traces", b"\xff\xff\xff\xff", &ct).unwrap();
    assert_eq!(status, 400);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("malformed OTLP traces request"), "{body}");
    let json = [("Content-Type", "application/json")];
    let (status, _, body) =
        http(&addr, "POST", "/v1/logs", b"{\"resourceLogs\": 7}", &json).unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("malformed OTLP logs request (json)"));
    // A valid JSON request is accepted (and then fails upstream, counted).
    let (status, _, body) = http(
        &addr,
        "POST",
        "/v1/traces",
        b"{\"resourceSpans\":[]}",
        &json,
    )
    .unwrap();
    assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()));
    let (status, _, _) = http(&addr, "GET", "/v1/nothing", b"", &[]).unwrap();
    assert_eq!(status, 404);
    let m = metrics(ports.admin);
    assert!(
        m.contains(
            "tandem_otlp_passthrough_dropped_total{signal=\"traces\",reason=\"malformed\"} 1"
        ),
        "{m}"
    );
    t.signal(nix::sys::signal::Signal::SIGTERM);
    t.wait();
}

#[test]
fn no_upstream_is_a_config_error_before_the_app_starts() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let (mut t, _) = tandem(dir.path(), "", &[], &["touch", marker.to_str().unwrap()]);
    assert_eq!(t.wait_code(), 64);
    let e = t.wait_event("config_error");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("telemetry.passthrough.endpoint"),
        "{e}"
    );
    assert!(!marker.exists());
}

#[test]
fn a_full_queue_tells_the_app_to_retry_later_and_shutdown_counts_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the upstream: what is queued stays queued.
    let extra = "endpoint = \"http://127.0.0.1:9\"\nqueue_size = \"1KiB\"\nmax_request_size = \"1KiB\"\nmax_retry_time = \"60s\"\nshutdown_timeout = \"500ms\"";
    let (mut t, ports) = tandem(dir.path(), extra, &[], &["sleep", "60"]);
    t.wait_event("started");
    let addr = format!("127.0.0.1:{}", ports.http);
    let json = [("Content-Type", "application/json")];
    let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":{"stringValue":"v"}}]},"scopeSpans":[{"spans":[{"name":"s"}]}]}]}"#;
    let mut answers = Vec::new();
    for _ in 0..50 {
        let (status, head, _) = http(&addr, "POST", "/v1/traces", body, &json).unwrap();
        answers.push(status);
        if status != 200 {
            assert_eq!(status, 429, "{answers:?}");
            assert!(
                head.to_ascii_lowercase().contains("retry-after: 1"),
                "{head}"
            );
            break;
        }
    }
    assert_eq!(answers.last(), Some(&429), "{answers:?}");
    let accepted = answers.iter().filter(|s| **s == 200).count() as u64;
    let m = metrics(ports.admin);
    assert!(
        m.contains(
            "tandem_otlp_passthrough_dropped_total{signal=\"traces\",reason=\"queue_full\"} 1"
        ),
        "{m}"
    );
    t.signal(nix::sys::signal::Signal::SIGTERM);
    t.wait();
    // What was accepted and never forwarded is counted when the flush runs out of time.
    let flushed = t.wait_event("otlp_passthrough_flushed");
    assert_eq!(flushed["dropped"].as_u64(), Some(accepted), "{flushed}");
}

#[test]
fn a_malformed_grpc_export_is_invalid_argument() {
    if !python_otel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut t, ports) = tandem(
        dir.path(),
        "endpoint = \"http://127.0.0.1:9\"\nmax_retry_time = \"100ms\"",
        &[],
        &["sleep", "60"],
    );
    t.wait_event("started");
    // grpcio (a client tandem did not write) sends raw bytes that are not protobuf.
    let probe = format!(
        "import grpc\n\
         ch = grpc.insecure_channel('127.0.0.1:{}')\n\
         call = ch.unary_unary('/opentelemetry.proto.collector.trace.v1.TraceService/Export')\n\
         try:\n    call(b'\\xff\\xff\\xff', timeout=20)\n    print('OK')\n\
         except grpc.RpcError as e:\n    print(e.code().name, e.details())\n",
        ports.grpc
    );
    let out = Command::new("python3")
        .args(["-c", &probe])
        .env("PYTHONPATH", pydeps())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("INVALID_ARGUMENT malformed OTLP traces request"),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.signal(nix::sys::signal::Signal::SIGTERM);
    t.wait();
}
