//! gRPC as a proxy sees it: `grpc-status` (in trailers, or in the head of a trailers-only
//! response), `grpc-timeout` deadlines, and the status codes' names.
//!
//! Invariant: a malformed `grpc-status` or `grpc-timeout` is ignored (treated as absent),
//! never an error of the call.

use std::time::Duration;

use http::{HeaderMap, HeaderName};

/// The names looked up per request, made once (a `&str` name is parsed at every lookup).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// `UNAVAILABLE`: the service is (probably transiently) unavailable; safe to retry.
pub(crate) const UNAVAILABLE: u32 = 14;
/// `RESOURCE_EXHAUSTED`: retried only when the service is configured so.
pub(crate) const RESOURCE_EXHAUSTED: u32 = 8;

/// Whether the request is a gRPC call (`content-type: application/grpc[+proto|...]`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` of a head or trailers.
pub(crate) fn status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
}

/// The deadline a client asked for in `grpc-timeout` (`TimeoutValue TimeoutUnit`: up to 8
/// digits, then one of `H M S m u n`).
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The name of a gRPC status code (the gRPC spec's `statuscodes.md`), for spans, metrics and
/// messages; `OTHER` for a code the spec does not define.
pub fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "OTHER",
    }
}

/// Whether a server answering `code` failed (OpenTelemetry's gRPC conventions: the client's
/// mistakes, such as NOT_FOUND or INVALID_ARGUMENT, are not the server's errors).
pub(crate) fn is_server_error(code: u32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, v: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, http::HeaderValue::from_static(v));
        m
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            timeout(&h("grpc-timeout", "250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            timeout(&h("grpc-timeout", "2S")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            timeout(&h("grpc-timeout", "1H")),
            Some(Duration::from_secs(3600))
        );
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            let mut m = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(bad) {
                m.insert("grpc-timeout", v);
            }
            assert_eq!(timeout(&m), None, "{bad:?}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(status(&h("grpc-status", "14")), Some(UNAVAILABLE));
        assert_eq!(status(&h("grpc-status", "x")), None);
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert!(is_grpc(&h("content-type", "application/grpc+proto")));
        assert!(!is_grpc(&h("content-type", "application/json")));
    }
}
