//! A listener's config checked before anything is bound: every value once, and the app's
//! address parsed once.
//!
//! Invariant: an error names the listener and the key (`ConfigError::Invalid`), so
//! `tandem check` and a failed start (exit 64) point at the line to fix.

use std::time::Duration;

use crate::config::upstream::{self, host_of};
use crate::config::{jwks_url, JwtConfig, ListenerConfig, Protocol};
use crate::error::ConfigError;

// === impl ListenerConfig ===

impl ListenerConfig {
    /// The app's address as the client will use it: parsed once, here, so no later step
    /// can fall back to another address. An error names the listener and the key.
    pub fn upstream_authority(&self) -> Result<http::uri::Authority, ConfigError> {
        upstream::check_upstream(&self.upstream)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                self.upstream
                    .parse::<http::uri::Authority>()
                    .map_err(|e| format!("{:?}: {e}", self.upstream))
            })
            .map_err(|reason| ConfigError::Invalid {
                listener: self.display_name(),
                key: "upstream",
                reason,
            })
    }

    /// Checks every value once, before binding; errors name the listener and the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = self.display_name();
        let bad = |key: &'static str, reason: String| ConfigError::Invalid {
            listener: name.clone(),
            key,
            reason,
        };
        upstream::check_upstream(&self.upstream).map_err(|e| bad("upstream", e.to_string()))?;
        let t = &self.timeouts;
        for (key, d) in [
            ("timeouts.header_read", t.header_read),
            ("timeouts.connect", t.connect),
            ("timeouts.per_try", t.per_try),
            ("timeouts.request", t.request),
            ("timeouts.idle", t.idle),
            ("timeouts.pool_idle", t.pool_idle),
            ("timeouts.write", t.write),
            ("timeouts.tcp_idle", t.tcp_idle),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be greater than zero".into()));
            }
        }
        if self.hold_timeout >= t.request {
            // Otherwise a held request times out as 504 before it can be answered 503.
            return Err(bad(
                "hold_timeout",
                "must be shorter than timeouts.request".into(),
            ));
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(bad("retry.max_attempts", "must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&r.budget_ratio) || r.budget_ratio.is_nan() {
            return Err(bad("retry.budget_ratio", "must be between 0 and 1".into()));
        }
        if r.budget_ttl < Duration::from_secs(1) || r.budget_ttl > Duration::from_secs(60) {
            return Err(bad("retry.budget_ttl", "must be between 1s and 60s".into()));
        }
        if r.backoff_base > r.backoff_max {
            return Err(bad(
                "retry.backoff_base",
                "must not exceed retry.backoff_max".into(),
            ));
        }
        if self.allow_connect && self.protocol != Protocol::Http {
            return Err(bad(
                "allow_connect",
                "only with protocol = \"http\" (a tunnel is an HTTP/1.1 upgrade)".into(),
            ));
        }
        let l = &self.limits;
        if l.max_concurrent == 0 {
            return Err(bad("limits.max_concurrent", "must be at least 1".into()));
        }
        if l.max_connections == Some(0) {
            return Err(bad("limits.max_connections", "must be at least 1".into()));
        }
        if l.max_header_count == 0 || l.max_header_bytes == 0 {
            return Err(bad(
                "limits.max_header_bytes",
                "header limits must be at least 1".into(),
            ));
        }
        self.validate_edge(&bad)
    }

    /// The TLS, auth and rate-limit keys (files are read later, at bind).
    fn validate_edge(
        &self,
        bad: &dyn Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if let Some(u) = &self.upstream_tls {
            if u.ca_file.is_none() {
                return Err(bad(
                    "upstream_tls.ca_file",
                    "required: the CA bundle the app's certificate is verified against".into(),
                ));
            }
            if u.cert_file.is_some() != u.key_file.is_some() {
                return Err(bad(
                    "upstream_tls.key_file",
                    "upstream_tls.cert_file and upstream_tls.key_file go together".into(),
                ));
            }
            let name = match &u.server_name {
                Some(n) => n.clone(),
                None => host_of(&self.upstream).to_string(),
            };
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(bad(
                    "upstream_tls.server_name",
                    format!("{name:?} is neither a DNS name nor an IP address"),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if tls.reload_interval.is_zero() {
                return Err(bad(
                    "tls.reload_interval",
                    "must be greater than zero".into(),
                ));
            }
            if let Some(ca) = &tls.client_auth {
                if http::HeaderName::from_bytes(ca.identity_header.as_bytes()).is_err() {
                    return Err(bad(
                        "tls.client_auth.identity_header",
                        format!("{:?} is not a header name", ca.identity_header),
                    ));
                }
            }
        }
        if let Some(a) = &self.auth {
            if self.protocol == Protocol::Tcp {
                return Err(bad("auth", "not supported with protocol = \"tcp\"".into()));
            }
            let n = [a.jwt.is_some(), a.api_key.is_some(), a.basic.is_some()]
                .iter()
                .filter(|x| **x)
                .count();
            if n != 1 {
                return Err(bad(
                    "auth",
                    "set exactly one of auth.jwt, auth.api_key, auth.basic".into(),
                ));
            }
            if let Some(p) = a.exempt_paths.iter().find(|p| !p.starts_with('/')) {
                return Err(bad(
                    "auth.exempt_paths",
                    format!("{p:?} must start with '/'"),
                ));
            }
            if let Some(j) = &a.jwt {
                validate_jwks_source(j, bad)?;
                if let Some(h) = j
                    .forward_claims
                    .values()
                    .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
                {
                    return Err(bad(
                        "auth.jwt.forward_claims",
                        format!("{h:?} is not a header name"),
                    ));
                }
            }
            if let Some(k) = &a.api_key {
                if http::HeaderName::from_bytes(k.header.as_bytes()).is_err() {
                    return Err(bad(
                        "auth.api_key.header",
                        format!("{:?} is not a header name", k.header),
                    ));
                }
            }
        }
        if let Some(r) = &self.rate_limit {
            if self.protocol == Protocol::Tcp {
                return Err(bad(
                    "rate_limit",
                    "not supported with protocol = \"tcp\"".into(),
                ));
            }
            if !(r.per_second > 0.0 && r.per_second.is_finite()) {
                return Err(bad(
                    "rate_limit.per_second",
                    "must be greater than zero".into(),
                ));
            }
            if r.burst == 0 {
                return Err(bad("rate_limit.burst", "must be at least 1".into()));
            }
            if r.max_clients == 0 {
                return Err(bad("rate_limit.max_clients", "must be at least 1".into()));
            }
            let claim_ok = r.key.strip_prefix("claim:").is_some_and(|c| !c.is_empty());
            if r.key != "client_ip" && !claim_ok {
                return Err(bad(
                    "rate_limit.key",
                    format!("{:?}: expected \"client_ip\" or \"claim:<name>\"", r.key),
                ));
            }
            if claim_ok && self.auth.as_ref().is_none_or(|a| a.jwt.is_none()) {
                return Err(bad("rate_limit.key", "a claim key needs auth.jwt".into()));
            }
        }
        Ok(())
    }
}

/// One of `jwks_file`, `jwks_url`, with a usable URL and non-zero intervals.
fn validate_jwks_source(
    j: &JwtConfig,
    bad: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    match (&j.jwks_file, &j.jwks_url) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(bad(
                "auth.jwt",
                "set exactly one of auth.jwt.jwks_file, auth.jwt.jwks_url".into(),
            ))
        }
        (None, Some(url)) => {
            jwks_url::JwksUrl::parse(url).map_err(|e| bad("auth.jwt.jwks_url", e))?;
            if j.jwks_ca_file.is_some() && !url.starts_with("https://") {
                return Err(bad(
                    "auth.jwt.jwks_ca_file",
                    "only used with an https:// jwks_url".into(),
                ));
            }
        }
        (Some(_), None) => {
            if j.jwks_ca_file.is_some() {
                return Err(bad(
                    "auth.jwt.jwks_ca_file",
                    "only used with auth.jwt.jwks_url".into(),
                ));
            }
        }
    }
    for (key, d) in [
        ("auth.jwt.reload_interval", j.reload_interval),
        ("auth.jwt.refresh_interval", j.refresh_interval),
        ("auth.jwt.min_refetch_interval", j.min_refetch_interval),
        ("auth.jwt.fetch_timeout", j.fetch_timeout),
    ] {
        if d.is_zero() {
            return Err(bad(key, "must be greater than zero".into()));
        }
    }
    if j.min_refetch_interval > j.refresh_interval {
        return Err(bad(
            "auth.jwt.min_refetch_interval",
            "must not exceed auth.jwt.refresh_interval".into(),
        ));
    }
    Ok(())
}
