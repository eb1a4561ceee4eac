//! Drain on stop: a slow in-flight request completes while new connections are refused; past
//! `drain_timeout` what is left is cut and reported.

use std::time::Duration;

use http::StatusCode;
use tandem_proxy::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_completes_while_new_connections_are_refused() {
    bounded(async {
        let SlowInFlight {
            up: _up,
            mut proxy,
            slow,
        } = SlowInFlight::start(Protocol::Http, Duration::from_secs(30), &h1_client(), 1500).await;

        // An idle keep-alive connection, open before the drain.
        let mut idle = TcpStream::connect(proxy.addr).await.expect("connect");
        idle.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 4096];
        let n = idle.read(&mut buf).await.expect("response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        let serving = proxy.drain_handle();
        let drained = tokio::spawn(serving.drain());
        // The idle connection is closed at once, not left to time out.
        let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
            .await
            .expect("idle keep-alive connection was not closed by drain")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(
            refuses_connections(proxy.addr).await,
            "new connections were still accepted while draining"
        );
        assert!(
            !slow.is_finished(),
            "the slow request ended before the refusal was seen"
        );

        let (status, _, body) = slow.await.expect("task").expect("in-flight GET");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "slow done");
        let report = drained.await.expect("drain task");
        assert!(report.all_finished(), "{report:?}");
        assert_eq!(report.cut(), 0);
        assert_eq!(report.listeners[0].in_flight_at_start, 1);
        assert!(report.finished() >= 1, "{report:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_cuts_and_reports() {
    bounded(async {
        let SlowInFlight {
            up: _up,
            mut proxy,
            slow,
        } = SlowInFlight::start(
            Protocol::Http,
            Duration::from_millis(200),
            &h1_client(),
            20_000,
        )
        .await;
        let report = proxy.drain().await;
        assert!(!report.all_finished());
        assert_eq!(report.cut(), 1, "{report:?}");
        assert!(
            slow.await.expect("task").is_err(),
            "the cut request should fail"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_in_flight_completes_during_drain() {
    bounded(async {
        let client = h2_client();
        let SlowInFlight {
            up,
            mut proxy,
            slow,
        } = SlowInFlight::start(Protocol::H2c, Duration::from_secs(30), &client, 1500).await;
        let drained = tokio::spawn(proxy.drain_handle().drain());
        let (status, _, body) = slow.await.expect("task").expect("in-flight h2 GET");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "slow done");
        let report = drained.await.expect("drain task");
        assert!(report.all_finished(), "{report:?}");
        assert_eq!(report.cut(), 0);
        // After GOAWAY and the closed listener, the same client gets no new stream through.
        let after = get(&client, &proxy.url("/echo")).await;
        assert!(
            after.is_err(),
            "a new request succeeded after drain: {after:?}"
        );
        assert_eq!(up.seen.hits("/echo"), 0);
    })
    .await;
}
