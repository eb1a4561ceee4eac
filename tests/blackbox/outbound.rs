//! The outbound side: the app's calls to other services through tandem's local listeners.
//! Real upstream servers on loopback (tests/outbound/upstream.py, each able to fail, stall or
//! slow down), a real DNS server (Debian's dnsmasq) serving SRV records in Consul's naming,
//! a real OTLP receiver, and an app (tests/outbound/caller.py) that calls out while it shuts
//! down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{eventually, free_port, http, require_tool, Tandem};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One upstream server; killed (by pid) when dropped.
struct Upstream {
    child: Child,
    port: u16,
    control: PathBuf,
    /// Its stdout (the traceparents it got), when logging.
    out: Option<PathBuf>,
}

impl Upstream {
    fn start(dir: &Path, name: &str) -> Upstream {
        Self::spawn(dir, name, false)
    }

    /// An upstream whose output (the traceparent of each request) the test reads.
    fn start_logging(dir: &Path, name: &str) -> Upstream {
        Self::spawn(dir, name, true)
    }

    /// An HTTPS upstream that requires a client certificate from `client_ca`.
    fn start_tls(dir: &Path, name: &str, cert: &str, key: &str, client_ca: &str) -> Upstream {
        Self::spawn_with(dir, name, false, &[cert, key, client_ca])
    }

    fn spawn(dir: &Path, name: &str, logging: bool) -> Upstream {
        Self::spawn_with(dir, name, logging, &[])
    }

