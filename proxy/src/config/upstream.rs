//! The app's address as configured: `host:port`, checked, and its host part.
//!
//! Invariant: an upstream that passes [`check_upstream`] has a non-empty host and a port in
//! 1-65535, and no scheme or path; the config and the `PORT=ADDR` spec both check with it.

use crate::error::SpecError;

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub(crate) fn host_of(upstream: &str) -> &str {
    let host = upstream.rsplit_once(':').map_or(upstream, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Checks that an upstream is `host:port` with a non-zero port and no scheme or path.
pub(crate) fn check_upstream(s: &str) -> Result<(), SpecError> {
    if s.is_empty() {
        return Err(SpecError::EmptyUpstream);
    }
    if s.contains("://") || s.contains('/') {
        return Err(SpecError::BadUpstream {
            upstream: s.to_string(),
            reason: "give host:port, without scheme or path",
        });
    }
    let (host, port) = s.rsplit_once(':').ok_or(SpecError::BadUpstream {
        upstream: s.to_string(),
        reason: "missing :port",
    })?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => {
            return Err(SpecError::BadUpstream {
                upstream: s.to_string(),
                reason: "port must be 1-65535",
            })
        }
    }
    if host.is_empty() {
        return Err(SpecError::BadUpstream {
            upstream: s.to_string(),
            reason: "missing host",
        });
    }
    // The URI we build must parse, or every request would fail later.
    format!("http://{s}/")
        .parse::<http::Uri>()
        .map_err(|_| SpecError::BadUpstream {
            upstream: s.to_string(),
            reason: "not a valid authority",
        })?;
    Ok(())
}
