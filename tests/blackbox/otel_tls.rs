//! OTLP over TLS against real TLS servers: tests/otel/receiver.py terminates TLS on its gRPC
//! listener with grpcio's own TLS (BoringSSL) and on its HTTP listener with Python's `ssl`
//! module (OpenSSL), in front of PyPI `oteltest`'s decoders. The certificates are made in each
//! test with rcgen: a CA, a server certificate for 127.0.0.1, a client certificate (mTLS) and a
//! second CA that signed none of them.
//!
//! Shown: spans and logs arrive over `https://` for gRPC and HTTP, from the config keys and from
//! the standard variables; mTLS with the client certificate; gzip on the wire; a CA that does
//! not match sends nothing, counts the failures and leaves tandem serving; the pass-through to
//! an `https://` upstream.
use std::{path::Path, thread, time::Duration};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::otel::{
    require_oteltest, scrape, start_tandem, start_tandem_env, Receiver, PARENT, TRACE,
};
use crate::support::{eventually, free_port, http};

/// The PEM files of one test, as paths.
pub(crate) struct Pki {
    pub(crate) ca: String,
    pub(crate) other_ca: String,
    pub(crate) server_cert: String,
    pub(crate) server_key: String,
    pub(crate) client_cert: String,
    pub(crate) client_key: String,
}

pub(crate) fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (p.self_signed(&key).expect("self-signed CA"), key)
}

/// Fresh certificates in `dir`.
pub(crate) fn pki(dir: &Path) -> Pki {
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write a PEM file");
        p.display().to_string()
    };
    let (ca_cert, ca_key) = ca("tandem test CA");
    let (other, _) = ca("a CA that signed nothing here");
    let issue = |sans: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue(
        vec!["127.0.0.1".into(), "localhost".into()],
        "receiver",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = issue(vec![], "tandem", ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        other_ca: write("other-ca.pem", other.pem()),
        server_cert: write("server.pem", server_cert),
        server_key: write("server.key", server_key),
        client_cert: write("client.pem", client_cert),
        client_key: write("client.key", client_key),
    }
}

/// Whether a request the receiver printed came with `Content-Encoding: gzip`.
fn gzipped(req: &serde_json::Value) -> bool {
    req["headers"].as_object().is_some_and(|h| {
        h.iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-encoding") && v.as_str() == Some("gzip"))
    })
}

/// One request through tandem's proxy in the test's trace, until its span has arrived.
fn wait_for_the_span(proxy: &str, rx: &Receiver) {
    let tp = format!("00-{TRACE}-{PARENT}-01");
    eventually("the span arrives over https", || {
        let _ = http(proxy, "GET", "/", b"", &[("traceparent", &tp)]);
        thread::sleep(Duration::from_millis(200));
        rx.spans().iter().any(|s| s.id("traceId") == TRACE)
    });
}

