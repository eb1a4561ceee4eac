//! Limits: slowloris cut at the header timeout, oversized or too many headers get 431, bodies
//! over the limit get 413, and requests over `max_concurrent` are shed with 503.

use std::time::Duration;

use http::{Request, StatusCode};
use tandem_proxy::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_header_timeout() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.timeouts.header_read = Duration::from_millis(300);
        })
        .await;
        let s = TcpStream::connect(proxy.addr).await.expect("connect");
        let (mut r, mut w) = s.into_split();
        w.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        // Dribble a header line every 50 ms, for far longer than the timeout (bounded).
        let dribble = tokio::spawn(async move {
            for i in 0..400 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if w.write_all(format!("X-Drip-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return true;
                }
            }
            false
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        // The proxy closed the connection while the client was still dribbling.
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || text.starts_with("HTTP/1.1 408"),
            "unexpected: {text}"
        );
        dribble.abort();
        assert_eq!(up.seen.hits("/echo"), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_headers_get_431() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.limits.max_header_bytes = 4096;
            c.limits.max_header_count = 20;
        })
        .await;
        let client = h1_client();
        // Over our limit but under hyper's parse buffer: our exact check answers.
        let req = Request::get(proxy.url("/echo"))
            .header("x-big", "a".repeat(6000))
            .body(full(""))
            .expect("request");
        let (status, _, _) = send(&client, req).await.expect("GET");
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Far over: hyper's parser refuses it before any handler runs.
        let req = Request::get(proxy.url("/echo"))
            .header("x-huge", "a".repeat(100_000))
            .body(full(""))
            .expect("request");
        // hyper answers and closes once its buffer is full; a client still writing the rest
        // of the head can see the reset first. Either way the app must not see it (below).
        match send(&h1_client(), req).await {
            Ok((status, _, _)) => assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Err(e) => {
                let e = format!("{e:?}");
                assert!(
                    e.contains("BrokenPipe") || e.contains("ConnectionReset"),
                    "{e}"
                );
            }
        }
        let mut req = Request::get(proxy.url("/echo"));
        for i in 0..30 {
            req = req.header(format!("x-h{i}"), "v");
        }
        let (status, _, _) = send(&h1_client(), req.body(full("")).expect("request"))
            .await
            .expect("GET");
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(up.seen.hits("/echo"), 0);
        let (status, _, _) = get(&h1_client(), &proxy.url("/echo")).await.expect("GET");
        assert_eq!(status, StatusCode::OK, "a normal request still passes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_limit_gets_413() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.limits.max_body_bytes = Some(1000);
        })
        .await;
        let client = h1_client();
        let req = Request::post(proxy.url("/echo"))
            .body(full(vec![b'x'; 2000]))
            .expect("request");
        let (status, _, body) = send(&client, req).await.expect("POST");
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body, "tandem: body_too_large\n");
        // Without Content-Length (chunked), found while reading.
        let stream = futures_util::stream::iter((0..4).map(|_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(
                vec![b'y'; 500],
            )))
        }));
        let req = Request::post(proxy.url("/echo"))
            .body(http_body_util::BodyExt::boxed_unsync(
                http_body_util::StreamBody::new(stream),
            ))
            .expect("request");
        let (status, _, _) = send(&h1_client(), req).await.expect("POST");
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(up.seen.hits("/echo"), 0);
        let req = Request::post(proxy.url("/echo"))
            .body(full(vec![b'x'; 1000]))
            .expect("request");
        let (status, _, _) = send(&client, req).await.expect("POST");
        assert_eq!(status, StatusCode::OK, "a body at the limit passes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_concurrent_is_shed() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.limits.max_concurrent = 1;
        })
        .await;
        let client = h1_client();
        let url = proxy.url("/slow?ms=1000");
        let slow = tokio::spawn({
            let client = client.clone();
            async move { get(&client, &url).await }
        });
        let seen = up.seen.clone();
        eventually("the slow request reached the app", || {
            seen.hits("/slow") == 1
        })
        .await;
        let (status, h, body) = get(&h1_client(), &proxy.url("/echo")).await.expect("GET");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "tandem: shed\n");
        assert_eq!(h["retry-after"], "1");
        let (status, _, _) = slow.await.expect("task").expect("slow GET");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            proxy.metric(r#"tandem_proxy_shed_total{listener="test"}"#),
            1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_over_limit_gets_413() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            // Above the 64 KiB replay buffer: the body is already streaming to the app when
            // the limit is crossed.
            c.limits.max_body_bytes = Some(100 * 1024);
        })
        .await;
        let stream = futures_util::stream::iter((0..20).map(|_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(
                vec![b'z'; 10 * 1024],
            )))
        }));
        let req = Request::post(proxy.url("/echo"))
            .body(http_body_util::BodyExt::boxed_unsync(
                http_body_util::StreamBody::new(stream),
            ))
            .expect("request");
        // The proxy answers 413 and closes while the client may still be writing, so the
        // client can see the broken pipe before the response: both are a refusal.
        match send(&h1_client(), req).await {
            Ok((status, _, body)) => {
                assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body:?}");
            }
            Err(e) => assert!(format!("{e:?}").contains("BodyWrite"), "{e:?}"),
        }
        assert!(
            up.seen.bodies("/echo").is_empty(),
            "the app got a truncated body as whole"
        );
    })
    .await;
}
