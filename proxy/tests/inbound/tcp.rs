//! Raw TCP mode: bytes both ways, server-speaks-first works (nothing is sniffed), and a
//! connection waits for readiness.

use tandem_proxy::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// An app that greets first, then echoes.
async fn banner_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(b"220 hello\r\n").await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_and_echo() {
    bounded(async {
        let app = banner_echo().await;
        let proxy = Proxy::start(app, Protocol::Tcp, true, |_| {}).await;
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut banner = [0u8; 11];
        s.read_exact(&mut banner)
            .await
            .expect("banner before any client byte");
        assert_eq!(&banner, b"220 hello\r\n");
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
        let (mut r, mut w) = s.into_split();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                w.write_all(&payload).await.expect("write");
                w.shutdown().await.expect("shutdown");
            })
        };
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.expect("read echo");
        writer.await.expect("writer");
        assert!(back == payload, "echo differs ({} bytes back)", back.len());
        eventually("a tcp access record", || {
            proxy.log.lock().expect("lock").len() == 1
        })
        .await;
        let rec = proxy.log.lock().expect("lock")[0].clone();
        assert_eq!(rec.protocol, "tcp");
        assert_eq!(rec.bytes_in, 100_000);
        assert_eq!(rec.bytes_out, 100_011);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_readiness() {
    bounded(async {
        let app = banner_echo().await;
        let proxy = Proxy::start(app, Protocol::Tcp, false, |_| {}).await;
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut banner = [0u8; 11];
        // Not ready: no banner yet (the app was not connected to).
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            s.read_exact(&mut banner),
        )
        .await;
        assert!(early.is_err(), "connected to the app before it was ready");
        proxy.ready.send_replace(true);
        s.read_exact(&mut banner).await.expect("banner once ready");
        assert_eq!(&banner, b"220 hello\r\n");
    })
    .await;
}
