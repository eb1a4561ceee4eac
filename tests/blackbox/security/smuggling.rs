//! Request framing at the edge: every ambiguous shape a client can send (the classic
//! smuggling vectors) is refused or re-framed by tandem, so the app, which records the exact
//! bytes it receives, never gets a request it could frame differently from tandem. And CONNECT
//! is refused with 405, as the access log says.
use super::recording::Edge;

/// A request the client meant to hide in the first one's body.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n";

#[test]
fn ambiguous_framing_never_reaches_the_app() {
    let Some(e) = Edge::start("", "") else { return };
    let chunked_smuggle = format!("0\r\n\r\n{SMUGGLED}");
    let shapes: Vec<(&str, String)> = vec![
        (
            "CL then TE",
            format!(
                "POST /a HTTP/1.1\r\nHost: shop.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunked_smuggle}",
                chunked_smuggle.len()
            ),
        ),
        (
            "TE then CL",
            format!(
                "POST /a HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{chunked_smuggle}"
            ),
        ),
        (
            "two Content-Lengths",
            format!(
                "POST /a HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
        ),
        (
            "Content-Length list",
            format!(
                "POST /a HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0, {}\r\nConnection: close\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
        ),
        (
            "chunked, identity",
            format!(
                "POST /a HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n{chunked_smuggle}"
            ),
        ),
        (
            "obs-fold",
            format!(
                "POST /a HTTP/1.1\r\nHost: shop.test\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\nConnection: close\r\n\r\n{chunked_smuggle}"
            ),
        ),
        (
            "space before colon",
            format!(
                "POST /a HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\nConnection: close\r\n\r\n{chunked_smuggle}"
            ),
        ),
        (
            "bad chunk size",
            "POST /a HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_string(),
        ),
        (
            "chunk size overflow",
            "POST /a HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n".to_string(),
        ),
    ];
    for (what, raw) in shapes {
        let answer = e.send(raw.as_bytes());
        assert!(
            answer.is_empty()
                || answer.starts_with("HTTP/1.1 400")
                || answer.starts_with("HTTP/1.1 200"),
            "{what}: {answer}"
        );
        assert!(
            e.ambiguous().is_empty(),
            "{what}: the app got an ambiguous request: {}",
            e.ambiguous()
        );
        assert!(
            !e.received().contains("get /smuggled http/1.1\r\n"),
            "{what}: a request smuggled in the body reached the app: {}",
            e.received()
        );
        assert!(!e.received().contains("zz\r\n"), "{what}: {}", e.received());
    }
}

#[test]
fn connect_is_refused_with_405_and_logged_so() {
    let Some(e) = Edge::start("", "") else { return };
    let answer = e.send(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let allow = answer
        .lines()
        .find_map(|l| l.strip_prefix("allow: "))
        .unwrap_or_else(|| panic!("no Allow header: {answer}"));
    assert!(
        allow.contains("GET") && !allow.contains("CONNECT"),
        "{allow}"
    );
    assert!(
        !e.received().contains("connect "),
        "CONNECT reached the app: {}",
        e.received()
    );
    crate::support::eventually("the CONNECT access record", || {
        e.access()
            .iter()
            .any(|r| r["fields"]["method"] == "CONNECT")
    });
    let rec = e
        .access()
        .into_iter()
        .find(|r| r["fields"]["method"] == "CONNECT")
        .unwrap();
    assert_eq!(rec["fields"]["status"], 405, "{rec}");
}

/// With `allow_connect = true`, an HTTP/1.1 CONNECT reaches the app and its 200 turns the
/// connection into a tunnel, bytes copied both ways.
#[test]
fn connect_tunnels_where_the_listener_allows_it() {
    use std::io::{Read, Write};

    let Some(e) = Edge::start("allow_connect = true", "") else {
        return;
    };
    let mut s = std::net::TcpStream::connect(&e.proxy).unwrap();
    s.set_read_timeout(Some(crate::support::PATIENCE)).unwrap();
    s.write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping through the tunnel\n").unwrap();
    let mut echo = [0u8; 24];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping through the tunnel\n");
    assert!(e.received().contains("connect "), "{}", e.received());
}
