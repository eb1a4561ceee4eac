//! JWT validation at the edge: valid tokens of each algorithm pass with their chosen claims as
//! headers (client copies replaced); expired, wrong issuer, wrong audience, bad signature,
//! `alg: none`, HS256 signed with the RSA public key and an unknown `kid` get 401 with
//! `WWW-Authenticate`; a missing required claim gets 403; an exempt path needs no token; a
//! rewritten JWKS file is picked up without a restart.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use serde_json::{json, Value};
use tandem_proxy::{AuthConfig, JwtConfig, Protocol};

use crate::pki::TempDir;
use crate::support::*;

const RSA_PEM: &[u8] = include_bytes!("fixtures/rsa-test-key.pem");
const HS_SECRET: &[u8] = b"an hmac secret of thirty-two bytes!!";

/// Signing keys of every kind, and the JWKS that publishes their public halves.
pub(crate) struct Keys {
    pub rsa: EncodingKey,
    pub ec: EncodingKey,
    pub ec_other: EncodingKey,
    pub ed: EncodingKey,
    pub hs: EncodingKey,
    pub jwks: Value,
}

pub(crate) fn ec_key(rng: &SystemRandom) -> (EncodingKey, Vec<u8>) {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng).expect("ec");
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), rng)
        .expect("ec parse");
    (
        EncodingKey::from_ec_der(pkcs8.as_ref()),
        kp.public_key().as_ref().to_vec(),
    )
}

pub(crate) fn keys() -> Keys {
    let rng = SystemRandom::new();
    let der = PrivateKeyDer::from_pem_slice(RSA_PEM).expect("rsa pem");
    let rsa_kp = RsaKeyPair::from_pkcs8(der.secret_der()).expect("rsa pkcs8");
    let rsa_pub = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa_kp.public());
    let (ec, ec_pub) = ec_key(&rng);
    let (ec_other, _) = ec_key(&rng);
    let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed");
    let ed_kp = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).expect("ed parse");
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa1", "use": "sig",
         "n": B64.encode(&rsa_pub.n), "e": B64.encode(&rsa_pub.e)},
        {"kty": "EC", "kid": "ec1", "crv": "P-256",
         "x": B64.encode(&ec_pub[1..33]), "y": B64.encode(&ec_pub[33..65])},
        {"kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": B64.encode(ed_kp.public_key().as_ref())},
        {"kty": "oct", "kid": "hs1", "alg": "HS256", "k": B64.encode(HS_SECRET)},
    ]});
    Keys {
        rsa: EncodingKey::from_rsa_pem(RSA_PEM).expect("rsa key"),
        ec,
        ec_other,
        ed: EncodingKey::from_ed_der(ed_pkcs8.as_ref()),
        hs: EncodingKey::from_secret(HS_SECRET),
        jwks,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

pub(crate) fn claims() -> Value {
    json!({"iss": "https://issuer.test", "aud": "orders", "sub": "alice",
           "scope": "read write", "exp": now() + 300, "nbf": now() - 10})
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

pub(crate) fn token(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, claims, key).expect("sign")
}

fn unsigned(kid: &str, claims: &Value) -> String {
    let h = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        B64.encode(h.to_string()),
        B64.encode(claims.to_string())
    )
}

