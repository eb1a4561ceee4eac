//! Fetching a JWKS over HTTP(S): one GET on a fresh connection (fetches are rare), through
//! hyper's HTTP/1 client and, for `https`, rustls verifying the server against a CA bundle.
//!
//! Invariant: every fetch is bounded (`fetch_timeout` for the whole exchange, [`MAX_BODY`] for
//! the body) and the URL's `user:password@` never leaves this module except as a basic-auth
//! header: [`JwksUrl::redacted`] is what logs and errors print.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::jwks_url::JwksUrl;

/// The largest JWKS body accepted (a set of a few dozen keys is a few KiB).
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// Where the system's CA bundle is looked for when no `jwks_ca_file` is given.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

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
