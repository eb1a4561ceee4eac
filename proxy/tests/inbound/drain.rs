//! Drain on stop: a slow in-flight request completes while new connections are refused; past
//! `drain_timeout` what is left is cut and reported.

use std::time::Duration;

use http::StatusCode;
use tandem_proxy::Protocol;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_completes_while_new_connections_are_refused() {
    bounded(async {
        let up = Upstream::start().await;
        let mut proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.drain_timeout = Duration::from_secs(30);
        })
        .await;
        let client = h1_client();
        let url = proxy.url("/slow?ms=1500");
        let slow = tokio::spawn(async move { get(&client, &url).await });
        let seen = up.seen.clone();
        eventually("the slow request reached the app", || {
            seen.hits("/slow") == 1
        })
        .await;

        let serving = proxy.drain_handle();
        let drained = tokio::spawn(serving.drain());
        let addr = proxy.addr;
        let mut refused = false;
        for _ in 0..500 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            refused,
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
        let up = Upstream::start().await;
        let mut proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.drain_timeout = Duration::from_millis(200);
        })
        .await;
        let client = h1_client();
        let url = proxy.url("/slow?ms=20000");
        let slow = tokio::spawn(async move { get(&client, &url).await });
        let seen = up.seen.clone();
        eventually("the slow request reached the app", || {
            seen.hits("/slow") == 1
        })
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
