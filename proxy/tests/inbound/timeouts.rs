//! Timeouts mapped to statuses: per try and whole request → 504 naming which; an idle
//! keep-alive connection is closed; `Expect: 100-continue` flows through to the app.

use std::time::Duration;

use http::{Request, StatusCode};
use tandem_proxy::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_is_504_and_retried_only_when_safe() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.timeouts.per_try = Duration::from_millis(100);
            c.retry.max_attempts = 2;
            c.retry.backoff_base = Duration::from_millis(1);
            c.retry.backoff_max = Duration::from_millis(1);
        })
        .await;
        let client = h1_client();
        let (status, h, body) = get(&client, &proxy.url("/slow?ms=3000"))
            .await
            .expect("GET");
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body, "tandem: per_try_timeout\n");
        assert_eq!(h["x-tandem-attempt-count"], "2");
        let req = Request::post(proxy.url("/slow?ms=3000"))
            .body(full("x"))
            .expect("request");
        let (status, h, _) = send(&client, req).await.expect("POST");
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            h["x-tandem-attempt-count"], "1",
            "a POST was repeated after a timeout"
        );
        assert_eq!(up.seen.hits("/slow"), 3);
        assert!(
            proxy.metric(r#"tandem_proxy_timeouts_total{listener="test",kind="per_try_timeout"}"#)
                == 2.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_is_504() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.timeouts.request = Duration::from_millis(300);
            c.hold_timeout = Duration::from_millis(100);
        })
        .await;
        let (status, _, body) = get(&h1_client(), &proxy.url("/slow?ms=5000"))
            .await
            .expect("GET");
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body, "tandem: request_timeout\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_shorter_than_the_request_timeout_wins() {
    bounded(async {
        let up = Upstream::start().await;
        // The listener would wait 30 s; the caller's grpc-timeout says 200 ms.
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.timeouts.request = Duration::from_secs(30);
        })
        .await;
        let req = Request::get(proxy.url("/slow?ms=5000"))
            .header("grpc-timeout", "200m")
            .body(full(""))
            .expect("request");
        // Without it the app's answer would come after 5 s: a 200, not this 504.
        let (status, _, body) = send(&h1_client(), req).await.expect("GET");
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body, "tandem: request_timeout\n");
    })
    .await;
}

async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("bytes in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.timeouts.idle = Duration::from_millis(200);
            // Only the idle timer may close this connection.
            c.timeouts.header_read = Duration::from_secs(60);
        })
        .await;
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        read_until(&mut s, "\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the idle connection was never closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_passes_through() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |_| {}).await;
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .expect("write head");
        read_until(&mut s, "100 Continue").await;
        s.write_all(b"hello").await.expect("write body");
        let resp = read_until(&mut s, "hello").await;
        assert!(resp.contains("200 OK"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("x-up-expect: 100-continue"),
            "{resp}"
        );
        assert_eq!(up.seen.bodies("/echo"), vec!["hello"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_outlives_the_header_read_timeout() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.timeouts.header_read = Duration::from_millis(100);
            c.timeouts.idle = Duration::from_secs(60);
        })
        .await;
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        read_until(&mut s, "\r\n\r\n").await;
        // Idle for several header-read periods: an idle keep-alive connection is not a slow
        // request head, and must not be cut for it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write again");
        let second = read_until(&mut s, "\r\n\r\n").await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        assert_eq!(up.seen.hits("/echo"), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_after_an_idle_keep_alive_is_cut_from_when_it_began() {
    bounded(async {
        let up = Upstream::start().await;
        let header_read = Duration::from_millis(300);
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.timeouts.header_read = header_read;
            c.timeouts.idle = Duration::from_secs(60);
        })
        .await;
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        read_until(&mut s, "\r\n\r\n").await;
        // Idle for a period and a half (the header clock's timer fires meanwhile and finds no
        // head), then begin a head and stall: the cut must come one period after the head
        // began, neither at the timer's next tick nor never.
        tokio::time::sleep(header_read * 3 / 2).await;
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("partial head");
        let began = tokio::time::Instant::now();
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let waited = began.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || text.starts_with("HTTP/1.1 408"),
            "unexpected: {text}"
        );
        assert!(
            waited >= header_read * 9 / 10,
            "cut {waited:?} after the head began, before the {header_read:?} it is allowed"
        );
        assert_eq!(up.seen.hits("/echo"), 1);
    })
    .await;
}
