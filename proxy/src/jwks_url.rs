//! Fetching a JWKS over HTTP(S): one GET on a fresh connection (fetches are rare), through
//! hyper's HTTP/1 client and, for `https`, rustls verifying the server against a CA bundle.
//!
//! Invariant: every fetch is bounded (`fetch_timeout` for the whole exchange, [`MAX_BODY`] for
//! the body) and the URL's `user:password@` never leaves this module except as a basic-auth
//! header: [`JwksUrl::redacted`] is what logs and errors print.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest JWKS body accepted (a set of a few dozen keys is a few KiB).
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// Where the system's CA bundle is looked for when no `jwks_ca_file` is given.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A parsed `jwks_url`.
#[derive(Clone)]
pub(crate) struct JwksUrl {
    /// Scheme, host, port and path, without userinfo.
    uri: Uri,
    host: String,
    port: u16,
    https: bool,
    /// `Basic base64(user:password)` when the URL carried userinfo.
    basic: Option<HeaderValue>,
    redacted: String,
}

impl std::fmt::Debug for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// One successful fetch: the body, and the server's `Cache-Control: max-age` if any.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

/// A client for one JWKS URL.
#[derive(Clone)]
pub(crate) struct JwksClient {
    pub url: JwksUrl,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl std::fmt::Debug for JwksClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksClient")
            .field("url", &self.url)
            .finish()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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

// === impl JwksClient ===

impl JwksClient {
    /// Builds the client; for `https`, reads the CA bundle (`ca_file`, else the system's).
    /// The error names the file.
    pub fn new(
        url: JwksUrl,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, (PathBuf, String)> {
        let tls = if url.https {
            let path = match ca_file {
                Some(p) => p.to_path_buf(),
                None => system_bundle().ok_or_else(|| {
                    (
                        PathBuf::from(SYSTEM_BUNDLES[0]),
                        "no system CA bundle found; set auth.jwt.jwks_ca_file".to_string(),
                    )
                })?,
            };
            let pem = std::fs::read(&path).map_err(|e| (path.clone(), e.to_string()))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| (path.clone(), e.to_string()))?;
                // A system bundle may hold certificates webpki cannot use; skip those.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err((path, "no CA certificate found".into()));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| (path.clone(), e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self { url, tls, timeout })
    }

    /// GETs the JWKS within `fetch_timeout`; the error is one line fit for a log.
    pub async fn fetch(&self) -> Result<Fetched, String> {
        tokio::time::timeout(self.timeout, self.exchange())
            .await
            .map_err(|_| format!("no complete answer within {:?}", self.timeout))?
    }

    async fn exchange(&self) -> Result<Fetched, String> {
        let u = &self.url;
        let tcp = TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(u.host.clone())
                    .map_err(|e| format!("server name: {e}"))?;
                Box::new(
                    tls.connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?,
                )
            }
            None => Box::new(tcp),
        };
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = u.uri.path_and_query().map_or("/", |p| p.as_str());
        let host = u.uri.authority().map_or(u.host.as_str(), |a| a.as_str());
        let mut req = Request::get(path)
            .header(header::HOST, host)
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(header::USER_AGENT, "tandem")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        if let Some(b) = &u.basic {
            req.headers_mut().insert(header::AUTHORIZATION, b.clone());
        }
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", resp.status()));
        }
        let max_age = resp
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Fetched { body, max_age })
    }
}

fn system_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// `max-age=N` of a Cache-Control value (`no-store`/`no-cache` mean zero: refresh soon).
fn max_age(v: &str) -> Option<Duration> {
    let mut out = None;
    for d in v.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            out = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    out
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

    #[test]
    fn cache_control() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