#[test]
fn grpc_over_https_with_mtls_and_gzip_from_the_config_keys() {
    if !require_oteltest() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let otlp = free_port();
    // The receiver requires a client certificate signed by the CA.
    let rx = Receiver::start_with(
        "grpc",
        otlp,
        &[
            "--tls",
            &pki.server_cert,
            &pki.server_key,
            "--client-ca",
            &pki.ca,
        ],
    );
    let (mut t, proxy, _admin) = start_tandem(
        dir.path(),
        free_port(),
        &format!(
            "endpoint = \"https://127.0.0.1:{otlp}\"\nprotocol = \"grpc\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\ncompression = \"gzip\"\ntraces.batch_delay = \"100ms\"\nlogs.batch_delay = \"100ms\"\nmetrics.enabled = false\n",
            pki.ca, pki.client_cert, pki.client_key
        ),
    );
    wait_for_the_span(&proxy, &rx);
    eventually("the app's log records arrive over https", || {
        !rx.logs().is_empty()
    });
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn http_over_https_with_gzip_from_the_standard_variables() {
    if !require_oteltest() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let otlp = free_port();
    let rx = Receiver::start_with("http", otlp, &["--tls", &pki.server_cert, &pki.server_key]);
    let (mut t, proxy, admin) = start_tandem_env(
        dir.path(),
        free_port(),
        &format!(
            "endpoint = \"https://127.0.0.1:{otlp}\"\nprotocol = \"http/protobuf\"\ntraces.batch_delay = \"100ms\"\nlogs.batch_delay = \"100ms\"\nmetrics.enabled = false\n"
        ),
        &[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.ca),
            // Only the spans are compressed: the signal's own variable.
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ],
    );
    wait_for_the_span(&proxy, &rx);
    eventually("the app's log records arrive over https", || {
        !rx.logs().is_empty()
    });
    let traces = rx.of("traces");
    assert!(traces.iter().all(gzipped), "spans are gzipped: {traces:?}");
    let logs = rx.of("logs");
    assert!(!logs.iter().any(gzipped), "logs are not: {logs:?}");
    assert_eq!(
        scrape(
            &admin,
            "tandem_otlp_failed_requests_total{signal=\"traces\"}"
        ),
        0.0
    );
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn a_ca_that_does_not_match_sends_nothing_and_the_failures_are_counted() {
    if !require_oteltest() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let otlp = free_port();
    let rx = Receiver::start_with("http", otlp, &["--tls", &pki.server_cert, &pki.server_key]);
    let (mut t, proxy, admin) = start_tandem(
        dir.path(),
        free_port(),
        &format!(
            "endpoint = \"https://127.0.0.1:{otlp}\"\nprotocol = \"http/protobuf\"\nca_file = \"{}\"\ntimeout = \"1s\"\nretry_for = \"1s\"\ntraces.batch_delay = \"50ms\"\nlogs.batch_delay = \"50ms\"\nmetrics.enabled = false\n",
            pki.other_ca
        ),
    );
    let tp = format!("00-{TRACE}-{PARENT}-01");
    eventually("failed exports are counted on /metrics", || {
        let (status, _, _) = http(&proxy, "GET", "/", b"", &[("traceparent", &tp)]).unwrap();
        assert_eq!(status, 200, "tandem keeps serving");
        scrape(
            &admin,
            "tandem_otlp_failed_requests_total{signal=\"traces\"}",
        ) > 0.0
    });
    eventually("the batches given up are counted too", || {
        scrape(
            &admin,
            "tandem_otlp_dropped_total{signal=\"traces\",reason=\"export_failed\"}",
        ) > 0.0
    });
    assert!(rx.of("traces").is_empty(), "nothing reached the receiver");
    assert!(rx.of("logs").is_empty(), "nothing reached the receiver");
    assert_eq!(
        scrape(&admin, "tandem_otlp_exported_total{signal=\"traces\"}"),
        0.0
    );
    let (status, _, _) = http(&proxy, "GET", "/", b"", &[]).unwrap();
    assert_eq!(status, 200, "tandem is still running");
    t.signal(Signal::SIGTERM);
    t.wait();
}

#[test]
fn passthrough_forwards_to_an_https_upstream_with_mtls_and_gzip() {
    if !require_oteltest() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let otlp = free_port();
    let rx = Receiver::start_with(
        "http",
        otlp,
        &[
            "--tls",
            &pki.server_cert,
            &pki.server_key,
            "--client-ca",
            &pki.ca,
        ],
    );
    let listen = free_port();
    // No export endpoint: only the pass-through sends, with its own keys.
    let (mut t, _proxy, admin) = start_tandem(
        dir.path(),
        free_port(),
        &format!(
            "passthrough.enabled = true\npassthrough.http_listen = \"127.0.0.1:{listen}\"\npassthrough.grpc_listen = \"127.0.0.1:{}\"\npassthrough.endpoint = \"https://127.0.0.1:{otlp}\"\npassthrough.ca_file = \"{}\"\npassthrough.cert_file = \"{}\"\npassthrough.key_file = \"{}\"\npassthrough.compression = \"gzip\"\n",
            free_port(),
            pki.ca,
            pki.client_cert,
            pki.client_key
        ),
    );
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![0x4b; 16],
                    span_id: vec![0x01; 8],
                    name: "app-span-over-tls".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let (status, _, _) = http(
        &format!("127.0.0.1:{listen}"),
        "POST",
        "/v1/traces",
        &request.encode_to_vec(),
        &[("Content-Type", "application/x-protobuf")],
    )
    .unwrap();
    assert_eq!(status, 200);
    eventually("the app's span reaches the https upstream", || {
        rx.spans()
            .iter()
            .any(|s| s.v["name"] == "app-span-over-tls")
    });
    let traces = rx.of("traces");
    assert!(traces.iter().all(gzipped), "gzipped upstream: {traces:?}");
    assert!(scrape(&admin, "tandem_otlp_passthrough_forwarded_total") >= 1.0);
    t.signal(Signal::SIGTERM);
    t.wait();
}
