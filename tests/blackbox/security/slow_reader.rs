//! A client that sends a request and never reads the response must not pin the app: at
//! `timeouts.write` without progress, tandem closes the client's connection and the app's.
//! (The request timeout ends at the response head and the idle clock paused while a request
//! was active, so such a client kept the app's worker busy for good.)
use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
};

use crate::apps::http_server_behind_tandem;
use crate::otel::scrape;
use crate::support::{eventually, free_port, require_tool, PATIENCE};

/// Far more than the loopback socket buffers hold between tandem and a client that does not
/// read (a sparse file: no disk is written).
const SIZE: u64 = 64 << 20;

#[test]
fn a_client_that_never_reads_is_cut_at_the_write_timeout() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::File::create(site.join("big.bin"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let (web, app) = (free_port(), free_port());
    let (mut t, admin) = http_server_behind_tandem(
        dir.path(),
        &site,
        app,
        &format!(
            r#"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:{web}"
upstream = "127.0.0.1:{app}"
timeouts = {{ write = "2s", request = "20s", idle = "8s" }}
"#
        ),
        None,
    );

    let mut s = TcpStream::connect(format!("127.0.0.1:{web}")).unwrap();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .unwrap();
    // Never read; tandem must give up on this client by itself.
    eventually("the write timeout counted", || {
        scrape(
            &admin,
            "tandem_proxy_errors_total{listener=\"web\",kind=\"write_timeout\"}",
        ) == 1.0
    });
    // What the socket buffers held, then EOF or a reset: the connection is closed.
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "the client's connection stayed open: {r:?}"
    );
    assert!((got.len() as u64) < SIZE, "the whole response was sent");
    eventually("the access record names write_timeout", || {
        t.records().iter().any(|r| {
            r["fields"]["kind"] == "access"
                && r["fields"]["path"] == "/big.bin"
                && r["fields"]["cause"] == "write_timeout"
        })
    });
    // The app's side was closed too: http.server's write to it failed.
    eventually("the app's connection closed", || {
        t.records().iter().any(|r| {
            let line = r.to_string();
            line.contains("BrokenPipeError") || line.contains("ConnectionResetError")
        })
    });
    t.signal(nix::sys::signal::Signal::SIGTERM);
    t.wait();
}
