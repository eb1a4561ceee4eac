//! A minimal HTTP/1.1 app ("ok" to everything, keep-alive), the upstream for benchmarks.
//!
//! Run with: `cargo run --release -p tandem-proxy --example hello_app -- 127.0.0.1:3000`
//!
//! Invariant: it does as little as possible per request, so a benchmark measures the proxy.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::process::ExitCode;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello_app: cannot bind {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
