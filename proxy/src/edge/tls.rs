//! TLS termination: the listener's certificate, key and client CA bundle, loaded at bind,
//! swapped in place when the files change (polled) or on [`crate::Serving::reload`], and the
//! handshake of each new connection.
//!
//! Invariant: a reload only replaces the config that *new* handshakes use; a connection keeps
//! the config it was accepted with, so rotation never drops one. A file that fails to load
//! leaves the old config in force, and the failure is logged and returned naming the file.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Protocol, TlsConfig};
use crate::edge::mtls::AllowListVerifier;
use crate::edge::quiet::EventBudget;
use crate::error::FileError;

/// What the handshake established, carried in each request's extensions.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsInfo {
    /// The client's verified certificate as the identity header renders it (mTLS only).
    pub client_identity: Option<Arc<str>>,
}

/// The bytes of the files a config was last built from (or last failed to build from).
#[derive(Debug, Default, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

/// What was last tried, and why it failed if it did.
#[derive(Debug, Default)]
struct Tried {
    files: Files,
    error: Option<FileError>,
}

/// Reads the files of one listener and builds a rustls config from them.
#[derive(Debug)]
struct Loader {
    listener: String,
    cfg: TlsConfig,
    alpn: Vec<Vec<u8>>,
}

/// One listener's TLS state.
#[derive(Debug)]
pub(crate) struct TlsState {
    loader: Loader,
    current: RwLock<Arc<ServerConfig>>,
    tried: Mutex<Tried>,
    /// Bounds the `tls_handshake_failed` events (every failure is still counted).
    pub(crate) failure_events: EventBudget,
}

/// At most this many `tls_handshake_failed` events per listener and window.
const FAILURE_EVENT_BURST: u32 = 10;
const FAILURE_EVENT_WINDOW: Duration = Duration::from_secs(10);

// === impl Loader ===

impl Loader {
    fn err(&self, what: &'static str, path: &Path, reason: impl ToString) -> FileError {
        FileError {
            listener: self.listener.clone(),
            what,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn read(&self, what: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
        std::fs::read(path).map_err(|e| self.err(what, path, e))
    }

    fn read_all(&self) -> Result<Files, FileError> {
        Ok(Files {
            cert: self.read("tls.cert", &self.cfg.cert)?,
            key: self.read("tls.key", &self.cfg.key)?,
            ca: match &self.cfg.client_auth {
                Some(c) => self.read("tls.client_auth.ca", &c.ca)?,
                None => Vec::new(),
            },
        })
    }

    fn build(&self, files: &Files) -> Result<Arc<ServerConfig>, FileError> {
        let cfg = &self.cfg;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                self.err(
                    "tls.cert",
                    &cfg.cert,
                    format!("not a PEM certificate chain: {e}"),
                )
            })?;
        if certs.is_empty() {
            return Err(self.err("tls.cert", &cfg.cert, "no CERTIFICATE block found"));
        }
        let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
            self.err(
                "tls.key",
                &cfg.key,
                format!("no usable PEM private key: {e}"),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.err("tls.cert", &cfg.cert, e))?;
        let builder = match &cfg.client_auth {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&files.ca) {
                    let cert = cert.map_err(|e| self.err("tls.client_auth.ca", &c.ca, e))?;
                    roots
                        .add(cert)
                        .map_err(|e| self.err("tls.client_auth.ca", &c.ca, e))?;
                }
                if roots.is_empty() {
                    return Err(self.err("tls.client_auth.ca", &c.ca, "no CA certificate found"));
                }
                let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| self.err("tls.client_auth.ca", &c.ca, e))?;
                builder.with_client_cert_verifier(Arc::new(AllowListVerifier {
                    inner,
                    allowed_sans: c.allowed_sans.clone(),
                }))
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            self.err(
                "tls.key",
                &cfg.key,
                format!("does not match tls.cert or is unusable: {e}"),
            )
        })?;
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }
}

// === impl TlsState ===

impl TlsState {
    /// Loads the files; an error names the listener and the file.
    pub fn load(listener: &str, cfg: &TlsConfig, protocol: Protocol) -> Result<Self, FileError> {
        let alpn = match protocol {
            Protocol::H2c => vec![b"h2".to_vec()],
            Protocol::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            // Raw bytes: no application protocol to negotiate.
            Protocol::Tcp => Vec::new(),
        };
        let loader = Loader {
            listener: listener.to_string(),
            cfg: cfg.clone(),
            alpn,
        };
        let files = loader.read_all()?;
        let config = loader.build(&files)?;
        Ok(Self {
            loader,
            current: RwLock::new(config),
            tried: Mutex::new(Tried { files, error: None }),
            failure_events: EventBudget::new(FAILURE_EVENT_BURST, FAILURE_EVENT_WINDOW),
        })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        TlsAcceptor::from(config)
    }

    /// Re-reads the files. `Ok(true)`: new contents are in force; `Ok(false)`: nothing
    /// changed since the last try; `Err`: the config in use stays, and this says why. An
    /// unchanged bad file is reported once per change by polls, and again on each `forced`.
    pub fn reload(&self, forced: bool) -> Result<bool, FileError> {
        let files = self.loader.read_all()?;
        let mut tried = match self.tried.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if tried.files == files {
            return match (&tried.error, forced) {
                (Some(e), true) => Err(e.clone()),
                _ => Ok(false),
            };
        }
        let built = self.loader.build(&files);
        tried.files = files;
        match built {
            Ok(config) => {
                tried.error = None;
                match self.current.write() {
                    Ok(mut c) => *c = config,
                    Err(poisoned) => *poisoned.into_inner() = config,
                }
                Ok(true)
            }
            Err(e) => {
                tried.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Polls the files every `reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let interval = self.loader.cfg.reload_interval;
        crate::edge::poll_every(interval, stop, || {
            self.log_reload(false);
        })
        .await;
    }

    /// Reloads and logs the outcome; returns the error, if any.
    pub fn log_reload(&self, forced: bool) -> Option<FileError> {
        match self.reload(forced) {
            Ok(true) => {
                tracing::info!(
                    listener = %self.loader.listener,
                    cert = %self.loader.cfg.cert.display(),
                    "TLS certificate reloaded"
                );
                None
            }
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, "TLS reload failed; keeping the certificate in use");
                Some(e)
            }
        }
    }
}

/// Why a TLS handshake failed, as a label from a closed set (metrics, events). `e` is what
/// tokio-rustls returned: an I/O error, carrying rustls's error when TLS itself failed.
pub(crate) fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    use rustls::Error as E;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            _ => "io",
        };
    };
    match tls {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown_ca",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::NotValidForName | C::NotValidForNameContext { .. } => "name_mismatch",
            // The SAN allow-list (mtls.rs) refuses with this one.
            C::ApplicationVerificationFailure => "san_not_allowed",
            C::Revoked => "revoked",
            _ => "bad_certificate",
        },
        E::AlertReceived(_) => "peer_alert",
        E::InvalidMessage(_) => "not_tls",
        E::NoApplicationProtocol => "no_alpn",
        E::PeerIncompatible(_) => "incompatible",
        _ => "protocol_error",
    }
}