    fn spawn_with(dir: &Path, name: &str, logging: bool, tls: &[&str]) -> Upstream {
        let port = free_port();
        let control = dir.join(format!("{name}.mode"));
        let out = logging.then(|| dir.join(format!("{name}.out")));
        let stdout = match &out {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        };
        let child = Command::new("python3")
            .arg(repo().join("tests/outbound/upstream.py"))
            .args([&port.to_string(), name, control.to_str().unwrap()])
            .args(tls)
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .expect("start upstream.py");
        let addr = format!("127.0.0.1:{port}");
        // (A TLS upstream's accept handshakes: a plain connect that is dropped costs it nothing.)
        eventually(&format!("upstream {name} listens"), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        Upstream {
            child,
            port,
            control,
            out,
        }
    }

    /// The traceparent headers it got so far.
    fn traceparents(&self) -> Vec<String> {
        let out = self.out.as_ref().expect("a logging upstream");
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("traceparent "))
            .map(str::to_string)
            .collect()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `ok`, `fail`, `slow SECS` or `stall`.
    fn set(&self, mode: &str) {
        std::fs::write(&self.control, mode).unwrap();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// tandem running `app`, with the `[[outbound]]` tables given; returns it and its admin address.
fn start(dir: &Path, app: &[&str], extra: &str, env: &[(&str, &str)]) -> (Tandem, String) {
    let cfg = dir.join("tandem.toml");
    let command = app
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    // An [admin] table in `extra` replaces the default one.
    let admin = if extra.contains("[admin]") {
        ""
    } else {
        "[admin]\nlisten = \"127.0.0.1:0\"\n"
    };
    std::fs::write(
        &cfg,
        format!(
            "[service]\nname = \"outbound-test\"\n[app]\ncommand = [{command}]\nstop_timeout = \"10s\"\n{admin}{extra}"
        ),
    )
    .unwrap();
    let mut t = Tandem::spawn_cmd(
        Command::new(crate::support::bin())
            .args(["--config", cfg.to_str().unwrap()])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().copied()),
    );
    t.collect_stdout();
    let admin = t.admin_addr();
    t.wait_event("outbound_listening");
    (t, admin)
}

/// One upstream per name.
fn upstreams(dir: &Path, names: &[&str]) -> Vec<Upstream> {
    names.iter().map(|n| Upstream::start(dir, n)).collect()
}

/// The upstreams' addresses as a TOML array's items.
fn endpoint_list(ups: &[Upstream]) -> String {
    ups.iter()
        .map(|u| format!("{:?}", u.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sleeper() -> Vec<&'static str> {
    vec!["python3", "-c", "import time; time.sleep(3600)"]
}

/// GET through the outbound listener: (status, body).
fn get(addr: &str) -> (u16, String) {
    let (status, _, body) = http(addr, "GET", "/item", b"", &[]).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The sum of a metric's series whose line contains every `needle`.
fn metric(admin: &str, name: &str, needles: &[&str]) -> f64 {
    let (_, _, body) = http(admin, "GET", "/metrics", b"", &[]).unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_failing_endpoint_is_ejected_and_gets_traffic_back_and_no_call_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ups = upstreams(dir.path(), &["a", "b", "c"]);
    let listen = format!("127.0.0.1:{}", free_port());
    let endpoints = endpoint_list(&ups);
    let (mut t, admin) = start(
        dir.path(),
        &sleeper(),
        &format!(
            "[[outbound]]\nname = \"items\"\nlisten = \"{listen}\"\nendpoints = [{endpoints}]\nbalance = \"least_requests\"\nejection.consecutive_failures = 3\nejection.base_time = \"2s\"\n"
        ),
        &[],
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        let (status, body) = get(&listen);
        assert_eq!(status, 200, "{body}");
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "every endpoint served: {seen:?}");

    // b fails: every call still succeeds (retried on another endpoint), and b is ejected.
    ups[1].set("fail");
    let failing_since = Instant::now();
    for _ in 0..60 {
        let (status, body) = get(&listen);
        assert_eq!(status, 200, "a call failed while b was failing: {body}");
        assert_ne!(body, "b");
    }
    let ejected = t.wait_event("outbound_endpoint_ejected");
    assert_eq!(ejected["endpoint"], ups[1].addr().as_str());
    assert_eq!(ejected["service"], "items");
    // /status shows it out of the rotation (traffic keeps b ejected while it fails).
    eventually("/status shows b ejected", || {
        assert_eq!(get(&listen).0, 200);
        let (_, _, body) = http(&admin, "GET", "/status", b"", &[]).unwrap();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let service = &status["outbound"][0];
        service["name"] == "items"
            && service["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["addr"] == ups[1].addr().as_str() && e["ejected"] == true)
    });
    // The status page shows it too.
    eventually("the status page shows b ejected", || {
        assert_eq!(get(&listen).0, 200);
        let (_, _, page) = http(&admin, "GET", "/", b"", &[]).unwrap();
        String::from_utf8_lossy(&page).contains(&format!("{} ejected", ups[1].addr()))
    });
    let b = format!("endpoint=\"{}\"", ups[1].addr());
    assert!(metric(&admin, "tandem_outbound_ejections_total", &[&b]) >= 1.0);
    assert!(metric(&admin, "tandem_outbound_retries_total", &["status_503"]) >= 1.0);
    // Ejected, b gets no attempt at all: its failed-attempt count stays put.
    let failed_before = metric(&admin, "tandem_outbound_attempts_total", &[&b, "5xx"]);
    for _ in 0..20 {
        assert_eq!(get(&listen).0, 200);
    }
    if failing_since.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            metric(&admin, "tandem_outbound_attempts_total", &[&b, "5xx"]),
            failed_before,
            "an ejected endpoint got attempts"
        );
    }

    // b recovers: after its ejection it gets traffic back.
    ups[1].set("ok");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&listen);
        assert_eq!(status, 200, "{body}");
        if body == "b" {
            break;
        }
        assert!(Instant::now() < deadline, "b never got traffic back");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(metric(&admin, "tandem_outbound_requests_total", &["5xx"]) == 0.0);
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn a_slow_endpoint_gets_clearly_less_traffic_under_peak_ewma() {
    let dir = tempfile::tempdir().unwrap();
    let ups = upstreams(dir.path(), &["slow", "fast1", "fast2"]);
    ups[0].set("slow 0.2");
    let listen = format!("127.0.0.1:{}", free_port());
    let endpoints = endpoint_list(&ups);
    // The default balancer: peak-EWMA.
    let (mut t, _admin) = start(
        dir.path(),
        &sleeper(),
        &format!(
            "[[outbound]]\nname = \"items\"\nlisten = \"{listen}\"\nendpoints = [{endpoints}]\n"
        ),
        &[],
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let listen = listen.clone();
            thread::spawn(move || {
                (0..60)
                    .map(|_| {
                        let (status, body) = get(&listen);
                        assert_eq!(status, 200, "{body}");
                        body
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for w in workers {
        for body in w.join().unwrap() {
            *seen.entry(body).or_default() += 1;
        }
    }
    let n = |k: &str| seen.get(k).copied().unwrap_or(0);
    assert_eq!(n("slow") + n("fast1") + n("fast2"), 180, "{seen:?}");
    assert!(
        n("slow") * 4 < n("fast1") && n("slow") * 4 < n("fast2"),
        "the slow endpoint got too much traffic: {seen:?}"
    );
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn the_breaker_caps_calls_to_a_stalled_service_and_fails_fast_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Upstream::start(dir.path(), "stalled");
    up.set("stall");
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut t, admin) = start(
        dir.path(),
        &sleeper(),
        &format!(
            "[[outbound]]\nname = \"stuck\"\nlisten = \"{listen}\"\nendpoints = [\"{}\"]\nbreaker.max_requests = 3\nbreaker.max_pending = 0\ntimeouts.per_try = \"60s\"\ntimeouts.request = \"60s\"\n",
            up.addr()
        ),
        &[],
    );
    let hung: Vec<_> = (0..3)
        .map(|_| {
            let listen = listen.clone();
            thread::spawn(move || http(&listen, "GET", "/", b"", &[]).map(|r| r.0))
        })
        .collect();
    eventually("three calls in flight", || {
        metric(&admin, "tandem_outbound_requests_in_flight", &["stuck"]) == 3.0
    });
    // Failed at once: a call that waited for a place would end at the 60 s request timeout
    // with a 504, not this 503.
    let (status, head, body) = http(&listen, "GET", "/", b"", &[]).unwrap();
    assert_eq!(status, 503, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("breaker_open"));
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(
        metric(
            &admin,
            "tandem_outbound_breaker_rejections_total",
            &["stuck"]
        ),
        1.0
    );
    assert_eq!(
        metric(&admin, "tandem_outbound_breaker_open", &["stuck"]),
        1.0
    );
    // The stalled endpoint saw only the three, never the fourth.
    assert_eq!(
        metric(&admin, "tandem_outbound_requests_in_flight", &["stuck"]),
        3.0
    );
    // The upstream goes away: the hung calls end (502), and the breaker has places again.
    up.stop();
    for h in hung {
        assert_eq!(h.join().unwrap().unwrap(), 502);
    }
    let (status, _, body) = http(&listen, "GET", "/", b"", &[]).unwrap();
    assert_ne!(status, 503, "{}", String::from_utf8_lossy(&body));
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// Debian's dnsmasq serving `payments.service.consul` SRV records (Consul's naming) that point
/// at `ports`, on 127.0.0.1:`port`, TTL 1 s. Killed by pid when dropped.
struct Dns(Child);

impl Dns {
    fn start(port: u16, ports: &[u16]) -> Dns {
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local-ttl=1",
            &format!("--port={port}"),
        ]);
        for (i, p) in ports.iter().enumerate() {
            let node = format!("node{i}.node.dc1.consul");
            cmd.arg(format!("--srv-host=payments.service.consul,{node},{p}"));
            cmd.arg(format!("--host-record={node},127.0.0.1"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        // Listening once it answers TCP.
        eventually("dnsmasq listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Dns(child)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn srv_endpoints_from_a_real_dns_server_follow_changes_and_survive_its_outage() {
    if !require_tool("dnsmasq") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ups = upstreams(dir.path(), &["a", "b", "c"]);
    let dns_port = free_port();
    let first = Dns::start(dns_port, &[ups[0].port, ups[1].port]);
    let listen = format!("127.0.0.1:{}", free_port());
    // This test is about the endpoints the name resolves to, not the balancer: with
    // `peak_ewma`, one slow first answer of an upstream on a loaded machine keeps traffic on
    // the other for as long as its estimate takes to decay (by design, ~10 s per e-fold),
    // longer than this test waits to see both. `least_requests` spreads sequential requests.
    let (mut t, admin) = start(
        dir.path(),
        &sleeper(),
        &format!(
            "[[outbound]]\nname = \"payments\"\nlisten = \"{listen}\"\nsrv = \"payments.service.consul\"\nresolver = \"127.0.0.1:{dns_port}\"\ndns_min_refresh = \"200ms\"\ndns_max_refresh = \"2s\"\nbalance = \"least_requests\"\n"
        ),
        &[],
    );
    let mut seen = std::collections::BTreeSet::new();
    eventually("a and b both serve", || {
        let (status, body) = get(&listen);
        if status == 200 {
            seen.insert(body);
        }
        seen.contains("a") && seen.contains("b")
    });
    assert!(!seen.contains("c"));

    // The answer changes: only c. Traffic follows within the TTL (plus the refresh).
    drop(first);
    let second = Dns::start(dns_port, &[ups[2].port]);
    let changed = Instant::now();
    eventually("traffic moves to c", || get(&listen).1 == "c");
    assert!(changed.elapsed() < Duration::from_secs(10));
    for _ in 0..20 {
        assert_eq!(get(&listen), (200, "c".to_string()));
    }
    assert!(
        metric(
            &admin,
            "tandem_outbound_resolver_updates_total",
            &["payments"]
        ) >= 2.0
    );

    // The DNS server stops: resolution fails, the last good endpoints keep serving.
    drop(second);
    t.wait_event("outbound_resolve_failed");
    for _ in 0..20 {
        assert_eq!(get(&listen), (200, "c".to_string()));
    }
    assert!(
        metric(
            &admin,
            "tandem_outbound_resolver_failures_total",
            &["payments"]
        ) >= 1.0
    );
    assert_eq!(
        metric(&admin, "tandem_outbound_endpoints", &["payments"]),
        1.0
    );
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn the_app_calls_out_while_it_shuts_down_and_those_calls_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(dir.path(), "backend");
    // Slow enough that the calls span the app's whole shutdown.
    up.set("slow 0.1");
    let listen = format!("127.0.0.1:{}", free_port());
    let app_port = free_port().to_string();
    let caller = repo().join("tests/outbound/caller.py");
    let url = format!("http://{listen}/work");
    let (mut t, _admin) = start(
        dir.path(),
        &["python3", caller.to_str().unwrap(), &app_port],
        &format!(
            "[app.env]\nOUTBOUND_URL = \"{url}\"\nCALLS_ON_TERM = \"10\"\n[[outbound]]\nname = \"backend\"\nlisten = \"{listen}\"\nendpoints = [\"{}\"]\n",
            up.addr()
        ),
        &[],
    );
    eventually("the app is up", || {
        t.records()
            .iter()
            .any(|r| r["msg"].as_str() == Some("caller listening"))
    });
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 0);
    let lines: Vec<String> = t
        .records()
        .iter()
        .filter_map(|r| r["msg"].as_str().map(str::to_string))
        .filter(|m| m.starts_with("shutdown"))
        .collect();
    for i in 0..10 {
        let want = format!("shutdown call {i} status 200");
        assert!(lines.contains(&want), "{want} missing: {lines:?}");
    }
    assert!(lines.contains(&"shutdown done".to_string()), "{lines:?}");
    // The order: the app exited, then the outbound side drained.
    t.assert_order(&["exited", "outbound_drained"]);
}

#[test]
fn the_app_learns_the_address_and_a_missing_nomad_upstream_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(dir.path(), "pay");
    let listen = format!("127.0.0.1:{}", free_port());
    let out = dir.path().join("env.txt");
    let script = format!(
        "echo \"$TANDEM_OUTBOUND_PAY_API\" > {}; sleep 3600",
        out.display()
    );
    let (mut t, _admin) = start(
        dir.path(),
        &["sh", "-c", &script],
        &format!(
            "[[outbound]]\nname = \"pay-api\"\nlisten = \"{listen}\"\nnomad_upstream = \"pay\"\n"
        ),
        &[("NOMAD_UPSTREAM_ADDR_pay", &up.addr())],
    );
    crate::support::wait_file(&out);
    eventually("the app wrote the address", || {
        std::fs::read_to_string(&out).unwrap_or_default().trim() == listen
    });
    assert_eq!(get(&listen), (200, "pay".to_string()));
    t.signal(Signal::SIGTERM);
    t.wait();

    // Without the variable: tandem refuses to start and names it.
    let cfg = dir.path().join("tandem.toml");
    let (code, _, err) = crate::support::run(&["--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("NOMAD_UPSTREAM_ADDR_pay"), "{err}");
}

#[test]
fn one_trace_runs_from_the_inbound_proxy_through_the_app_to_the_outbound_call() {
    if !crate::otel::require_oteltest() {
        return;
    }
    let otlp = free_port();
    let rx = crate::otel::Receiver::start("grpc", otlp);
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start_logging(dir.path(), "backend");
    let listen = format!("127.0.0.1:{}", free_port());
    let app_port = free_port();
    let caller = repo().join("tests/outbound/caller.py");
    let url = format!("http://{listen}/work");
    let (mut t, _admin) = start(
        dir.path(),
        &["python3", caller.to_str().unwrap(), &app_port.to_string()],
        &format!(
            "[app.env]\nOUTBOUND_URL = \"{url}\"\n[[proxy.listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{app_port}\"\n[[outbound]]\nname = \"backend\"\nlisten = \"{listen}\"\nendpoints = [\"{}\"]\n[telemetry]\nendpoint = \"http://127.0.0.1:{otlp}\"\nprotocol = \"grpc\"\ntraces.batch_delay = \"100ms\"\nmetrics.enabled = false\n",
            up.addr()
        ),
        &[],
    );
    let proxy = t.wait_event("proxy_listening")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    t.wait_event("ready");
    let (status, head, body) = http(&proxy, "GET", "/call", b"", &[]).unwrap();
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"backend");
    let mut spans = Vec::new();
    eventually("the server and the outbound client spans arrive", || {
        spans = rx.spans();
        spans.iter().any(|s| {
            s.v["kind"] == "SPAN_KIND_CLIENT"
                && s.attrs.get("tandem.outbound.service").map(String::as_str) == Some("backend")
        })
    });
    let server = spans
        .iter()
        .find(|s| s.v["kind"] == "SPAN_KIND_SERVER")
        .expect("the inbound server span");
    let trace = server.id("traceId");
    let call = spans
        .iter()
        .find(|s| s.attrs.get("tandem.outbound.service").map(String::as_str) == Some("backend"))
        .unwrap();
    assert_eq!(
        call.id("traceId"),
        trace,
        "the outbound call continues the inbound trace"
    );
    assert_eq!(call.v["kind"], "SPAN_KIND_CLIENT");
    // The call's parent is the inbound attempt's span (the traceparent the app was given).
    let inbound_attempt = spans
        .iter()
        .find(|s| s.v["kind"] == "SPAN_KIND_CLIENT" && s.id("parentSpanId") == server.id("spanId"))
        .expect("the inbound attempt span");
    assert_eq!(call.id("parentSpanId"), inbound_attempt.id("spanId"));
    // The outbound attempt span is the call's child, and its context reached the backend.
    let attempt = spans
        .iter()
        .find(|s| s.id("parentSpanId") == call.id("spanId"))
        .expect("the outbound attempt span");
    assert_eq!(attempt.id("traceId"), trace);
    let sent = up.traceparents();
    assert!(
        sent.iter()
            .any(|tp| tp.contains(&trace) && tp.contains(&attempt.id("spanId"))),
        "the backend got the attempt's traceparent: {sent:?} (trace {trace})"
    );
    t.signal(Signal::SIGTERM);
    t.wait();
}

/// PyPI's grpcio and grpcio-health-checking, installed by scripts/test in target/py.
fn pydeps() -> PathBuf {
    repo().join("target/py")
}

fn grpc_calls(addr: &str, n: usize) -> Vec<String> {
    let out = Command::new("python3")
        .arg(repo().join("tests/outbound/grpc_client.py"))
        .args([addr, &n.to_string()])
        .env("PYTHONPATH", pydeps())
        .output()
        .expect("run grpc_client.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn grpc_unavailable_is_retried_and_counted_inbound_and_outbound() {
    if !crate::otel::require_oteltest() {
        return;
    }
    let otlp = free_port();
    let rx = crate::otel::Receiver::start("grpc", otlp);
    let dir = tempfile::tempdir().unwrap();
    // The app is a real gRPC server that answers UNAVAILABLE on every odd call; the inbound h2c
    // listener fronts it, and the outbound h2c service points at it too.
    let app_port = free_port();
    let flaky = repo().join("tests/outbound/grpc_flaky.py");
    let inbound = format!("127.0.0.1:{}", free_port());
    let outbound = format!("127.0.0.1:{}", free_port());
    let py = pydeps();
    let (mut t, admin) = start(
        dir.path(),
        &["python3", flaky.to_str().unwrap(), &app_port.to_string()],
        &format!(
            "[[proxy.listeners]]\nname = \"grpc-in\"\nprotocol = \"h2c\"\nlisten = \"{inbound}\"\nupstream = \"127.0.0.1:{app_port}\"\n[[outbound]]\nname = \"flaky\"\nprotocol = \"h2c\"\nlisten = \"{outbound}\"\nendpoints = [\"127.0.0.1:{app_port}\"]\nejection.consecutive_failures = 0\n[telemetry]\nendpoint = \"http://127.0.0.1:{otlp}\"\nprotocol = \"grpc\"\ntraces.batch_delay = \"100ms\"\nmetrics.enabled = false\n"
        ),
        &[("PYTHONPATH", py.to_str().unwrap())],
    );
    t.wait_event("ready");

    // Outbound: every call succeeds, each after one UNAVAILABLE answer retried.
    let got = grpc_calls(&outbound, 6);
    assert_eq!(got, vec!["ok SERVING"; 6], "outbound");
    let m = |name: &str, needles: &[&str]| metric(&admin, name, needles);
    assert_eq!(
        m(
            "tandem_outbound_retries_total",
            &["flaky", "grpc_unavailable"]
        ),
        6.0
    );
    assert_eq!(
        m("tandem_outbound_attempts_total", &["flaky", "UNAVAILABLE"]),
        6.0
    );
    assert_eq!(
        m(
            "tandem_outbound_grpc_responses_total",
            &["flaky", "kind=\"OK\""]
        ),
        6.0
    );

    // Inbound: the same, through the listener in front of the app.
    let got = grpc_calls(&inbound, 6);
    assert_eq!(got, vec!["ok SERVING"; 6], "inbound");
    assert_eq!(
        m(
            "tandem_proxy_retries_total",
            &["grpc-in", "grpc_unavailable"]
        ),
        6.0
    );
    assert_eq!(
        m(
            "tandem_proxy_grpc_responses_total",
            &["grpc-in", "kind=\"OK\""]
        ),
        6.0
    );

    t.signal(Signal::SIGTERM);
    t.wait();

    // The spans: the failed attempts carry grpc status 14 and an error status.
    let mut spans = Vec::new();
    eventually("the outbound attempt spans arrive", || {
        spans = rx.spans();
        spans
            .iter()
            .filter(|s| s.attrs.get("rpc.grpc.status_code").map(String::as_str) == Some("14"))
            .count()
            >= 6
    });
    let failed = spans
        .iter()
        .find(|s| s.attrs.get("rpc.grpc.status_code").map(String::as_str) == Some("14"))
        .unwrap();
    assert_eq!(
        failed.v["status"]["code"], "STATUS_CODE_ERROR",
        "{:?}",
        failed.v
    );
    assert_eq!(
        failed.attrs.get("error.type").map(String::as_str),
        Some("UNAVAILABLE")
    );
}

#[test]
fn mtls_to_the_endpoints_and_a_renewed_client_certificate_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::otel_tls::pki(dir.path());
    let up = Upstream::start_tls(
        dir.path(),
        "secure",
        &pki.server_cert,
        &pki.server_key,
        &pki.ca,
    );
    // tandem starts with a client certificate the upstream does not trust (another CA's).
    let (other, other_key) = crate::otel_tls::ca("not the upstream's CA");
    let cert = dir.path().join("tandem-client.pem");
    let key = dir.path().join("tandem-client.key");
    std::fs::write(&cert, other.pem()).unwrap();
    std::fs::write(&key, other_key.serialize_pem()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut t, _admin) = start(
        dir.path(),
        &sleeper(),
        &format!(
            "[[outbound]]\nname = \"secure\"\nlisten = \"{listen}\"\nendpoints = [\"{}\"]\n[outbound.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval = \"200ms\"\n",
            up.addr(),
            pki.ca,
            cert.display(),
            key.display()
        ),
        &[],
    );
    let (status, _) = get(&listen);
    assert_eq!(status, 502, "a client certificate the endpoint refuses");
    // The renewed certificate (from the CA the upstream trusts) is used without a restart.
    std::fs::copy(&pki.client_key, &key).unwrap();
    std::fs::copy(&pki.client_cert, &cert).unwrap();
    t.wait_event("upstream_tls_reloaded");
    eventually("calls succeed with the renewed certificate", || {
        get(&listen) == (200, "secure".to_string())
    });
    t.signal(Signal::SIGTERM);
    t.wait();

    // A CA that did not sign the endpoint's certificate: refused, named.
    let cfg = dir.path().join("tandem.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&pki.ca, &pki.other_ca);
    std::fs::write(&cfg, text).unwrap();
    let mut t = Tandem::spawn_cmd(
        Command::new(crate::support::bin()).args(["--config", cfg.to_str().unwrap()]),
    );
    t.wait_event("outbound_listening");
    let (status, body) = get(&listen);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_tls"), "{body}");
    let failed = t.wait_event("upstream_tls_failed");
    assert_eq!(failed["reason"], "unknown_ca");
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn an_app_honouring_http_proxy_reaches_services_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let pay = Upstream::start(dir.path(), "pay");
    let users = Upstream::start(dir.path(), "users");
    let fwd = format!("127.0.0.1:{}", free_port());
    let out = dir.path().join("answers.txt");
    // A shell app using curl the way most HTTP clients use http_proxy (set from tandem's
    // TANDEM_OUTBOUND_PROXY), asking for services by name.
    let script = format!(
        "export http_proxy=$TANDEM_OUTBOUND_PROXY; for s in payments users nowhere; do curl -s -o /dev/null -w \"$s %{{http_code}}\\n\" http://$s/x >> {out}; done; sleep 3600",
        out = out.display()
    );
    let (mut t, _admin) = start(
        dir.path(),
        &["sh", "-c", &script],
        &format!(
            "[outbound_proxy]\nlisten = \"{fwd}\"\n[[outbound]]\nname = \"payments\"\nlisten = \"127.0.0.1:{}\"\nendpoints = [\"{}\"]\n[[outbound]]\nname = \"users\"\nlisten = \"127.0.0.1:{}\"\nendpoints = [\"{}\"]\n",
            free_port(),
            pay.addr(),
            free_port(),
            users.addr()
        ),
        &[],
    );
    eventually("the app asked for the three", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
            == 3
    });
    let answers = std::fs::read_to_string(&out).unwrap();
    assert_eq!(answers, "payments 200\nusers 200\nnowhere 404\n");
    // And a request in absolute form, as any proxy client sends it.
    let mut s = std::net::TcpStream::connect(&fwd).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET http://users/x HTTP/1.1\r\nHost: users\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("users"), "{resp}");
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn an_upgrade_hands_the_outbound_listeners_over_and_no_call_fails() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(dir.path(), "kept");
    let listen = format!("127.0.0.1:{}", free_port());
    let fwd = format!("127.0.0.1:{}", free_port());
    let (mut t, _) = start(
        dir.path(),
        &sleeper(),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n[outbound_proxy]\nlisten = \"{fwd}\"\n[[outbound]]\nname = \"kept\"\nlisten = \"{listen}\"\nendpoints = [\"{}\"]\n",
            free_port(),
            up.addr()
        ),
        &[],
    );
    let admin = t.admin_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let load = crate::upgrade::load(&listen, 2, &stop);
    eventually("calls flow", || load.ok.load(Ordering::Relaxed) > 20);
    let next = crate::support::binary_copy(dir.path());
    let (code, out, err) = crate::upgrade::tandem_upgrade(&admin, next.to_str().unwrap());
    assert_eq!(code, 0, "{out}{err}");
    let before = load.ok.load(Ordering::Relaxed);
    eventually("calls flow after the upgrade", || {
        load.ok.load(Ordering::Relaxed) > before + 20
    });
    stop.store(true, Ordering::Relaxed);
    for th in load.threads {
        th.join().unwrap();
    }
    assert!(
        load.failed.lock().unwrap().is_empty(),
        "calls failed across the upgrade: {:?}",
        load.failed.lock().unwrap()
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", t.pid())).unwrap(),
        next,
        "the new image runs"
    );
    // The forward proxy's socket came across too.
    let mut s = std::net::TcpStream::connect(&fwd).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET http://kept/x HTTP/1.1\r\nHost: kept\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn tcp_calls_to_debians_redis_skip_a_dead_endpoint() {
    if !require_tool("redis-server") || !require_tool("redis-cli") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--dir", dir.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    eventually("redis listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // One endpoint nobody listens on: each connection that picks it is tried on the other.
    let dead = free_port();
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut t, admin) = start(
        dir.path(),
        &sleeper(),
        &format!(
            "[[outbound]]\nname = \"cache\"\nprotocol = \"tcp\"\nlisten = \"{listen}\"\nendpoints = [\"127.0.0.1:{dead}\", \"127.0.0.1:{port}\"]\nejection.consecutive_failures = 2\n"
        ),
        &[],
    );
    let (_, lport) = listen.rsplit_once(':').unwrap();
    for i in 0..10 {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", lport, "SET", &format!("k{i}"), "v"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "OK",
            "call {i}"
        );
    }
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", lport, "DBSIZE"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10");
    assert_eq!(
        metric(&admin, "tandem_outbound_tcp_connections_total", &["cache"]),
        11.0
    );
    let d = format!("endpoint=\"127.0.0.1:{dead}\"");
    // The dead endpoint was tried at most until its ejection.
    assert!(
        metric(
            &admin,
            "tandem_outbound_attempts_total",
            &[&d, "connect_failed"]
        ) <= 2.0
    );
    t.signal(Signal::SIGTERM);
    t.wait();
    let _ = redis.kill();
    let _ = redis.wait();
}
