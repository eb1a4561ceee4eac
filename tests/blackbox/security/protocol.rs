//! One protocol per listener, each with its own clocks: an `h2c` listener refuses HTTP/1 at
//! once and closes a connection whose preface does not come within `timeouts.header_read`; an
//! `http` listener closes a connection that opens with an HTTP/2 preface. (The `h2c` listener used to
//! serve HTTP/1.1 too, with no header-read clock: a slowloris stayed open for good.)
use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
};

use crate::apps::http_server_behind_tandem;
use crate::otel::scrape;
use crate::support::{eventually, free_port, require_tool, PATIENCE};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Sends `bytes` on a fresh connection and reads until tandem closes it (bounded); panics if
/// it stays open.
fn answer(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the connection stayed open ({e}) after {:?}; read {:?}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&got)
        ),
    }
    got
}

#[test]
fn each_listener_speaks_only_its_protocol_with_its_clocks() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (web, grpc, app) = (free_port(), free_port(), free_port());
    let (mut t, admin) = http_server_behind_tandem(
        dir.path(),
        dir.path(),
        app,
        &format!(
            r#"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:{web}"
upstream = "127.0.0.1:{app}"
timeouts = {{ header_read = "1s" }}
[[proxy.listeners]]
name = "grpc"
protocol = "h2c"
listen = "127.0.0.1:{grpc}"
upstream = "127.0.0.1:{app}"
timeouts = {{ header_read = "1s" }}
"#
        ),
        None,
    );
    let (web, grpc) = (format!("127.0.0.1:{web}"), format!("127.0.0.1:{grpc}"));

    // HTTP/1 to the h2c listener: closed without an HTTP/1 answer.
    let got = answer(&grpc, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1"),
        "an h2c listener answered HTTP/1: {:?}",
        String::from_utf8_lossy(&got)
    );
    // An HTTP/1 slowloris (one byte, then silence) is refused as soon as it begins (after
    // nothing but tandem's own SETTINGS, which an HTTP/2 server sends first).
    let got = answer(&grpc, b"G");
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // No preface at all, or half of one: closed at header_read.
    answer(&grpc, b"");
    answer(&grpc, &PREFACE[..16]);
    // A full preface and SETTINGS: served (tandem's SETTINGS come back), not cut.
    let mut s = TcpStream::connect(&grpc).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(SETTINGS).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[3], 4, "a SETTINGS frame first: {head:?}");

    // HTTP/2 prior knowledge to the http listener: closed by HTTP/1's parser (hyper answers
    // the preface's request line with no response at all), never an HTTP/2 SETTINGS frame.
    let got = answer(&web, &[PREFACE, SETTINGS].concat());
    assert!(
        got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    let errors = |listener: &str, kind: &str| {
        scrape(
            &admin,
            &format!("tandem_proxy_errors_total{{listener=\"{listener}\",kind=\"{kind}\"}}"),
        )
    };
    eventually("each refusal counted by cause", || {
        errors("grpc", "protocol_error") == 2.0
            && errors("grpc", "header_read_timeout") == 2.0
            && errors("web", "protocol_error") == 1.0
    });
    drop(s);
    t.signal(nix::sys::signal::Signal::SIGTERM);
    t.wait();
}
