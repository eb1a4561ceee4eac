//! Request size limits checked before anything is forwarded: header bytes and count (431),
//! and a declared Content-Length over the body limit (413). A body without Content-Length is
//! limited while it is read (see `replay`).
//!
//! Invariant: hyper enforces a coarser parse-buffer limit before this check runs (and answers
//! 431 itself); the check here is the exact, configurable one.

use http::HeaderMap;

use crate::cause::Cause;
use crate::config::LimitsConfig;

/// 431 when the request head is over the configured size or count.
pub fn check_header_limits(
    headers: &HeaderMap,
    max_bytes: usize,
    max_count: usize,
) -> Result<(), Cause> {
    if headers.len() > max_count {
        return Err(Cause::HeadersTooLarge);
    }
    // name + ": " + value + CRLF, as on the wire.
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if bytes > max_bytes {
        return Err(Cause::HeadersTooLarge);
    }
    Ok(())
}

/// 413 when Content-Length is over `max_body`.
pub fn check_content_length(headers: &HeaderMap, max_body: Option<u64>) -> Result<(), Cause> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (declared, max_body) {
        (Some(len), Some(max)) if len > max => Err(Cause::BodyTooLarge),
        _ => Ok(()),
    }
}

/// Both checks, with the listener's limits.
pub(crate) fn check(limits: &LimitsConfig, headers: &HeaderMap) -> Result<(), Cause> {
    check_header_limits(headers, limits.max_header_bytes, limits.max_header_count)?;
    check_content_length(headers, limits.max_body_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn header_limits() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        h.insert("b", HeaderValue::from_static("2"));
        assert!(check_header_limits(&h, 100, 2).is_ok());
        assert_eq!(check_header_limits(&h, 100, 1), Err(Cause::HeadersTooLarge));
        assert_eq!(check_header_limits(&h, 11, 10), Err(Cause::HeadersTooLarge));
    }

    #[test]
    fn content_length() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("1001"));
        assert_eq!(
            check_content_length(&h, Some(1000)),
            Err(Cause::BodyTooLarge)
        );
        assert!(check_content_length(&h, Some(1001)).is_ok());
        assert!(check_content_length(&h, None).is_ok());
    }
}