pub(crate) async fn call(
    proxy: &Proxy,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut b = Request::get(proxy.url(path)).header("x-jwt-sub", "mallory");
    if let Some(t) = auth {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let (s, h, body) = send(&h1_client(), b.body(full(Bytes::new())).expect("req"))
        .await
        .expect("request");
    (s, h, String::from_utf8_lossy(&body).into_owned())
}

/// The test policy: issuer, audience, a required claim and two forwarded claims.
pub(crate) fn policy(base: JwtConfig) -> JwtConfig {
    JwtConfig {
        issuers: vec!["https://issuer.test".into()],
        audiences: vec!["orders".into()],
        leeway: Duration::from_secs(5),
        required_claims: vec!["scope".into()],
        forward_claims: BTreeMap::from([
            ("sub".to_string(), "x-jwt-sub".to_string()),
            ("scope".to_string(), "x-jwt-scope".to_string()),
        ]),
        ..base
    }
}

fn jwt_config(jwks_file: std::path::PathBuf) -> AuthConfig {
    AuthConfig {
        exempt_paths: vec!["/health".into()],
        jwt: Some(JwtConfig {
            reload_interval: Duration::from_millis(50),
            ..policy(JwtConfig::from_file(jwks_file))
        }),
        api_key: None,
        basic: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_matrix() {
    bounded(async {
        let k = keys();
        let dir = TempDir::new("jwt");
        let jwks = dir.write("jwks.json", k.jwks.to_string());
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.auth = Some(jwt_config(jwks.clone()))
        })
        .await;

        // Valid tokens of every algorithm pass; chosen claims arrive as headers, the
        // client's own x-jwt-sub is gone.
        for (alg, kid, key) in [
            (Algorithm::RS256, "rsa1", &k.rsa),
            (Algorithm::PS256, "rsa1", &k.rsa),
            (Algorithm::ES256, "ec1", &k.ec),
            (Algorithm::EdDSA, "ed1", &k.ed),
            (Algorithm::HS256, "hs1", &k.hs),
        ] {
            let t = token(alg, kid, key, &claims());
            let (status, _, body) = call(&proxy, "/headers", Some(&t)).await;
            assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
            assert!(body.contains("x-jwt-sub: alice"), "{alg:?}: {body}");
            assert!(body.contains("x-jwt-scope: read write"), "{alg:?}: {body}");
            assert!(!body.contains("mallory"), "{alg:?}: {body}");
        }
        let hits = up.seen.hits("/headers");
        assert_eq!(hits, 5);

        let rsa_public_pem = {
            let der = PrivateKeyDer::from_pem_slice(RSA_PEM).expect("pem");
            let kp = RsaKeyPair::from_pkcs8(der.secret_der()).expect("rsa");
            kp.public().as_ref().to_vec()
        };
        let refused = [
            ("no token", None),
            (
                "expired",
                Some(token(
                    Algorithm::RS256,
                    "rsa1",
                    &k.rsa,
                    &with(claims(), "exp", json!(now() - 3600)),
                )),
            ),
            (
                "wrong issuer",
                Some(token(
                    Algorithm::RS256,
                    "rsa1",
                    &k.rsa,
                    &with(claims(), "iss", json!("https://evil.test")),
                )),
            ),
            (
                "wrong audience",
                Some(token(
                    Algorithm::RS256,
                    "rsa1",
                    &k.rsa,
                    &with(claims(), "aud", json!("billing")),
                )),
            ),
            (
                "not yet valid",
                Some(token(
                    Algorithm::ES256,
                    "ec1",
                    &k.ec,
                    &with(claims(), "nbf", json!(now() + 3600)),
                )),
            ),
            (
                "bad signature",
                Some(token(Algorithm::ES256, "ec1", &k.ec_other, &claims())),
            ),
            ("alg none", Some(unsigned("rsa1", &claims()))),
            (
                "HS256 with the RSA public key",
                Some(token(
                    Algorithm::HS256,
                    "rsa1",
                    &EncodingKey::from_secret(&rsa_public_pem),
                    &claims(),
                )),
            ),
            (
                "HS256 with the RSA public PEM",
                Some(token(
                    Algorithm::HS256,
                    "rsa1",
                    &EncodingKey::from_secret(RSA_PEM),
                    &claims(),
                )),
            ),
            (
                "unknown kid",
                Some(token(Algorithm::ES256, "nope", &k.ec, &claims())),
            ),
            ("garbage", Some("not.a.jwt".to_string())),
        ];
        for (what, t) in &refused {
            let (status, h, _) = call(&proxy, "/headers", t.as_deref()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
            let challenge = h["www-authenticate"].to_str().expect("ascii");
            assert!(
                challenge.starts_with("Bearer realm=\"tandem\""),
                "{what}: {challenge}"
            );
            if t.is_some() {
                assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
            }
        }
        assert_eq!(
            up.seen.hits("/headers"),
            hits,
            "a refused token reached the app"
        );

        // Valid, but lacking the required `scope`: 403.
        let mut no_scope = claims();
        no_scope.as_object_mut().expect("object").remove("scope");
        let t = token(Algorithm::RS256, "rsa1", &k.rsa, &no_scope);
        assert_eq!(
            call(&proxy, "/headers", Some(&t)).await.0,
            StatusCode::FORBIDDEN
        );

        // Exempt prefix, segment-wise.
        let (status, _, body) = call(&proxy, "/health", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        assert_eq!(call(&proxy, "/health/live", None).await.0, StatusCode::OK);
        assert_eq!(
            call(&proxy, "/healthz", None).await.0,
            StatusCode::UNAUTHORIZED
        );

        // The access log names the cause; it never holds the token.
        let log = format!("{:?}", proxy.log.lock().expect("lock"));
        assert!(
            log.contains("unauthorized") && log.contains("forbidden"),
            "{log}"
        );
        assert!(!log.contains(&refused[1].1.clone().expect("token")[..20]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_change_is_picked_up_and_a_bad_one_keeps_the_keys() {
    bounded(async {
        let k = keys();
        let dir = TempDir::new("jwks-reload");
        let jwks = dir.write(
            "jwks.json",
            json!({"keys": [k.jwks["keys"][1].clone()]}).to_string(),
        );
        let up = Upstream::start().await;
        let proxy = Proxy::start(up.addr, Protocol::Http, true, |c| {
            c.auth = Some(jwt_config(jwks.clone()))
        })
        .await;
        let ec = token(Algorithm::ES256, "ec1", &k.ec, &claims());
        let ed = token(Algorithm::EdDSA, "ed1", &k.ed, &claims());
        assert_eq!(call(&proxy, "/echo", Some(&ec)).await.0, StatusCode::OK);
        assert_eq!(
            call(&proxy, "/echo", Some(&ed)).await.0,
            StatusCode::UNAUTHORIZED
        );

        dir.write("jwks.json", k.jwks.to_string());
        let mut passed = false;
        for _ in 0..200 {
            if call(&proxy, "/echo", Some(&ed)).await.0 == StatusCode::OK {
                passed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(passed, "the rewritten JWKS was never used");

        dir.write("jwks.json", "{ broken");
        let errors = proxy.drain_handle_ref().reload();
        assert!(
            errors.len() == 1 && errors[0].to_string().contains("jwks.json"),
            "{errors:?}"
        );
        assert_eq!(call(&proxy, "/echo", Some(&ed)).await.0, StatusCode::OK);
    })
    .await;
}
