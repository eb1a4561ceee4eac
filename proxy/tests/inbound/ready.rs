//! The readiness gate: a request during not-ready waits and succeeds when the app becomes
//! ready; past `hold_timeout` it gets 503 with Retry-After and never reaches the app.

use std::time::Duration;

use http::StatusCode;
use tandem_proxy::Protocol;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_waits_for_readiness() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, false, |c| {
            c.hold_timeout = Duration::from_secs(30);
        })
        .await;
        let client = h1_client();
        let url = proxy.url("/echo");
        let pending = tokio::spawn(async move { get(&client, &url).await });
        eventually("the request is held in flight", || {
            proxy.metric(r#"tandem_proxy_requests_in_flight{listener="test"}"#) == 1.0
        })
        .await;
        assert_eq!(
            up.seen.hits("/echo"),
            0,
            "reached the app before it was ready"
        );
        assert!(!pending.is_finished());
        proxy.ready.send_replace(true);
        let (status, h, _) = pending.await.expect("task").expect("GET");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h["x-tandem-attempt-count"], "1");
        assert_eq!(up.seen.hits("/echo"), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_past_hold_is_503() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, false, |c| {
            c.hold_timeout = Duration::from_millis(100);
        })
        .await;
        let (status, h, body) = get(&h1_client(), &proxy.url("/echo")).await.expect("GET");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h["retry-after"], "1");
        assert_eq!(body, "tandem: not_ready\n");
        assert_eq!(up.seen.hits("/echo"), 0);
        eventually("a record with the cause", || {
            proxy.log.lock().expect("lock").len() == 1
        })
        .await;
        assert_eq!(proxy.log.lock().expect("lock")[0].cause, Some("not_ready"));
    })
    .await;
}
