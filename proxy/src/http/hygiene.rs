//! Request and response hygiene at the edge: hop-by-hop stripping, X-Forwarded-*, the
//! request id, and the request rewritten for the app (URI, Host, version).
//!
//! Invariant: hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and every header it names,
//! plus the classic list) never cross the proxy, except `Upgrade`/`Connection: upgrade` on a
//! request that asks for an upgrade, which the upgrade handshake needs end to end. They are
//! computed from the client's request *before* tandem adds a header of its own
//! ([`strip_request`] runs first in the stack), so a client naming `X-Forwarded-For`,
//! `X-Request-Id`, the identity or a claims header in `Connection` cannot remove tandem's
//! copy. Tandem's `X-Forwarded-*` replace the client's unless the listener trusts
//! `trusted_hops` proxies in front of it.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{self, PathAndQuery, Scheme};
use http::{Request, Uri, Version};
use rand::Rng;

use crate::cause::Cause;
use crate::config::Protocol;
use http::uri::Authority;

use crate::config::ListenerConfig;
use crate::obs::context::Ctx;
use crate::obs::trace::TRACEPARENT;

/// The request id header, created when absent and echoed on the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Longest incoming request id that is passed through; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether an HTTP/1 request asks for a protocol upgrade (e.g. WebSocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether `name` is hop-by-hop in itself (the classic list; `Upgrade` aside).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Header names are stored lowercase: one string match, no map lookup.
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
    )
}

/// Removes hop-by-hop headers. With `upgrade`, keeps `Upgrade` and sets `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // The common case, a head without any of them: one pass over the names instead of a
    // lookup per listed header. (`Connection` names the others, so none can hide.)
    let (mut connection, mut others) = (false, false);
    for n in headers.keys() {
        if n == header::CONNECTION {
            connection = true;
        } else if is_hop_by_hop(n) || n == header::UPGRADE {
            others = true;
        }
    }
    if !connection && !others {
        return;
    }
    // The next most common: `Connection: keep-alive` (or `close`) alone, as most apps answer
    // (nginx, every HTTP/1.0 server): one removal, no lists.
    if !others
        && !upgrade
        && headers.get_all(header::CONNECTION).iter().all(|v| {
            v.as_bytes().split(|b| *b == b',').all(|t| {
                let t = t.trim_ascii();
                t.is_empty()
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || t.eq_ignore_ascii_case(b"close")
            })
        })
    {
        headers.remove(header::CONNECTION);
        return;
    }
    // The headers `Connection` names, as written; `keep-alive` and `close` (almost always
    // the only ones) are hop-by-hop or no header at all, so they are not kept: most heads
    // need no list.
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("keep-alive")
                && !t.eq_ignore_ascii_case("close")
        })
        .collect();
    // "TE: trailers" is the one TE value that means something end to end (gRPC needs it).
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    // One pass over the names present, then a removal for each one found: not a lookup per
    // name that could be there (an app's `Connection: keep-alive` costs one removal, not ten).
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            if *n == header::UPGRADE {
                return !upgrade;
            }
            is_hop_by_hop(n) || named.iter().any(|t| t.eq_ignore_ascii_case(n.as_str()))
        })
        .cloned()
        .collect();
    for name in &doomed {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes the hop-by-hop headers of a client's request, first thing, before any step adds
/// a header tandem vouches for.
pub(crate) fn strip_request(protocol: Protocol, headers: &mut HeaderMap) {
    let upgrade = protocol == Protocol::Http && wants_upgrade(headers);
    strip_hop_by_hop(headers, upgrade);
}

/// The client's address as an `X-Forwarded-For` element (made once per connection).
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. With `trusted_hops` 0 the client's values
/// are replaced: `X-Forwarded-For` is the peer, the others tandem's own. With N, the last N
/// entries of the client's `X-Forwarded-For` (those the trusted proxies appended; entries
/// further left are whatever the client sent) are kept and the peer appended, and the
/// peer's `-Proto` and `-Host` are kept when present.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
    trusted_hops: u32,
) {
    if trusted_hops == 0 {
        headers.insert(X_FORWARDED_FOR, client.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host),
            None => headers.remove(X_FORWARDED_HOST),
        };
        return;
    }
    let value = match headers.entry(X_FORWARDED_FOR) {
        // The common case: no proxy in front, no copy.
        Entry::Vacant(_) => client.clone(),
        Entry::Occupied(e) => {
            // Every line of the header, in order, as one list (RFC 9110 §5.3).
            let chain: Vec<&str> = e
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            let keep = chain.len().saturating_sub(trusted_hops as usize);
            let mut list = chain[keep..].join(", ");
            if !list.is_empty() {
                list.push_str(", ");
            }
            list.push_str(client.to_str().unwrap_or_default());
            HeaderValue::from_str(&list).unwrap_or_else(|_| client.clone())
        }
    };
    // `insert` replaces every earlier line.
    headers.insert(X_FORWARDED_FOR, value);
    for (name, ours) in [
        (X_FORWARDED_PROTO, Some(HeaderValue::from_static(proto))),
        (X_FORWARDED_HOST, host),
    ] {
        // Exactly one line: the peer's first, else tandem's own.
        let theirs = headers.get(&name).cloned();
        match theirs.or(ours) {
            Some(v) => headers.insert(name, v),
            None => headers.remove(name),
        };
    }
}

