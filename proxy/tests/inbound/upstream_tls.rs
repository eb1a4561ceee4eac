//! TLS to the app (`upstream_tls`) and TLS termination on TCP listeners: the app is a real
//! rustls server that requires a client certificate. A good config reaches it (HTTP and TCP);
//! a wrong CA or a wrong SNI name is a 502 `upstream_tls` counted by reason; no client
//! certificate is refused by the app. A TCP listener terminates TLS for a rustls client and
//! counts a non-TLS client as a `not_tls` handshake failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::ServerName;
use tandem_proxy::{ListenerConfig, Protocol, TlsConfig, UpstreamTlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::pki::*;
use crate::support::*;

/// The app's PKI: its CA and server certificate for `app.internal`, the CA its clients'
/// certificates must chain to, and the client certificate tandem presents.
struct AppPki {
    dir: TempDir,
    app_ca: Ca,
    client_ca: Ca,
    server: Issued,
    client: Issued,
}

impl AppPki {
    fn new() -> Self {
        let app_ca = Ca::new("app CA");
        let client_ca = Ca::new("sidecar CA");
        let server = app_ca.issue("app", &["app.internal"], &[], false);
        let client = client_ca.issue("tandem", &["tandem.internal"], &[], false);
        Self {
            dir: TempDir::new("upstream-tls"),
            app_ca,
            client_ca,
            server,
            client,
        }
    }

    fn config(&self, trust: &Ca, name: &str, client_cert: bool) -> UpstreamTlsConfig {
        let n: u64 = rand::random();
        let ca_file = self.dir.write(&format!("ca-{n:x}.pem"), trust.pem());
        let (cert_file, key_file): (Option<PathBuf>, Option<PathBuf>) = if client_cert {
            (
                Some(self.dir.write("client.pem", &self.client.cert_pem)),
                Some(self.dir.write("client-key.pem", &self.client.key_pem)),
            )
        } else {
            (None, None)
        };
        UpstreamTlsConfig {
            ca_file: Some(ca_file),
            server_name: Some(name.into()),
            cert_file,
            key_file,
            reload_interval: std::time::Duration::from_secs(10),
        }
    }
}

/// An HTTPS app requiring a client certificate from `pki.client_ca`; answers with the
/// client's certificate CN it saw.
async fn https_app(pki: &AppPki) -> SocketAddr {
    let cfg = server_config(&pki.server, Some(&pki.client_ca), &[b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = TlsAcceptor::from(cfg.clone());
            tokio::spawn(async move {
                let Ok(s) = acceptor.accept(tcp).await else {
                    return;
                };
                let has_client_cert = s.get_ref().1.peer_certificates().is_some();
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let body = format!(
                        "app over tls: {} client cert: {has_client_cert}",
                        req.uri().path()
                    );
                    Ok::<_, std::convert::Infallible>(Response::new(full(Bytes::from(body))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TLS echo app requiring a client certificate from `pki.client_ca`.
async fn tls_echo_app(pki: &AppPki) -> SocketAddr {
    let cfg = server_config(&pki.server, Some(&pki.client_ca), &[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = TlsAcceptor::from(cfg.clone());
            tokio::spawn(async move {
                let Ok(s) = acceptor.accept(tcp).await else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn no_retries(c: &mut ListenerConfig) {
    c.retry.max_attempts = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_an_mtls_app_and_refusals() {
    bounded(async {
        let pki = AppPki::new();
        let app = https_app(&pki).await;

        let good = Proxy::start(app, Protocol::Http, true, |c| {
            c.upstream_tls = Some(pki.config(&pki.app_ca, "app.internal", true));
        })
        .await;
        for _ in 0..3 {
            let (s, _, body) = get(&h1_client(), &good.url("/hello")).await.expect("GET");
            assert_eq!(s, StatusCode::OK);
            assert_eq!(&body[..], b"app over tls: /hello client cert: true");
        }

        let other_ca = Ca::new("another CA");
        for (what, cfg, reason) in [
            (
                "a CA that did not sign the app's certificate",
                pki.config(&other_ca, "app.internal", true),
                Some("unknown_ca"),
            ),
            (
                "an SNI name the certificate does not carry",
                pki.config(&pki.app_ca, "wrong.internal", true),
                Some("name_mismatch"),
            ),
            // TLS 1.3: the app refuses the missing certificate after tandem's side of the
            // handshake is done, so this one surfaces as a reset, still a 502.
            (
                "no client certificate",
                pki.config(&pki.app_ca, "app.internal", false),
                None,
            ),
        ] {
            let proxy = Proxy::start(app, Protocol::Http, true, |c| {
                no_retries(c);
                c.upstream_tls = Some(cfg);
            })
            .await;
            let (s, _, body) = get(&h1_client(), &proxy.url("/hello")).await.expect("GET");
            assert_eq!(s, StatusCode::BAD_GATEWAY, "{what}");
            if let Some(reason) = reason {
                assert_eq!(&body[..], b"tandem: upstream_tls\n", "{what}");
                let series = format!(
                    "tandem_proxy_upstream_tls_failures_total{{listener=\"test\",reason=\"{reason}\"}}"
                );
                assert_eq!(proxy.metric(&series), 1.0, "{what}: {}", proxy.metrics());
                assert_eq!(
                    proxy.metric(
                        "tandem_proxy_errors_total{listener=\"test\",kind=\"upstream_tls\"}"
                    ),
                    1.0,
                    "{what}"
                );
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_terminates_and_originates_tls() {
    bounded(async {
        let pki = AppPki::new();
        let app = tls_echo_app(&pki).await;
        // tandem's own certificate for clients, from a third CA.
        let edge_ca = Ca::new("edge CA");
        let (cert, key, _) = write_server_cert(&pki.dir, &edge_ca, "edge");
        let proxy = Proxy::start(app, Protocol::Tcp, true, |c| {
            c.tls = Some(TlsConfig {
                cert,
                key,
                reload_interval: Duration::from_secs(5),
                client_auth: None,
            });
            c.upstream_tls = Some(pki.config(&pki.app_ca, "app.internal", true));
        })
        .await;

        // A real rustls client, TLS to tandem, TLS from tandem to the app, bytes both ways.
        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut s = TlsConnector::from(client_config(&edge_ca, &[], None))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake with tandem");
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(&payload).await.expect("write");
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, payload);
        drop(s);

        // A client that does not speak TLS is refused and counted.
        let mut plain = TcpStream::connect(proxy.addr).await.expect("connect");
        let _ = plain.write_all(b"HELLO plain text\r\n\r\n").await;
        let mut buf = Vec::new();
        let _ = plain.read_to_end(&mut buf).await;
        let series =
            "tandem_proxy_tls_handshake_failures_total{listener=\"test\",reason=\"not_tls\"}";
        eventually(series, || proxy.metric(series) == 1.0).await;

        // Through a wrong CA towards the app, the client's connection is closed.
        let bad = Proxy::start(app, Protocol::Tcp, true, |c| {
            no_retries(c);
            c.upstream_tls = Some(pki.config(&Ca::new("x"), "app.internal", true));
        })
        .await;
        let mut s = TcpStream::connect(bad.addr).await.expect("connect");
        let mut buf = Vec::new();
        let n = s.read_to_end(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "nothing from an app tandem could not verify");
        let series =
            "tandem_proxy_upstream_tls_failures_total{listener=\"test\",reason=\"unknown_ca\"}";
        eventually(series, || bad.metric(series) == 1.0).await;
    })
    .await;
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let pki = AppPki::new();
    let mut c = ListenerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:9",
        Protocol::Http,
    );
    c.upstream_tls = Some(UpstreamTlsConfig {
        ca_file: None,
        server_name: None,
        cert_file: None,
        key_file: None,
        reload_interval: std::time::Duration::from_secs(10),
    });
    let e = c.validate().expect_err("no ca_file").to_string();
    assert!(e.contains("upstream_tls.ca_file"), "{e}");

    let mut u = pki.config(&pki.app_ca, "app.internal", true);
    u.key_file = Some(pki.dir.path("missing-key.pem"));
    c.upstream_tls = Some(u);
    let e = tandem_proxy::Inbound::bind(&[c.clone()])
        .await
        .expect_err("unreadable key")
        .to_string();
    assert!(
        e.contains("upstream_tls.key_file") && e.contains("missing-key.pem"),
        "{e}"
    );

    let mut u = pki.config(&pki.app_ca, "app.internal", true);
    u.key_file = None;
    c.upstream_tls = Some(u);
    let e = c.validate().expect_err("cert without key").to_string();
    assert!(e.contains("upstream_tls.key_file"), "{e}");
}
