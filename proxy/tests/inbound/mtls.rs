//! mTLS: a client without a certificate, with one from another CA, with an expired one, or
//! with a SAN not on the allow-list is refused in the handshake; an allowed one reaches the
//! app with the identity header tandem wrote, and a client-sent copy of that header is gone.
//! Each refusal is counted on the metrics under its reason.

use std::time::Duration;

use http::StatusCode;
use tandem_proxy::{ClientAuthConfig, Protocol, TlsConfig};

use crate::pki::*;
use crate::support::*;

const SPIFFE_OK: &str = "spiffe://test.local/ns/default/sa/web";

/// Whether a request over a fresh connection presenting `client` gets through.
async fn try_request(
    addr: std::net::SocketAddr,
    ca: &Ca,
    client: Option<&Issued>,
) -> Result<(StatusCode, String), BoxError> {
    // TLS 1.3: the server checks the client certificate after the client's handshake ends,
    // so a refusal can surface on the first read rather than in connect.
    let s = connect(addr, client_config(ca, &[b"http/1.1"], client)).await?;
    let mut conn = Conn::over(s).await?;
    let (status, _, body) = conn
        .get_with(
            "/headers",
            &[(
                "x-forwarded-client-cert",
                "By=spoofed;URI=spiffe://evil/sa/admin",
            )],
        )
        .await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_refused_and_accepted() {
    bounded(async {
        let dir = TempDir::new("mtls");
        let ca = Ca::new("test CA");
        let client_ca = Ca::new("client CA");
        let other_ca = Ca::new("other CA");
        let (cert, key, _) = write_server_cert(&dir, &ca, "server");
        let ca_file = dir.write("clients.pem", client_ca.pem());
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.tls = Some(TlsConfig {
                cert,
                key,
                reload_interval: Duration::from_secs(5),
                client_auth: Some(ClientAuthConfig {
                    ca: ca_file,
                    allowed_sans: vec![format!("uri:{SPIFFE_OK}")],
                    identity_header: "x-forwarded-client-cert".into(),
                }),
            })
        })
        .await;

        let good = client_ca.issue("web", &[], &[SPIFFE_OK], false);
        let other = other_ca.issue("web", &[], &[SPIFFE_OK], false);
        let expired = client_ca.issue("web", &[], &[SPIFFE_OK], true);
        let unlisted = client_ca.issue("db", &[], &["spiffe://test.local/ns/default/sa/db"], false);

        for (what, client) in [
            ("no client certificate", None),
            ("a certificate from another CA", Some(&other)),
            ("an expired certificate", Some(&expired)),
            ("a SAN not on the list", Some(&unlisted)),
        ] {
            let r = try_request(proxy.addr, &ca, client).await;
            assert!(r.is_err(), "{what} was let through: {r:?}");
        }
        // Each refusal is counted under its reason.
        for reason in ["no_client_cert", "unknown_ca", "expired", "san_not_allowed"] {
            let series =
                format!("tandem_proxy_tls_handshake_failures_total{{listener=\"test\",reason=\"{reason}\"}}");
            eventually(&series, || proxy.metric(&series) == 1.0).await;
        }
        assert_eq!(
            up.seen.hits("/headers"),
            0,
            "a refused client reached the app"
        );

        let (status, seen) = try_request(proxy.addr, &ca, Some(&good))
            .await
            .expect("allowed client");
        assert_eq!(status, StatusCode::OK);
        let xfcc: Vec<&str> = seen
            .lines()
            .filter(|l| l.starts_with("x-forwarded-client-cert:"))
            .collect();
        assert_eq!(xfcc.len(), 1, "exactly one identity header: {seen}");
        assert!(xfcc[0].contains(&format!("URI={SPIFFE_OK}")), "{}", xfcc[0]);
        assert!(
            xfcc[0].contains("Hash=") && xfcc[0].contains("CN=web"),
            "{}",
            xfcc[0]
        );
        assert!(
            !seen.contains("spoofed") && !seen.contains("evil"),
            "{seen}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_header_stripped_on_cleartext_listener() {
    bounded(async {
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |_| {}).await;
        let req = http::Request::get(proxy.url("/headers"))
            .header("x-forwarded-client-cert", "URI=spiffe://evil/sa/admin")
            .body(full(bytes::Bytes::new()))
            .expect("request");
        let (status, _, body) = send(&h1_client(), req).await.expect("GET");
        assert_eq!(status, StatusCode::OK);
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("x-forwarded-client-cert"), "{body}");
    })
    .await;
}
