//! TLS origination to the app: tandem is the TLS client on its connections to the upstream,
//! verifying the app's certificate against `upstream_tls.ca_file` for the configured SNI name
//! and presenting `cert_file`/`key_file` when the app asks for a client certificate (mTLS).
//!
//! Invariant: verification cannot be turned off; a failed handshake is an
//! [`UpstreamTlsError`] (a 502 `upstream_tls` for HTTP, a closed connection for TCP), logged
//! as an `upstream_tls_failed` event and counted by reason. The files are read at bind.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::config::{host_of, ListenerConfig, Protocol, UpstreamTlsConfig};
use crate::error::FileError;
use crate::obs::metrics::ListenerMetrics;

/// A TLS handshake with the app failed.
#[derive(Debug, thiserror::Error)]
#[error("TLS to the app ({server_name}) failed: {reason}: {source}")]
pub(crate) struct UpstreamTlsError {
    /// The closed-set reason label ([`crate::edge::tls::failure_reason`]).
    pub reason: &'static str,
    server_name: String,
    source: std::io::Error,
}

/// One listener's (or outbound service's) TLS client towards its upstream; the files are
/// re-read by [`UpstreamTls::reload`] and polled by [`UpstreamTls::watch`].
pub(crate) struct UpstreamTls {
    listener: String,
    cfg: UpstreamTlsConfig,
    alpn: Vec<Vec<u8>>,
    connector: RwLock<TlsConnector>,
    server_name: ServerName<'static>,
    /// The files' contents last tried (CA, then certificate and key when set).
    files: Mutex<Files>,
}

#[derive(Default)]
struct Files {
    contents: Vec<Vec<u8>>,
    error: Option<FileError>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("listener", &self.listener)
            .field("server_name", &self.server_name)
            .finish()
    }
}

// === impl UpstreamTls ===

impl UpstreamTls {
    /// Reads the CA bundle and the client certificate and key; errors name the file.
    pub fn load(c: &ListenerConfig, u: &UpstreamTlsConfig) -> Result<Self, FileError> {
        Self::load_for(&c.display_name(), c.protocol, host_of(&c.upstream), u)
    }

    /// As [`UpstreamTls::load`] for `owner` (a listener's or an outbound service's name)
    /// speaking `protocol`; `default_name` is the SNI name when `server_name` is not set.
    pub fn load_for(
        owner: &str,
        protocol: Protocol,
        default_name: &str,
        u: &UpstreamTlsConfig,
    ) -> Result<Self, FileError> {
        let alpn = match protocol {
            // The pooled client speaks HTTP/1.1 to the app on `http` listeners (upgrades
            // pass through), HTTP/2 on `h2c` ones; raw TCP negotiates nothing.
            Protocol::Http => vec![b"http/1.1".to_vec()],
            Protocol::H2c => vec![b"h2".to_vec()],
            Protocol::Tcp => Vec::new(),
        };
        let name = u
            .server_name
            .clone()
            .unwrap_or_else(|| default_name.to_string());
        let server_name = ServerName::try_from(name.clone()).map_err(|e| FileError {
            listener: owner.to_string(),
            what: "upstream_tls.server_name",
            path: PathBuf::new(),
            reason: format!("{name:?}: {e}"),
        })?;
        let contents = read_files(owner, u)?;
        let connector = build(owner, u, &alpn, &contents)?;
        Ok(Self {
            listener: owner.to_string(),
            cfg: u.clone(),
            alpn,
            connector: RwLock::new(connector),
            server_name,
            files: Mutex::new(Files {
                contents,
                error: None,
            }),
        })
    }

    /// Re-reads the files. `Ok(true)`: new contents are in force; `Ok(false)`: nothing
    /// changed since the last try; `Err`: the client in use stays, and this says why (once per
    /// change when polled, again on each `forced`).
    pub fn reload(&self, forced: bool) -> Result<bool, FileError> {
        let contents = read_files(&self.listener, &self.cfg)?;
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if files.contents == contents {
            return match (&files.error, forced) {
                (Some(e), true) => Err(e.clone()),
                _ => Ok(false),
            };
        }
        let built = build(&self.listener, &self.cfg, &self.alpn, &contents);
        files.contents = contents;
        match built {
            Ok(c) => {
                files.error = None;
                *self
                    .connector
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = c;
                Ok(true)
            }
            Err(e) => {
                files.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Reloads and logs the outcome; returns the error, if any.
    pub fn log_reload(&self, forced: bool) -> Option<FileError> {
        match self.reload(forced) {
            Ok(true) => {
                tracing::info!(
                    event = "upstream_tls_reloaded",
                    listener = %self.listener,
                    "TLS files towards the upstream reloaded"
                );
                None
            }
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(event = "upstream_tls_reload_failed", error = %e, "upstream TLS reload failed; keeping the files in use");
                Some(e)
            }
        }
    }

    /// Polls the files every `reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let interval = self.cfg.reload_interval;
        crate::edge::poll_every(interval, stop, || {
            self.log_reload(false);
        })
        .await;
    }

    /// Handshakes over a connected socket; a failure is logged and counted.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        metrics: Option<&ListenerMetrics>,
    ) -> Result<TlsStream<TcpStream>, UpstreamTlsError> {
        let connector = self
            .connector
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match connector.connect(self.server_name.clone(), tcp).await {
            Ok(s) => Ok(s),
            Err(source) => {
                let reason = crate::edge::tls::failure_reason(&source);
                if let Some(m) = metrics {
                    m.upstream_tls_failure(reason);
                }
                let e = UpstreamTlsError {
                    reason,
                    server_name: self.server_name.to_str().into_owned(),
                    source,
                };
                tracing::warn!(
                    event = "upstream_tls_failed",
                    listener = %self.listener,
                    reason,
                    error = %e,
                    "TLS handshake with the app failed"
                );
                Err(e)
            }
        }
    }
}

