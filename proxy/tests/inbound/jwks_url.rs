//! JWKS from a URL: a real local JWKS server (HTTP, and HTTPS with a test CA and basic auth
//! from the URL's userinfo). A rotated key is picked up by the refetch an unknown `kid`
//! triggers; a storm of unknown `kid`s costs at most one fetch per `min_refetch_interval`
//! (counted on the server); with the server down, the keys in use keep working and the
//! failed fetches are counted on the metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tandem_proxy::{AuthConfig, CancellationToken, JwtConfig, Protocol};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::jwt::{call, claims, keys, policy, token, Keys};
use crate::pki::{server_config, Ca, TempDir};
use crate::support::*;

/// A JWKS server: serves `body` at `/jwks`, counts the hits, checks basic auth if asked.
struct JwksServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(
        body: &Value,
        tls: Option<Arc<rustls::ServerConfig>>,
        basic: Option<&'static str>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(body.to_string()));
        let stop = CancellationToken::new();
        let task = {
            let (hits, body, stop) = (hits.clone(), body.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        _ = stop.cancelled() => return,
                        a = listener.accept() => a,
                    };
                    let Ok((tcp, _)) = accepted else { continue };
                    let (hits, body, tls) = (hits.clone(), body.clone(), tls.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let (hits, body) = (hits.clone(), body.clone());
                            async move {
                                hits.fetch_add(1, Ordering::SeqCst);
                                let authorized = basic.is_none_or(|b| {
                                    req.headers()
                                        .get("authorization")
                                        .is_some_and(|v| v.as_bytes() == b.as_bytes())
                                });
                                let mut r = Response::new(full(Bytes::from(
                                    body.lock().expect("lock").clone(),
                                )));
                                if !authorized || req.uri().path() != "/jwks" {
                                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                                }
                                r.headers_mut().insert(
                                    "cache-control",
                                    http::HeaderValue::from_static("public, max-age=3600"),
                                );
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                        let builder = auto::Builder::new(TokioExecutor::new());
                        match tls {
                            Some(c) => {
                                if let Ok(s) = TlsAcceptor::from(c).accept(tcp).await {
                                    let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                                }
                            }
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                            }
                        }
                    });
                }
            })
        };
        Self {
            addr,
            hits,
            body,
            stop,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn serve(&self, jwks: &Value) {
        *self.body.lock().expect("lock") = jwks.to_string();
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The JWKS of `k` with only the keys whose kid is in `kids`.
fn only(k: &Keys, kids: &[&str]) -> Value {
    let keys: Vec<Value> = k.jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|j| kids.contains(&j["kid"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    json!({ "keys": keys })
}

fn url_auth(url: String, tweak: impl FnOnce(&mut JwtConfig)) -> AuthConfig {
    let mut j = policy(JwtConfig::from_url(url));
    tweak(&mut j);
    AuthConfig {
        exempt_paths: Vec::new(),
        jwt: Some(j),
        api_key: None,
        basic: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_via_unknown_kid_and_the_refetch_bound() {
    bounded(async {
        let k = keys();
        let idp = JwksServer::start(&only(&k, &["rsa1"]), None, None).await;
        let up = Upstream::start().await;
        let url = format!("http://{}/jwks", idp.addr);
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            // An hour: nothing but the fetch at start and one unknown-kid refetch can
            // happen during the test, whatever the scheduler does.
            c.auth = Some(url_auth(url, |j| {
                j.min_refetch_interval = Duration::from_secs(3600);
                j.refresh_interval = Duration::from_secs(3600);
            }))
        })
        .await;
        assert_eq!(idp.hits(), 1, "one fetch at start");
        let rsa = token(Algorithm::RS256, "rsa1", &k.rsa, &claims());
        let (s, _, body) = call(&proxy, "/headers", Some(&rsa)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert!(body.contains("x-jwt-sub: alice"), "{body}");

        // The IdP rotates in an EC key; tokens signed with it arrive at once, concurrently.
        idp.serve(&only(&k, &["rsa1", "ec1"]));
        let ec = token(Algorithm::ES256, "ec1", &k.ec, &claims());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (url, ec) = (proxy.url("/headers"), ec.clone());
            set.spawn(async move {
                let req = Request::get(url)
                    .header("authorization", format!("Bearer {ec}"))
                    .body(full(Bytes::new()))
                    .expect("req");
                send(&h1_client(), req).await.expect("request").0
            });
        }
        while let Some(status) = set.join_next().await {
            assert_eq!(
                status.expect("task"),
                StatusCode::OK,
                "the rotated key works"
            );
        }
        assert_eq!(idp.hits(), 2, "one refetch for twenty unknown-kid requests");

        // A storm of unknown kids (and a key the IdP now has but the bound holds back):
        // every one refused, not one more fetch.
        idp.serve(&k.jwks);
        for i in 0..50 {
            let kid = if i % 2 == 0 {
                "ed1".to_string()
            } else {
                format!("bogus-{i}")
            };
            let t = token(Algorithm::EdDSA, &kid, &k.ed, &claims());
            let (s, h, _) = call(&proxy, "/headers", Some(&t)).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{kid}");
            assert!(h.contains_key("www-authenticate"));
        }
        assert_eq!(idp.hits(), 2, "the refetch bound held");
        assert_eq!(
            proxy.metric("tandem_proxy_jwks_fetches_total{listener=\"test\"}"),
            2.0
        );
        let (s, _, _) = call(&proxy, "/headers", Some(&rsa)).await;
        assert_eq!(s, StatusCode::OK);
        idp.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_keeps_the_keys_in_use() {
    bounded(async {
        let k = keys();
        let idp = JwksServer::start(&only(&k, &["rsa1", "ec1"]), None, None).await;
        let up = Upstream::start().await;
        let url = format!("http://{}/jwks", idp.addr);
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            // Refreshes keep coming, so fetches fail while the IdP is down.
            c.auth = Some(url_auth(url, |j| {
                j.min_refetch_interval = Duration::from_millis(20);
                j.refresh_interval = Duration::from_millis(50);
                j.fetch_timeout = Duration::from_secs(2);
            }))
        })
        .await;
        let rsa = token(Algorithm::RS256, "rsa1", &k.rsa, &claims());
        assert_eq!(call(&proxy, "/echo", Some(&rsa)).await.0, StatusCode::OK);
        idp.stop().await;
        let failures = "tandem_proxy_jwks_fetch_failures_total{listener=\"test\"}";
        eventually("JWKS fetches fail while the IdP is down", || {
            proxy.metric(failures) >= 2.0
        })
        .await;
        // Both keys still verify, and an unknown kid is still refused.
        let ec = token(Algorithm::ES256, "ec1", &k.ec, &claims());
        assert_eq!(call(&proxy, "/echo", Some(&rsa)).await.0, StatusCode::OK);
        assert_eq!(call(&proxy, "/echo", Some(&ec)).await.0, StatusCode::OK);
        let ed = token(Algorithm::EdDSA, "ed1", &k.ed, &claims());
        assert_eq!(
            call(&proxy, "/echo", Some(&ed)).await.0,
            StatusCode::UNAUTHORIZED
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_jwks_with_a_ca_file_and_basic_auth_from_the_url() {
    bounded(async {
        let k = keys();
        let dir = TempDir::new("jwks-https");
        let ca = Ca::new("idp CA");
        let other = Ca::new("other CA");
        let leaf = ca.issue("idp", &["localhost"], &[], false);
        let tls = server_config(&leaf, None, &[b"http/1.1"]);
        // base64("tandem:pa55")
        let idp = JwksServer::start(&k.jwks, Some(tls), Some("Basic dGFuZGVtOnBhNTU=")).await;
        let url = format!("https://tandem:pa55@localhost:{}/jwks", idp.addr.port());
        let up = Upstream::start().await;

        // Trusting the IdP's CA: keys fetched, tokens pass.
        let ca_file = dir.write("idp-ca.pem", ca.pem());
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.auth = Some(url_auth(url.clone(), |j| j.jwks_ca_file = Some(ca_file)))
        })
        .await;
        let ed = token(Algorithm::EdDSA, "ed1", &k.ed, &claims());
        assert_eq!(call(&proxy, "/echo", Some(&ed)).await.0, StatusCode::OK);

        // Trusting another CA: the fetch fails (counted), and no token passes.
        let other_file = dir.write("other-ca.pem", other.pem());
        let refused = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.auth = Some(url_auth(url.clone(), |j| j.jwks_ca_file = Some(other_file)))
        })
        .await;
        assert_eq!(
            call(&refused, "/echo", Some(&ed)).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert!(refused.metric("tandem_proxy_jwks_fetch_failures_total{listener=\"test\"}") >= 1.0);
        idp.stop().await;
    })
    .await;
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let up: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    for (tweak, key) in [
        (
            Box::new(|j: &mut JwtConfig| j.jwks_url = Some("ftp://idp/jwks".into()))
                as Box<dyn Fn(&mut JwtConfig)>,
            "auth.jwt.jwks_url",
        ),
        (
            Box::new(|j: &mut JwtConfig| j.jwks_file = Some("/nonexistent".into())),
            "auth.jwt",
        ),
        (
            Box::new(|j: &mut JwtConfig| j.jwks_ca_file = Some("/nonexistent/ca.pem".into())),
            "auth.jwt.jwks_ca_file",
        ),
    ] {
        let mut c = tandem_proxy::ListenerConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            up.to_string(),
            Protocol::Http,
        );
        let mut j = JwtConfig::from_url("https://user:hunter2@idp.test/jwks");
        tweak(&mut j);
        c.auth = Some(AuthConfig {
            exempt_paths: Vec::new(),
            jwt: Some(j),
            api_key: None,
            basic: None,
        });
        let e = tandem_proxy::Inbound::bind(&[c])
            .await
            .expect_err("refused")
            .to_string();
        assert!(e.contains(key), "{key}: {e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
