//! GET, POST, streaming bodies both ways, h2c, WebSocket, header hygiene and case, through
//! the proxy to a real app.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tandem_proxy::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_with_hygiene_headers() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |_| {}).await;
        let client = h1_client();

        let (status, h, body) = get(&client, &proxy.url("/echo")).await.expect("GET");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "");
        assert_eq!(h["x-tandem-attempt-count"], "1");
        assert!(h.contains_key("x-tandem-upstream-service-time"));
        assert_eq!(h["x-up-xff"], "127.0.0.1");
        assert_eq!(h["x-up-proto"], "http");
        assert_eq!(h["x-up-method"], "GET");
        // A request id was made, sent to the app and echoed to the client.
        let rid = h["x-request-id"].clone();
        assert_eq!(rid.len(), 32);
        assert_eq!(h["x-up-rid"], rid);

        let req = Request::post(proxy.url("/echo"))
            .header("x-request-id", "client-id-1")
            .header("authorization", "Bearer secret-token")
            .header("cookie", "session=secret-cookie")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .body(full("hello app"))
            .expect("request");
        let (status, h, body) = send(&client, req).await.expect("POST");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hello app");
        assert_eq!(h["x-up-rid"], "client-id-1");
        assert_eq!(h["x-request-id"], "client-id-1");
        assert_eq!(
            h["x-up-has-hop"], "no",
            "hop-by-hop headers reached the app"
        );

        // One access-log record per request, with the request id and no header values.
        eventually("two access-log records", || {
            proxy.log.lock().expect("lock").len() == 2
        })
        .await;
        let log = proxy.log.lock().expect("lock").clone();
        assert_eq!(log[0].method, "GET");
        assert_eq!(log[0].status, 200);
        assert_eq!(log[1].request_id, "client-id-1");
        assert_eq!(
            log[1].trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let line = serde_json::to_string(&log[1]).expect("serialize");
        assert!(
            !line.contains("secret"),
            "a credential reached the access log: {line}"
        );
        assert_eq!(log[1].bytes_in, 9);
        assert_eq!(log[1].bytes_out, 9);
        assert!(
            log.iter()
                .all(|r| r.completed && r.attempts == 1 && r.cause.is_none()),
            "{log:?}"
        );
        assert_eq!(
            proxy.metric(
                r#"tandem_proxy_requests_total{listener="test",method="GET",status_class="2xx"}"#
            ),
            1.0
        );
        assert_eq!(
            proxy.metric(
                r#"tandem_proxy_requests_total{listener="test",method="POST",status_class="2xx"}"#
            ),
            1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_bodies_both_ways() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |_| {}).await;
        let client = h1_client();

        // A chunked upload larger than the replay buffer: streamed, not held whole.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let mut expected = Vec::new();
        let chunks: Vec<Bytes> = (0..200u32)
            .map(|i| Bytes::from(vec![u8::try_from(i % 251).expect("byte"); 1024]))
            .collect();
        for c in &chunks {
            expected.extend_from_slice(c);
        }
        tokio::spawn(async move {
            for c in chunks {
                if tx.send(Ok(Frame::data(c))).await.is_err() {
                    return;
                }
            }
        });
        let body = StreamBody::new(futures_util::stream::poll_fn({
            let mut rx = rx;
            move |cx| rx.poll_recv(cx)
        }))
        .boxed_unsync();
        let req = Request::post(proxy.url("/echo"))
            .body(body)
            .expect("request");
        let (status, _, echoed) = send(&client, req).await.expect("streamed POST");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(echoed.len(), expected.len());
        assert!(echoed == expected, "streamed body changed on the way");

        // A streamed response arrives whole.
        let (status, _, body) = get(&client, &proxy.url("/stream"))
            .await
            .expect("GET /stream");
        assert_eq!(status, StatusCode::OK);
        let want: String = (0..10).map(|i| format!("chunk-{i}\n")).collect();
        assert_eq!(body, want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::H2c, true, |_| {}).await;
        let client = h2_client();
        let req = Request::post(proxy.url("/echo"))
            .body(full("over h2"))
            .expect("request");
        let resp = client.request(req).await.expect("h2c POST");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["x-up-version"], "HTTP/2.0");
        assert_eq!(resp.headers()["x-tandem-attempt-count"], "1");
        // No Host header beside :authority (nginx rejects the pair as a duplicate host); the
        // client's host travels in X-Forwarded-Host.
        assert!(
            resp.headers().get("x-up-host").is_none(),
            "{:?}",
            resp.headers()
        );
        assert_eq!(resp.headers()["x-up-fhost"], proxy.addr.to_string());
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, "over h2");
        // Several concurrent streams on one connection.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let client = client.clone();
            let url = proxy.url("/slow?ms=20");
            set.spawn(async move { get(&client, &url).await.map(|r| r.0) });
        }
        while let Some(r) = set.join_next().await {
            assert_eq!(r.expect("task").expect("h2c GET"), StatusCode::OK);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |_| {}).await;
        let stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let (mut ws, resp) =
            tokio_tungstenite::client_async(format!("ws://{}/ws", proxy.addr), stream)
                .await
                .expect("websocket handshake through the proxy");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        for i in 0..5 {
            let text = format!("hello {i}");
            ws.send(Message::text(text.clone())).await.expect("send");
            let got = ws.next().await.expect("open").expect("message");
            assert_eq!(got.into_text().expect("text").as_str(), text);
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .expect("send");
        let got = ws.next().await.expect("open").expect("message");
        assert_eq!(got.into_data().as_ref(), &[0u8, 1, 2, 255]);
        ws.close(None).await.expect("close");
    })
    .await;
}

