//! The simple alternatives to JWT: static API keys and basic auth, both checked against
//! SHA-256 hashes read from files; the credential never reaches the app.

use bytes::Bytes;
use http::{Request, StatusCode};
use tandem_proxy::{ApiKeyConfig, AuthConfig, BasicAuthConfig, Protocol};

use crate::pki::TempDir;
use crate::support::*;

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn call(proxy: &Proxy, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, String) {
    let mut b = Request::get(proxy.url("/headers"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (s, h, body) = send(&h1_client(), b.body(full(Bytes::new())).expect("req"))
        .await
        .expect("request");
    (s, h, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_from_a_hashed_file() {
    bounded(async {
        let dir = TempDir::new("apikey");
        let keys = dir.write(
            "keys",
            format!(
                "# billing team\nbilling sha256:{}\n\nsha256:{}\n",
                sha256_hex("k-one"),
                sha256_hex("k-two")
            ),
        );
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.auth = Some(AuthConfig {
                exempt_paths: vec![],
                jwt: None,
                api_key: Some(ApiKeyConfig {
                    header: "x-api-key".into(),
                    keys_file: keys,
                }),
                basic: None,
            })
        })
        .await;
        for key in ["k-one", "k-two"] {
            let (status, _, body) = call(&proxy, &[("x-api-key", key)]).await;
            assert_eq!(status, StatusCode::OK);
            assert!(
                !body.contains("x-api-key"),
                "the key reached the app: {body}"
            );
        }
        for bad in [&[("x-api-key", "k-three")][..], &[]] {
            let (status, h, _) = call(&proxy, bad).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(h.contains_key("www-authenticate"));
        }
        assert_eq!(up.seen.hits("/headers"), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_a_hashed_file() {
    bounded(async {
        let dir = TempDir::new("basic");
        let users = dir.write(
            "users",
            format!("alice:sha256:{}\n", sha256_hex("wonderland")),
        );
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.auth = Some(AuthConfig {
                exempt_paths: vec![],
                jwt: None,
                api_key: None,
                basic: Some(BasicAuthConfig { users_file: users }),
            })
        })
        .await;
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let good = format!("Basic {}", b64("alice:wonderland"));
        let (status, _, body) = call(&proxy, &[("authorization", &good)]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !body.contains("authorization"),
            "credentials reached the app: {body}"
        );
        for bad in ["alice:looking-glass", "bob:wonderland", "alice", ""] {
            let v = format!("Basic {}", b64(bad));
            let (status, h, _) = call(&proxy, &[("authorization", &v)]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
            assert!(h["www-authenticate"]
                .to_str()
                .expect("ascii")
                .starts_with("Basic"));
        }
        assert_eq!(up.seen.hits("/headers"), 1);
    })
    .await;
}
