//! The CLI form of a listener: `[PROTOCOL:]LISTEN=UPSTREAM`, e.g. `8080=127.0.0.1:3000`,
//! `0.0.0.0:8080=127.0.0.1:3000`, `tcp:5432=127.0.0.1:5433`, `h2c:9090=3001`.
//!
//! Invariant: a bare port on the LISTEN side binds every interface (it is the service's public
//! port); a bare port on the UPSTREAM side means the app on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::config::upstream::check_upstream;
use crate::config::{ListenerConfig, Protocol};
use crate::error::SpecError;

/// Parses `[PROTOCOL:]LISTEN=UPSTREAM` into a listener with default settings.
pub fn parse_listener_spec(spec: &str) -> Result<ListenerConfig, SpecError> {
    let spec = spec.trim();
    let (protocol, rest) = split_protocol(spec)?;
    let (listen, upstream) = rest
        .split_once('=')
        .ok_or_else(|| SpecError::MissingEquals(spec.to_string()))?;
    let listen = parse_listen(listen)?;
    let upstream = parse_upstream(upstream)?;
    Ok(ListenerConfig::new(listen, upstream, protocol))
}

fn split_protocol(spec: &str) -> Result<(Protocol, &str), SpecError> {
    for (prefix, protocol) in [
        ("http:", Protocol::Http),
        ("h2c:", Protocol::H2c),
        ("tcp:", Protocol::Tcp),
    ] {
        if let Some(rest) = spec.strip_prefix(prefix) {
            return Ok((protocol, rest));
        }
    }
    // `name:` before `=` that is neither a protocol nor part of an address.
    if let Some((head, _)) = spec.split_once(':') {
        if !head.is_empty() && head.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(SpecError::UnknownProtocol(head.to_string()));
        }
    }
    Ok((Protocol::Http, spec))
}

fn parse_listen(s: &str) -> Result<SocketAddr, SpecError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(SpecError::EmptyListen);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| SpecError::BadListen(s.to_string()))
}

fn parse_upstream(s: &str) -> Result<String, SpecError> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(format!("127.0.0.1:{port}"));
    }
    check_upstream(s)?;
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_ports() {
        let l = parse_listener_spec("8080=3000").expect("valid");
        assert_eq!(l.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(l.upstream, "127.0.0.1:3000");
        assert_eq!(l.protocol, Protocol::Http);
    }

    #[test]
    fn full_addresses_and_protocols() {
        let l = parse_listener_spec("0.0.0.0:8080=127.0.0.1:3000").expect("valid");
        assert_eq!(l.listen.port(), 8080);
        let l = parse_listener_spec("tcp:5432=127.0.0.1:5433").expect("valid");
        assert_eq!(l.protocol, Protocol::Tcp);
        let l = parse_listener_spec("h2c:[::1]:9090=localhost:3001").expect("valid");
        assert_eq!(l.protocol, Protocol::H2c);
        assert_eq!(l.upstream, "localhost:3001");
    }

    #[test]
    fn clear_errors() {
        for (spec, needle) in [
            ("8080", "missing '='"),
            ("udp:8080=3000", "unknown protocol"),
            ("=3000", "empty LISTEN"),
            ("80x=3000", "LISTEN"),
            ("8080=http://app:3000", "without scheme"),
            ("8080=app", "missing :port"),
            ("8080=app:0", "1-65535"),
        ] {
            let e = parse_listener_spec(spec).expect_err(spec).to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
