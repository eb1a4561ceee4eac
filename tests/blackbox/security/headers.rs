//! The headers tandem vouches for reach the app as tandem wrote them: a client cannot remove
//! them by naming them in `Connection` (hop-by-hop headers are computed from the client's
//! request before tandem adds its own), cannot spoof them (`X-Forwarded-*` replaced unless
//! `trusted_hops` says a proxy in front wrote them), and cannot confuse the app about the
//! host (exactly one well-formed `Host`, or 400).
use super::recording::{hs256, values, Edge};

#[test]
fn connection_cannot_strip_tandems_own_headers() {
    let Some(e) = Edge::start("", "") else { return };
    let answer = e.send(
        b"GET /strip HTTP/1.1\r\nHost: shop.test\r\n\
          Connection: close, X-Forwarded-For, x-forwarded-proto, X-Request-Id, x-forwarded-host, x-secret\r\n\
          x-secret: hop\r\nx-forwarded-client-cert: Hash=spoofed\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = e.head_of("/strip");
    assert!(!head.is_empty(), "the app got no /strip: {}", e.received());
    assert_eq!(values(&head, "x-forwarded-for"), ["127.0.0.1"], "{head:?}");
    assert_eq!(values(&head, "x-forwarded-proto"), ["http"], "{head:?}");
    assert_eq!(values(&head, "x-forwarded-host"), ["shop.test"], "{head:?}");
    assert_eq!(values(&head, "x-request-id").len(), 1, "{head:?}");
    // What the client named as hop-by-hop and is not tandem's is still removed.
    assert!(values(&head, "x-secret").is_empty(), "{head:?}");
    assert!(
        values(&head, "connection")
            .iter()
            .all(|v| !v.contains("x-")),
        "{head:?}"
    );
    // A client-sent identity header never reaches the app (no mTLS here: none at all).
    assert!(
        values(&head, "x-forwarded-client-cert").is_empty(),
        "{head:?}"
    );
}

#[test]
fn connection_cannot_strip_forwarded_jwt_claims() {
    let jwks = r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAxMjM0NTY3"}]}"#;
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks).unwrap();
    let extra = format!(
        "[proxy.listeners.auth.jwt]\njwks_file = \"{}\"\nforward_claims = {{ sub = \"x-user\" }}\n",
        jwks_file.display()
    );
    let Some(e) = Edge::start("", &extra) else {
        return;
    };
    let token = hs256(
        "secret-secret-secret-secret-01234567",
        r#"{"sub":"alice","exp":4102444800}"#,
    );
    let answer = e.send(
        format!(
            "GET /claims HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Bearer {token}\r\n\
             x-user: admin\r\nConnection: close, x-user\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = e.head_of("/claims");
    assert_eq!(values(&head, "x-user"), ["alice"], "{head:?}");
}

#[test]
fn client_forwarded_headers_are_replaced_unless_hops_are_trusted() {
    let Some(e) = Edge::start("", "") else { return };
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 10.9.9.9\r\n\
                 X-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.test\r\n";
    let answer = e.send(
        format!("GET /spoof HTTP/1.1\r\nHost: shop.test\r\n{spoof}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = e.head_of("/spoof");
    assert_eq!(values(&head, "x-forwarded-for"), ["127.0.0.1"], "{head:?}");
    assert_eq!(values(&head, "x-forwarded-proto"), ["http"], "{head:?}");
    assert_eq!(values(&head, "x-forwarded-host"), ["shop.test"], "{head:?}");
    drop(e);

    // One trusted proxy in front: its entry (the last) is kept, the client's own are not.
    let Some(e) = Edge::start("trusted_hops = 1", "") else {
        return;
    };
    let answer = e.send(
        format!("GET /trusted HTTP/1.1\r\nHost: shop.test\r\n{spoof}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = e.head_of("/trusted");
    assert_eq!(
        values(&head, "x-forwarded-for"),
        ["10.9.9.9, 127.0.0.1"],
        "{head:?}"
    );
    assert_eq!(values(&head, "x-forwarded-proto"), ["https"], "{head:?}");
    assert_eq!(values(&head, "x-forwarded-host"), ["bank.test"], "{head:?}");
}

#[test]
fn host_must_be_one_well_formed_value() {
    let Some(e) = Edge::start("", "") else { return };
    for (what, head) in [
        ("two Host lines", "Host: a.test\r\nHost: b.test\r\n"),
        ("an empty Host", "Host: \r\n"),
        ("no Host", ""),
        ("a Host that is not host[:port]", "Host: a b@c/d\r\n"),
        ("userinfo in Host", "Host: user@a.test\r\n"),
        ("a bad port", "Host: a.test:99999\r\n"),
    ] {
        let answer =
            e.send(format!("GET /host HTTP/1.1\r\n{head}Connection: close\r\n\r\n").as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(answer.contains("tandem: bad_host"), "{what}: {answer}");
    }
    // Absolute-form: the Host must be the target's authority.
    let answer =
        e.send(b"GET http://a.test/host HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("differs"), "{answer}");
    assert!(
        !e.received().contains("/host"),
        "a request with a bad Host reached the app: {}",
        e.received()
    );
    // A good one, and an IPv6 literal with a port, pass.
    for host in ["shop.test:8080", "[::1]:8080"] {
        let answer = e.send(
            format!("GET /good HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
    }
    let answer = e.send(
        b"GET http://a.test:81/good HTTP/1.1\r\nHost: A.test:81\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = e.head_of("/good");
    assert_eq!(values(&head, "host").len(), 1, "{head:?}");
}
