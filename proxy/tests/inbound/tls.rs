//! TLS termination: HTTPS over HTTP/1.1 and h2 (ALPN) through the proxy to a cleartext app;
//! certificate rotation served to new connections while open and in-flight ones carry on;
//! a bad new file keeps the old certificate and says why.

use std::time::Duration;

use http::StatusCode;
use tandem_proxy::{Protocol, TlsConfig};

use crate::pki::*;
use crate::support::*;

fn tls(cert: std::path::PathBuf, key: std::path::PathBuf) -> TlsConfig {
    TlsConfig {
        cert,
        key,
        reload_interval: Duration::from_millis(50),
        client_auth: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_over_h1_and_h2_by_alpn() {
    bounded(async {
        let dir = TempDir::new("tls-alpn");
        let ca = Ca::new("test CA");
        let (cert, key, _) = write_server_cert(&dir, &ca, "server one");
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.tls = Some(tls(cert, key))
        })
        .await;

        for (alpn, want) in [(&b"h2"[..], "HTTP/2.0"), (&b"http/1.1"[..], "HTTP/1.1")] {
            let s = connect(proxy.addr, client_config(&ca, &[alpn], None))
                .await
                .expect("handshake");
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(alpn));
            let mut conn = Conn::over(s).await.expect("http");
            let (status, h, _) = conn.get("/echo").await.expect("GET");
            assert_eq!(status, StatusCode::OK);
            // The app speaks HTTP/1.1 whatever the client chose, and is told it was https.
            assert_eq!(h["x-up-version"], "HTTP/1.1", "client spoke {want}");
            assert_eq!(h["x-up-proto"], "https");
        }

        // Both ALPN protocols offered: h2 is preferred.
        let s = connect(proxy.addr, client_config(&ca, &[b"h2", b"http/1.1"], None))
            .await
            .expect("handshake");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

        // Cleartext on a TLS port gets no HTTP answer.
        let client = h1_client();
        assert!(get(&client, &proxy.url("/echo")).await.is_err());
        assert_eq!(up.seen.hits("/echo"), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_served_to_new_connections_in_flight_survives() {
    bounded(async {
        let dir = TempDir::new("tls-rotate");
        let ca = Ca::new("test CA");
        let (cert, key, first) = write_server_cert(&dir, &ca, "server one");
        let up = Upstream::start().await;
        let mut proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.tls = Some(tls(cert.clone(), key.clone()))
        })
        .await;
        let config = client_config(&ca, &[b"http/1.1"], None);

        let s = connect(proxy.addr, config.clone())
            .await
            .expect("handshake");
        assert_eq!(server_leaf(&s), first.der);
        let mut old = Conn::over(s).await.expect("http");
        assert_eq!(old.get("/echo").await.expect("GET").0, StatusCode::OK);
        // A request in flight across the rotation.
        let in_flight = tokio::spawn(async move {
            let r = old.get("/slow?ms=600").await.map(|(s, _, b)| (s, b));
            (old, r)
        });

        // Rotate in place, as Vault agent does.
        let second = ca.issue("server two", &["localhost"], &[], false);
        dir.write("server-key.pem", &second.key_pem);
        dir.write("server.pem", &second.cert_pem);
        let mut rotated = false;
        for _ in 0..200 {
            let s = connect(proxy.addr, config.clone())
                .await
                .expect("handshake");
            if server_leaf(&s) == second.der {
                rotated = true;
                let mut c = Conn::over(s).await.expect("http");
                assert_eq!(c.get("/echo").await.expect("GET").0, StatusCode::OK);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(rotated, "new connections never saw the rotated certificate");

        let (mut old, r) = in_flight.await.expect("join");
        let (status, body) = r.expect("in-flight request survived the rotation");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"slow done"[..]));
        // The old connection still works after the rotation.
        assert_eq!(old.get("/echo").await.expect("GET").0, StatusCode::OK);

        // A bad new file: the second certificate stays, and reload says which file and why.
        dir.write("server.pem", "not a certificate");
        let errors = proxy.drain_handle_ref().reload();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let msg = errors[0].to_string();
        assert!(
            msg.contains("tls.cert") && msg.contains("server.pem"),
            "{msg}"
        );
        let s = connect(proxy.addr, config.clone())
            .await
            .expect("handshake");
        assert_eq!(server_leaf(&s), second.der);
        let _ = proxy.drain().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_fails_bind_naming_the_file() {
    bounded(async {
        let dir = TempDir::new("tls-missing");
        let ca = Ca::new("test CA");
        let (cert, _, _) = write_server_cert(&dir, &ca, "server");
        let mut cfg = tandem_proxy::ListenerConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:1",
            Protocol::Http,
        );
        cfg.name = "web".into();
        cfg.tls = Some(tls(cert, dir.path("nope.pem")));
        let e = tandem_proxy::Inbound::bind(&[cfg])
            .await
            .expect_err("no key file");
        let msg = e.to_string();
        assert!(
            msg.contains("web") && msg.contains("tls.key") && msg.contains("nope.pem"),
            "{msg}"
        );
    })
    .await;
}
