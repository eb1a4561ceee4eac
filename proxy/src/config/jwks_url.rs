//! A `jwks_url` parsed: scheme, host, port, path and any `user:password@`, checked when the
//! config is and used by the JWKS client (`edge::jwks_url`).
//!
//! Invariant: the URL's userinfo never leaves this value except as a basic-auth header:
//! [`JwksUrl::redacted`] is what logs and errors print.

use base64::Engine as _;
use http::{HeaderValue, Uri};

/// A parsed `jwks_url`.
#[derive(Clone)]
pub(crate) struct JwksUrl {
    /// Scheme, host, port and path, without userinfo.
    pub(crate) uri: Uri,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) https: bool,
    /// `Basic base64(user:password)` when the URL carried userinfo.
    pub(crate) basic: Option<HeaderValue>,
    pub(crate) redacted: String,
}

impl std::fmt::Debug for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

// === impl JwksUrl ===

impl JwksUrl {
    /// Parses `http(s)://[user:password@]host[:port]/path`; the error says what is wrong
    /// without repeating the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| "not a valid URL (expected http(s)://host[:port]/path)".to_string())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the scheme must be http:// or https://".into()),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| "missing host".to_string())?
            .as_str();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let hp: http::uri::Authority = hostport
            .parse()
            .map_err(|_| "not a valid host[:port]".to_string())?;
        let host = hp.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("missing host".into());
        }
        let port = hp.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let clean: Uri = format!(
            "{}://{hostport}{path}",
            if https { "https" } else { "http" }
        )
        .parse()
        .map_err(|_| "not a valid URL".to_string())?;
        let basic = userinfo
            .map(|u| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(u.as_bytes());
                HeaderValue::from_str(&format!("Basic {b64}"))
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| "userinfo is not usable as basic auth".to_string())
            })
            .transpose()?;
        let redacted = if userinfo.is_some() {
            format!(
                "{}://[REDACTED]@{hostport}{path}",
                if https { "https" } else { "http" }
            )
        } else {
            clean.to_string()
        };
        Ok(Self {
            host: host.to_string(),
            port,
            https,
            basic,
            redacted,
            uri: clean,
        })
    }

    /// The URL as logs show it: `user:password@` replaced by `[REDACTED]@`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

/// The URL with any userinfo replaced by `[REDACTED]`; unparsable URLs are hidden whole.
pub fn redact_url(url: &str) -> String {
    JwksUrl::parse(url).map_or_else(|_| "[REDACTED]".into(), |u| u.redacted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_redact() {
        let u = JwksUrl::parse("https://bob:s3cret@idp.test:8443/keys?x=1").expect("valid");
        assert_eq!(u.redacted(), "https://[REDACTED]@idp.test:8443/keys?x=1");
        assert_eq!((u.host.as_str(), u.port, u.https), ("idp.test", 8443, true));
        assert!(!format!("{u:?}").contains("s3cret"));
        let u = JwksUrl::parse("http://127.0.0.1/jwks").expect("valid");
        assert_eq!((u.port, u.https, u.basic.is_none()), (80, false, true));
        assert_eq!(u.redacted(), "http://127.0.0.1/jwks");
        for bad in ["ftp://x/", "idp.test/jwks", "https://", "not a url"] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(redact_url("https://a:b@h/"), "https://[REDACTED]@h/");
    }
}
