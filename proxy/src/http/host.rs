//! The request's host, checked at the edge: exactly one, well formed, and the same as the
//! authority of an absolute-form (or HTTP/2) target, or the request is refused with 400.
//!
//! Invariant: the app never sees two `Host` headers, an empty one, or one that is not
//! `host[:port]` (RFC 9110 §7.2, RFC 3986 §3.2.2: reg-name, IPv4 or a bracketed IPv6
//! literal), so a cache or router in the app cannot be told one host while tandem's access log
//! and `X-Forwarded-Host` say another (request smuggling and cache poisoning by Host, as
//! HAProxy and Envoy refuse them).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Uri, Version};

use crate::cause::HostError;

/// The request's host as the app will see it: the single valid `Host` header, else the
/// target's authority (absolute-form in HTTP/1, `:authority` in HTTP/2). `Ok(None)` only for
/// an HTTP/1.0 request without either.
pub(crate) fn check(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let authority = uri.authority().map(|a| a.as_str());
    if let Some(a) = authority {
        // An authority with userinfo (`user@host`) is not a host (RFC 9110 §4.2.4).
        if !valid(a.as_bytes()) {
            return Err(HostError::Malformed);
        }
    }
    match (host, authority) {
        (Some(h), a) => {
            if !valid(h.as_bytes()) {
                return Err(HostError::Malformed);
            }
            if a.is_some_and(|a| !a.as_bytes().eq_ignore_ascii_case(h.as_bytes())) {
                return Err(HostError::Mismatch);
            }
            Ok(Some(h.clone()))
        }
        (None, Some(a)) => Ok(HeaderValue::from_str(a).ok()),
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400; HTTP/1.0 predates it.
        (None, None) if version == Version::HTTP_10 || version == Version::HTTP_09 => Ok(None),
        (None, None) => Err(HostError::Missing),
    }
}

/// Whether `v` is `host[:port]`: reg-name, IPv4 or `[IPv6]`, and an optional 1..=65535 port.
pub(crate) fn valid(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &v[1..end];
                let ok = std::str::from_utf8(literal)
                    .ok()
                    .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
                    .is_some();
                if !ok {
                    return false;
                }
                (&v[..=end], &v[end + 1..])
            }
            None => return false,
        },
        _ => match v.iter().rposition(|&b| b == b':') {
            Some(colon) => (&v[..colon], &v[colon..]),
            None => (v, &v[v.len()..]),
        },
    };
    if host.is_empty() || !(host[0] == b'[' || reg_name(host)) {
        return false;
    }
    match port.split_first() {
        None => true,
        Some((b':', digits)) => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u16>().ok())
                    .is_some_and(|p| p > 0)
        }
        Some(_) => false,
    }
}

/// RFC 3986 reg-name (which covers IPv4 addresses): unreserved, sub-delims and `%HH`.
fn reg_name(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' => {
                let hex = |j: usize| v.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_hosts() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:3000",
            "[::1]",
            "[::1]:443",
            "xn--bcher-kva.example",
            "a%2Db",
            "localhost",
        ] {
            assert!(valid(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a b@c/d",
            "user@host",
            "host/path",
            "host:",
            "host:0",
            "host:65536",
            "host:80:80",
            ":80",
            "[::1",
            "[not-ip]:80",
            "[::1]x",
            "a%zz",
            "host\tname",
            "a\\b",
        ] {
            assert!(!valid(bad.as_bytes()), "{bad:?}");
        }
    }

    fn headers(hosts: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn exactly_one_consistent_host() {
        let origin: Uri = "/x".parse().expect("uri");
        let v11 = Version::HTTP_11;
        assert_eq!(
            check(v11, &origin, &headers(&["a.test"])),
            Ok(Some(HeaderValue::from_static("a.test")))
        );
        assert_eq!(
            check(v11, &origin, &headers(&["a.test", "b.test"])),
            Err(HostError::Duplicate)
        );
        assert_eq!(check(v11, &origin, &headers(&[])), Err(HostError::Missing));
        assert_eq!(check(Version::HTTP_10, &origin, &headers(&[])), Ok(None));
        assert_eq!(
            check(v11, &origin, &headers(&[""])),
            Err(HostError::Malformed)
        );
        let absolute: Uri = "http://a.test:8080/x".parse().expect("uri");
        assert_eq!(
            check(v11, &absolute, &headers(&["A.test:8080"])),
            Ok(Some(HeaderValue::from_static("A.test:8080")))
        );
        assert_eq!(
            check(v11, &absolute, &headers(&["b.test"])),
            Err(HostError::Mismatch)
        );
        assert_eq!(
            check(v11, &absolute, &headers(&[])),
            Ok(Some(HeaderValue::from_static("a.test:8080")))
        );
        let userinfo: Uri = "http://u@a.test/x".parse().expect("uri");
        assert_eq!(
            check(v11, &userinfo, &headers(&["a.test"])),
            Err(HostError::Malformed)
        );
    }
}