/// The CA bundle, then the client certificate and key when set.
fn read_files(owner: &str, u: &UpstreamTlsConfig) -> Result<Vec<Vec<u8>>, FileError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| FileError {
            listener: owner.to_string(),
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let ca = u.ca_file.as_deref().ok_or_else(|| FileError {
        listener: owner.to_string(),
        what: "upstream_tls.ca_file",
        path: PathBuf::new(),
        reason: "required (verification cannot be skipped)".into(),
    })?;
    let mut out = vec![read("upstream_tls.ca_file", ca)?];
    if let (Some(cert), Some(key)) = (&u.cert_file, &u.key_file) {
        out.push(read("upstream_tls.cert_file", cert)?);
        out.push(read("upstream_tls.key_file", key)?);
    }
    Ok(out)
}

/// The TLS client from the files' contents (as [`read_files`] returns them).
fn build(
    owner: &str,
    u: &UpstreamTlsConfig,
    alpn: &[Vec<u8>],
    contents: &[Vec<u8>],
) -> Result<TlsConnector, FileError> {
    let err = |what: &'static str, path: Option<&Path>, reason: String| FileError {
        listener: owner.to_string(),
        what,
        path: path.map(Path::to_path_buf).unwrap_or_default(),
        reason,
    };
    let ca_path = u.ca_file.as_deref();
    let ca = contents.first().map(Vec::as_slice).unwrap_or_default();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        let cert = cert.map_err(|e| err("upstream_tls.ca_file", ca_path, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| err("upstream_tls.ca_file", ca_path, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err(
            "upstream_tls.ca_file",
            ca_path,
            "no CA certificate found".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("upstream_tls.ca_file", ca_path, e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (contents.get(1), contents.get(2)) {
        (Some(pem), Some(key_pem)) => {
            let cert_path = u.cert_file.as_deref();
            let key_path = u.key_file.as_deref();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    err(
                        "upstream_tls.cert_file",
                        cert_path,
                        format!("not a PEM certificate chain: {e}"),
                    )
                })?;
            if certs.is_empty() {
                return Err(err(
                    "upstream_tls.cert_file",
                    cert_path,
                    "no CERTIFICATE block found".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
                err(
                    "upstream_tls.key_file",
                    key_path,
                    format!("no usable PEM private key: {e}"),
                )
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                err(
                    "upstream_tls.key_file",
                    key_path,
                    format!("does not match upstream_tls.cert_file or is unusable: {e}"),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.to_vec();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The pooled client's connector: TCP, then TLS when the listener has `upstream_tls`.
#[derive(Clone)]
pub(crate) struct AppConnector {
    http: HttpConnector,
    tls: Option<Arc<UpstreamTls>>,
    metrics: Option<ListenerMetrics>,
}

impl AppConnector {
    pub fn new(
        http: HttpConnector,
        tls: Option<Arc<UpstreamTls>>,
        metrics: Option<ListenerMetrics>,
    ) -> Self {
        Self { http, tls, metrics }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for AppConnector {
    type Response = AppIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<AppIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let tcp = connecting.await?;
            match tls {
                None => Ok(AppIo::Plain(tcp)),
                Some(tls) => {
                    let s = tls.connect(tcp.into_inner(), metrics.as_ref()).await?;
                    Ok(AppIo::Tls(Box::new(TokioIo::new(s))))
                }
            }
        })
    }
}

/// A connection to the app, cleartext or TLS.
pub(crate) enum AppIo {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS stream is about a kilobyte, a socket a few words.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for AppIo {
    fn connected(&self) -> Connected {
        match self {
            AppIo::Plain(s) => s.connected(),
            AppIo::Tls(s) => {
                let (tcp, conn) = s.inner().get_ref();
                let c = tcp.connected();
                if conn.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl hyper::rt::Read for AppIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AppIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AppIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for AppIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            AppIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AppIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AppIo::Plain(s) => Pin::new(s).poll_flush(cx),
            AppIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AppIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AppIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            AppIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AppIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AppIo::Plain(s) => s.is_write_vectored(),
            AppIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("app.internal:8443"), "app.internal");
        assert_eq!(host_of("127.0.0.1:3000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:3000"), "::1");
    }
}