/// An app that records the raw request head it receives and answers with mixed-case headers.
async fn raw_app() -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nX-Legacy-Header: v\r\nContent-Length: 2\r\n\r\nok")
            .await;
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_case_preserved_and_hop_by_hop_stripped() {
    let (request_head, response_head) = through_raw_app(true).await;
    assert!(
        request_head.contains("X-Custom-CASE: v"),
        "case lost: {request_head}"
    );
    assert!(
        response_head.contains("X-Legacy-Header: v"),
        "response case lost: {response_head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_case_not_kept_unless_asked_and_hop_by_hop_stripped() {
    let (request_head, response_head) = through_raw_app(false).await;
    assert!(request_head.contains("x-custom-case: v"), "{request_head}");
    assert!(
        response_head.contains("x-legacy-header: v"),
        "{response_head}"
    );
}

/// Sends a mixed-case request with hop-by-hop headers through a proxy to [`raw_app`]; checks
/// what must hold either way and returns the request head the app saw and the response head
/// the client got.
async fn through_raw_app(preserve_header_case: bool) -> (String, String) {
    bounded(async move {
        let (app, head) = raw_app().await;
        let proxy = Proxy::start(app, Protocol::Http, true, |c| {
            c.preserve_header_case = preserve_header_case;
        })
        .await;
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(
            b"GET /legacy HTTP/1.1\r\nHost: legacy.local\r\nX-Custom-CASE: v\r\n\
              Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: timeout=5\r\n\r\n",
        )
        .await
        .expect("write");
        let head = head.await.expect("app saw the request");
        assert!(
            !head.to_ascii_lowercase().contains("x-drop"),
            "hop-by-hop leaked: {head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("keep-alive: timeout"),
            "{head}"
        );
        assert!(head.contains("legacy.local"), "{head}");
        let mut resp = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(b"ok") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut resp))
                .await
                .expect("response in time")
                .expect("read");
            assert!(n > 0, "closed before the response");
            got.extend_from_slice(&resp[..n]);
        }
        (head, String::from_utf8_lossy(&got).into_owned())
    })
    .await
}

/// CONNECT over h2 (RFC 9113 §8.5) is answered 405 with `Allow` by tandem, never forwarded
/// to the app (it used to reach the app, and the client got a reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connect_is_refused_with_405() {
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::H2c, true, |_| {}).await;
        let io = TokioIo::new(TcpStream::connect(proxy.addr).await.expect("connect"));
        let (mut tx, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let req = Request::connect("db.internal:5432")
            .body(full(Bytes::new()))
            .expect("request");
        tx.ready().await.expect("ready");
        let resp = tx.send_request(req).await.expect("CONNECT answered");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(resp.headers()["allow"]
            .to_str()
            .is_ok_and(|a| a.contains("GET") && !a.contains("CONNECT")));
        assert_eq!(up.seen.hits("/"), 0, "CONNECT reached the app");
    })
    .await;
}
