//! Per-client rate limiting: a client over its rate gets 429 with Retry-After while another
//! client (another source IP on loopback) is unaffected.

use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tandem_proxy::{Protocol, RateLimitConfig};
use tokio::net::TcpSocket;

use crate::support::*;

/// One GET from a given loopback source address.
async fn get_from(src: &str, proxy: &Proxy) -> (StatusCode, http::HeaderMap) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{src}:0").parse().expect("addr"))
        .expect("bind source");
    let stream = socket.connect(proxy.addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/echo")
        .header("host", "localhost")
        .body(full(bytes::Bytes::new()))
        .expect("req");
    let resp = tx.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let _ = body.collect().await;
    (parts.status, parts.headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_gets_429_other_client_unaffected() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.rate_limit = Some(RateLimitConfig {
                per_second: 0.2,
                burst: 3,
                key: "client_ip".into(),
                max_clients: 100,
            })
        })
        .await;
        for i in 0..3 {
            assert_eq!(
                get_from("127.0.0.1", &proxy).await.0,
                StatusCode::OK,
                "request {i}"
            );
        }
        let (status, h) = get_from("127.0.0.1", &proxy).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let retry: u32 = h["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=5).contains(&retry), "retry-after {retry}");
        // Another client, from another loopback address, has its own bucket.
        assert_eq!(get_from("127.0.0.2", &proxy).await.0, StatusCode::OK);
        assert_eq!(up.seen.hits("/echo"), 4);
        assert!(format!("{:?}", proxy.log.lock().expect("lock")).contains("rate_limited"));
    })
    .await;
}
