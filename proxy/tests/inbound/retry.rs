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

/// An app that closes each keep-alive connection `idle` after answering, without saying so:
/// the classic cause of sidecar 503s when the proxy's pool keeps connections longer.
async fn short_keepalive_app(
    idle: Duration,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let (addr, bodies, _, _) = counting_short_keepalive_app(idle).await;
    (addr, bodies)
}

/// As [`short_keepalive_app`], also counting the connections it accepted and those the peer
/// closed.
async fn counting_short_keepalive_app(
    idle: Duration,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closes = closed.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let seen = seen.clone();
            let closes = closes.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Wait for the next request, but only `idle` once idle.
                    let wait = if buf.is_empty() {
                        idle
                    } else {
                        Duration::from_secs(5)
                    };
                    let n = match tokio::time::timeout(wait, s.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => n,
                        Ok(Ok(_)) => {
                            closes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        _ => return,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    buf.drain(..end + 4 + len);
                    seen.lock().expect("lock").push(body);
                    let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, bodies, accepted, closed)
}

/// Gaps between requests on both sides of the app's idle close.
fn gap(i: u64) -> Duration {
    Duration::from_millis(10 + (i * 37) % 150)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_idle_below_the_apps_keeps_posts_safe() {
    bounded(async {
        let (app, bodies) = short_keepalive_app(Duration::from_millis(100)).await;
        let proxy = Proxy::start(app, Protocol::Http, true, |c| {
            c.timeouts.pool_idle = Duration::from_millis(40);
        })
        .await;
        let client = h1_client();
        for i in 0..40u64 {
            let req = Request::post(proxy.url("/pay"))
                .body(full(format!("p{i}")))
                .expect("request");
            let (status, _, body) = send(&client, req).await.expect("POST");
            assert_eq!(status, StatusCode::OK, "request {i}: {body:?}");
            tokio::time::sleep(gap(i)).await;
        }
        let bodies = bodies.lock().expect("lock").clone();
        let want: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        assert_eq!(bodies, want, "a POST was lost or sent twice");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_idle_above_the_apps_is_survived_by_idempotent_requests() {
    bounded(async {
        let (app, _) = short_keepalive_app(Duration::from_millis(30)).await;
        let proxy = Proxy::start(app, Protocol::Http, true, |c| {
            // Misconfigured on purpose: the pool keeps connections longer than the app.
            c.timeouts.pool_idle = Duration::from_secs(60);
        })
        .await;
        let client = h1_client();
        for i in 0..40u64 {
            let (status, _, body) = get(&client, &proxy.url("/page")).await.expect("GET");
            assert_eq!(status, StatusCode::OK, "request {i}: {body:?}");
            tokio::time::sleep(Duration::from_millis(20 + (i * 7) % 25)).await;
        }
    })
    .await;
}

/// One request after another on one keep-alive client connection: all of them over one app
/// connection (bound to the client's), a second client connection gets its own, and a bound
/// connection idle past `pool_idle` is closed and not used again (the app may be closing it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_keeps_one_app_connection_within_pool_idle() {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let (app, bodies, accepted, closed) =
            counting_short_keepalive_app(Duration::from_secs(30)).await;
        let proxy = Proxy::start(app, Protocol::Http, true, |c| {
            c.timeouts.pool_idle = Duration::from_millis(300);
        })
        .await;
        let addr = proxy.addr;
        async fn post(s: &mut tokio::net::TcpStream, body: &str) -> String {
            let req = format!(
                "POST /pay HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.expect("write");
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            // tandem's answer ends with the app's 2-byte body "ok"
            while !got.ends_with(b"\r\n\r\nok") {
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&chunk[..n]);
            }
            String::from_utf8_lossy(&got).into_owned()
        }
        let mut a = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        for i in 0..20 {
            let resp = post(&mut a, &format!("a{i}")).await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        }
        assert_eq!(
            accepted.load(SeqCst),
            1,
            "one client connection, one app connection"
        );
        let mut b = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        post(&mut b, "b0").await;
        post(&mut a, "a20").await;
        assert_eq!(
            accepted.load(SeqCst),
            2,
            "a second client connection, its own"
        );
        // Both client connections idle past pool_idle: tandem closes their app connections
        // (the pool's idle eviction); the client connections stay open.
        eventually("the idle app connections closed", || {
            closed.load(SeqCst) == 2
        })
        .await;
        post(&mut a, "a21").await;
        assert_eq!(
            accepted.load(SeqCst),
            3,
            "idle past pool_idle: a fresh app connection"
        );
        let bodies = bodies.lock().expect("lock").clone();
        let mut want: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
        want.extend(["b0", "a20", "a21"].map(String::from));
        assert_eq!(bodies, want, "each POST once, in order");
    })
    .await;
}