/// Keeps a sane incoming `x-request-id` or creates one; returns the value in use.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let entry = match headers.entry(REQUEST_ID) {
        Entry::Occupied(e) => {
            let v = e.get();
            let ok = !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
            if ok {
                return v.clone();
            }
            Entry::Occupied(e)
        }
        vacant => vacant,
    };
    let id: u128 = rand::rng().random();
    let mut hex = [0u8; 32];
    for (i, b) in hex.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    let v = HeaderValue::from_bytes(&hex).expect("32 hex digits are a valid header value");
    match entry {
        Entry::Occupied(mut e) => {
            e.insert(v.clone());
        }
        Entry::Vacant(e) => {
            e.insert(v.clone());
        }
    }
    v
}

/// Cleans and rewrites the request for the app: request id (recorded in `ctx`),
/// X-Forwarded-*, hop-by-hop headers, the app's URI and version. `client` is the peer's IP as
/// a header value ([`ip_value`]).
/// `host` is the request's checked host ([`crate::http::host::check`]); hop-by-hop headers were
/// removed by [`strip_request`] before any step added its own. From the listener's `cfg`: its
/// protocol and `trusted_hops`; `upstream`: the app's address.
pub(crate) fn rewrite<B>(
    cfg: &ListenerConfig,
    upstream: &Authority,
    client: &HeaderValue,
    ctx: &Ctx,
    host: Option<HeaderValue>,
    req: Request<B>,
) -> Result<Request<B>, Cause> {
    let (mut parts, body) = req.into_parts();
    let rid = ensure_request_id(&mut parts.headers);
    ctx.set_ids(rid, parts.headers.get(TRACEPARENT).cloned());
    // HTTP/2 carries the host in :authority; an HTTP/1 app wants a Host header.
    if let Some(h) = &host {
        parts.headers.insert(header::HOST, h.clone());
    }
    let proto = if parts
        .extensions
        .get::<crate::edge::tls::TlsInfo>()
        .is_some()
    {
        "https"
    } else {
        "http"
    };
    set_forwarded(&mut parts.headers, client, proto, host, cfg.trusted_hops);
    let mut uri = uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(upstream.clone());
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.uri = Uri::from_parts(uri).map_err(|_| Cause::BadRequest)?;
    parts.version = match cfg.protocol {
        Protocol::H2c => {
            // HTTP/2 carries the host in :authority (the upstream's, from the URI); a Host
            // header beside it is a duplicate that nginx and Envoy answer with 400. The
            // client's host stays in X-Forwarded-Host.
            parts.headers.remove(header::HOST);
            Version::HTTP_2
        }
        Protocol::Http | Protocol::Tcp => Version::HTTP_11,
    };
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn strips_listed_and_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("connection", " X-Other ,close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers, deflate"),
            ("upgrade", "websocket"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-app"], "kept");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn a_bare_keep_alive_or_close_is_one_removal_and_a_named_header_still_goes() {
        for value in ["keep-alive", "Close", " keep-alive , close ", ""] {
            let mut h = map(&[("connection", value), ("x-app", "kept")]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{value:?}: {h:?}");
            assert_eq!(h["x-app"], "kept");
        }
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        // the upgrade handshake keeps its own path
        let mut h = map(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn keeps_upgrade_handshake() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_replaced_without_trusted_hops() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
        ]);
        let peer = ip_value("127.0.0.1".parse().expect("ip"));
        set_forwarded(
            &mut h,
            &peer,
            "http",
            Some(HeaderValue::from_static("example.com")),
            0,
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn forwarded_keeps_the_trusted_part_of_the_chain() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6, 10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer = ip_value("127.0.0.1".parse().expect("ip"));
        set_forwarded(
            &mut h,
            &peer,
            "http",
            Some(HeaderValue::from_static("example.com")),
            2,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &peer, "https", None, 1);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn request_id_kept_or_made() {
        let mut h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(ensure_request_id(&mut h), "abc-123");
        let mut h = map(&[("x-request-id", "has space")]);
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id);
    }

    fn listener(spec: &str) -> (ListenerConfig, Authority) {
        let cfg = crate::config::spec::parse_listener_spec(spec).expect("valid spec");
        let upstream = cfg.upstream.parse().expect("valid upstream");
        (cfg, upstream)
    }

    fn client_request(version: Version) -> Request<()> {
        let mut req = Request::builder()
            .version(version)
            .uri("/orders?id=7")
            .header("x-forwarded-for", "10.9.9.9")
            .header("x-request-id", "abc-123")
            .body(())
            .expect("valid request");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("shop.test"));
        req
    }

    #[test]
    fn rewrite_points_the_request_at_the_app() {
        let (cfg, upstream) = listener("8080=127.0.0.1:3000");
        let ctx = Ctx::new();
        let peer = ip_value("192.0.2.7".parse().expect("ip"));
        let host = Some(HeaderValue::from_static("shop.test"));
        let req = client_request(Version::HTTP_11);
        let out = rewrite(&cfg, &upstream, &peer, &ctx, host, req).expect("rewritten");
        assert_eq!(out.uri().to_string(), "http://127.0.0.1:3000/orders?id=7");
        assert_eq!(out.version(), Version::HTTP_11);
        assert_eq!(out.headers()[header::HOST], "shop.test");
        // trusted_hops 0: the client's X-Forwarded-For is replaced by the peer
        assert_eq!(out.headers()["x-forwarded-for"], "192.0.2.7");
        assert_eq!(out.headers()["x-forwarded-host"], "shop.test");
        assert_eq!(out.headers()["x-forwarded-proto"], "http");
        // a well-formed client request id is kept and recorded for the access log
        assert_eq!(out.headers()[REQUEST_ID], "abc-123");
        assert_eq!(ctx.request_id(), "abc-123");
    }

    #[test]
    fn rewrite_for_an_h2c_app_drops_host_for_authority() {
        let (cfg, upstream) = listener("h2c:8080=127.0.0.1:3000");
        let ctx = Ctx::new();
        let peer = ip_value("192.0.2.7".parse().expect("ip"));
        let host = Some(HeaderValue::from_static("shop.test"));
        let req = client_request(Version::HTTP_11);
        let out = rewrite(&cfg, &upstream, &peer, &ctx, host, req).expect("rewritten");
        assert_eq!(out.version(), Version::HTTP_2);
        assert!(out.headers().get(header::HOST).is_none());
        assert_eq!(
            out.uri().authority().map(|a| a.as_str()),
            Some("127.0.0.1:3000")
        );
        assert_eq!(out.headers()["x-forwarded-host"], "shop.test");
    }

    #[test]
    fn strip_request_keeps_an_upgrade_only_on_http_listeners() {
        let upgrade = || map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let mut h = upgrade();
        strip_request(Protocol::Http, &mut h);
        assert_eq!(h["upgrade"], "websocket");
        let mut h = upgrade();
        strip_request(Protocol::H2c, &mut h);
        assert!(h.get("upgrade").is_none(), "{h:?}");
        assert!(h.get("connection").is_none(), "{h:?}");
    }
}
