//! Retries: a POST whose body reached the app before it died is not retried (unless it has an
//! Idempotency-Key); a connect failure is; an app answering 503 to everything gets no more
//! retries than the budget allows.

use std::time::Duration;

use http::{Request, StatusCode};
use tandem_proxy::Protocol;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_that_reached_the_app_is_not_retried() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.retry.max_attempts = 3;
        })
        .await;
        let client = h1_client();
        let req = Request::post(proxy.url("/die-after-body"))
            .body(full("charge card"))
            .expect("request");
        let (status, h, body) = send(&client, req).await.expect("POST");
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body, "tandem: upstream_reset\n");
        assert_eq!(h["x-tandem-attempt-count"], "1");
        assert_eq!(up.seen.bodies("/die-after-body"), vec!["charge card"]);

        // The same POST with an Idempotency-Key may be repeated: every attempt is made.
        let req = Request::post(proxy.url("/die-after-body"))
            .header("idempotency-key", "k-1")
            .body(full("charge card"))
            .expect("request");
        let (status, h, _) = send(&client, req).await.expect("POST");
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(h["x-tandem-attempt-count"], "3");
        assert_eq!(up.seen.hits("/die-after-body"), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_even_for_post() {
    bounded(async {
        // Reserve a port, then free it: nothing listens there until we start the app.
        let port_holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = port_holder.local_addr().expect("addr");
        drop(port_holder);
        let proxy = Proxy::start(addr, Protocol::Http, true, |c| {
            c.retry.max_attempts = 1000;
            c.retry.backoff_base = Duration::from_millis(10);
            c.retry.backoff_max = Duration::from_millis(20);
        })
        .await;
        let client = h1_client();
        let url = proxy.url("/echo");
        let pending = tokio::spawn(async move {
            let req = Request::post(url).body(full("once only")).expect("request");
            send(&client, req).await
        });
        eventually("a connect failure was retried", || {
            proxy.metric(r#"tandem_proxy_retries_total{listener="test",kind="connect_failed"}"#)
                >= 1.0
        })
        .await;
        let up = Upstream::start_on(addr, Default::default()).await;
        let (status, h, body) = pending.await.expect("task").expect("POST");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "once only");
        let attempts: u32 = h["x-tandem-attempt-count"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("number");
        assert!(attempts >= 2, "attempts: {attempts}");
        assert_eq!(
            up.seen.bodies("/echo"),
            vec!["once only"],
            "the app saw the POST once"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_app_gets_only_budgeted_retries() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.retry.max_attempts = 3;
            c.retry.backoff_base = Duration::from_millis(1);
            c.retry.backoff_max = Duration::from_millis(1);
            c.retry.budget_ratio = 0.2;
            c.retry.budget_min_per_second = 1;
            c.retry.budget_ttl = Duration::from_secs(10);
        })
        .await;
        let client = h1_client();
        const REQUESTS: usize = 100;
        for _ in 0..REQUESTS {
            let (status, _, body) = get(&client, &proxy.url("/unavailable")).await.expect("GET");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(body, "app says no", "the app's own 503 is passed through");
        }
        let hits = up.seen.hits("/unavailable");
        // Budget over the 10 s window: 1/s floor * 10 s + 20% of 100 requests = 30 retries.
        // Without a budget, 3 attempts each would be 300 hits. (If the run took longer than
        // the window, the window slid and the bound is only looser, never tighter.)
        assert!(hits > REQUESTS, "no retries at all: {hits}");
        assert!(
            hits <= REQUESTS + 30,
            "retry storm: {hits} hits for {REQUESTS} requests"
        );
        assert!(
            proxy.metric(r#"tandem_proxy_retry_budget_exhausted_total{listener="test"}"#) >= 1.0
        );
    })
    .await;
}
