//! The TLS client of tandem's outgoing OTLP (the exporters and the pass-through's forwarder):
//! one rustls config (ring) built from the `OTEL_EXPORTER_OTLP_CERTIFICATE`-style files, and
//! the hyper connector that speaks TLS to `https://` URLs and plain TCP to `http://` ones.
//!
//! Invariant: verification cannot be turned off. Without a CA file the server must chain to
//! the Mozilla roots compiled into tandem (`webpki-roots`, so a `FROM scratch` image without
//! `/etc/ssl` still works); with one, to that CA only (the OTLP spec's meaning of
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`). The files are read once, at start: a missing or bad one
//! is a config error naming the key or variable it came from and the path.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// A file setting and where it was set (`telemetry.ca_file`, `OTEL_EXPORTER_OTLP_CERTIFICATE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    /// The config key or variable, for error messages.
    pub source: String,
    /// The path as given.
    pub path: PathBuf,
}

/// The files of one destination's TLS client; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA bundle the server must chain to (instead of the built-in roots).
    pub ca: Option<TlsFile>,
    /// PEM certificate chain tandem presents (mTLS); needs `key`.
    pub cert: Option<TlsFile>,
    /// PEM private key of `cert`.
    pub key: Option<TlsFile>,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {path}: {reason}")]
pub struct TlsFileError {
    /// The config key or variable that named the file.
    pub source_name: String,
    /// The file, as given (empty when the file is missing from a pair).
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(f: &TlsFile, reason: impl Into<String>) -> TlsFileError {
    TlsFileError {
        source_name: f.source.clone(),
        path: f.path.display().to_string(),
        reason: reason.into(),
    }
}

/// The HTTP version spoken over a connection (sets the ALPN offer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// OTLP/HTTP.
    Http1,
    /// OTLP/gRPC (gRPC servers expect ALPN `h2` over TLS).
    Http2,
}

/// A loaded TLS client config. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// What the server must chain to, for logs.
    roots: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots)
            .field(
                "client_cert",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

// === impl ClientTls ===

impl ClientTls {
    /// Read and check `files`; errors name the key or variable and the path.
    pub fn load(files: &TlsFiles) -> Result<ClientTls, TlsFileError> {
        let read = |f: &TlsFile| std::fs::read(&f.path).map_err(|e| err(f, e.to_string()));
        let (roots, described) = match &files.ca {
            Some(ca) => {
                let pem = read(ca)?;
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| err(ca, format!("not a PEM CA bundle: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| err(ca, format!("not a usable CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(err(ca, "no CERTIFICATE block found"));
                }
                (roots, ca.path.display().to_string())
            }
            None => (
                RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                "the built-in Mozilla roots".to_string(),
            ),
        };
        // ring, named here rather than taken from a process-wide default: the one provider
        // the rest of tandem's TLS uses, and no aws-lc-rs (cmake) in the build.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError {
                source_name: "TLS".into(),
                path: String::new(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots);
        let config = match (&files.cert, &files.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(c), None) => {
                return Err(err(
                    c,
                    "a client certificate needs its key (OTEL_EXPORTER_OTLP_CLIENT_KEY or key_file)",
                ))
            }
            (None, Some(k)) => {
                return Err(err(
                    k,
                    "a client key needs its certificate (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE or cert_file)",
                ))
            }
            (Some(c), Some(k)) => {
                let pem = read(c)?;
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(c, format!("not a PEM certificate chain: {e}")))?;
                if chain.is_empty() {
                    return Err(err(c, "no CERTIFICATE block found"));
                }
                let key = PrivateKeyDer::from_pem_slice(&read(k)?)
                    .map_err(|e| err(k, format!("no usable PEM private key: {e}")))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    err(
                        k,
                        format!("does not match the client certificate or is unusable: {e}"),
                    )
                })?
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            roots: described,
        })
    }

    /// What the server's certificate must chain to (a path or the built-in roots).
    pub fn roots(&self) -> &str {
        &self.roots
    }

    /// A connector for hyper (and tonic): TLS for `https://`, plain TCP for `http://`, with
    /// the server name taken from the URL's host.
    pub fn connector(
        &self,
        version: HttpVersion,
        connect_timeout: Duration,
    ) -> HttpsConnector<HttpConnector> {
        let mut tcp = HttpConnector::new();
        // The TLS layer above takes `https://`; plain `HttpConnector` would refuse it.
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http();
        match version {
            HttpVersion::Http1 => builder.enable_http1().wrap_connector(tcp),
            HttpVersion::Http2 => builder.enable_http2().wrap_connector(tcp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(source: &str, path: PathBuf) -> Option<TlsFile> {
        Some(TlsFile {
            source: source.into(),
            path,
        })
    }

    #[test]
    fn bad_files_name_their_source_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.cert.pem()).expect("write");
        let key_pem = dir.path().join("key.pem");
        std::fs::write(&key_pem, ca.key_pair.serialize_pem()).expect("write");

        let e = ClientTls::load(&TlsFiles {
            ca: file("OTEL_EXPORTER_OTLP_CERTIFICATE", missing.clone()),
            ..TlsFiles::default()
        })
        .expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE: "),
            "{e}"
        );
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = ClientTls::load(&TlsFiles {
            ca: file("telemetry.ca_file", garbage.clone()),
            ..TlsFiles::default()
        })
        .expect_err("garbage");
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
        let e = ClientTls::load(&TlsFiles {
            cert: file("telemetry.cert_file", ca_pem.clone()),
            key: file("OTEL_EXPORTER_OTLP_CLIENT_KEY", garbage),
            ..TlsFiles::default()
        })
        .expect_err("bad key");
        assert!(
            e.to_string().starts_with("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
            "{e}"
        );
        let e = ClientTls::load(&TlsFiles {
            cert: file("telemetry.cert_file", ca_pem.clone()),
            ..TlsFiles::default()
        })
        .expect_err("no key");
        assert!(e.to_string().starts_with("telemetry.cert_file"), "{e}");

        let ok = ClientTls::load(&TlsFiles {
            ca: file("telemetry.ca_file", ca_pem.clone()),
            cert: file("telemetry.cert_file", ca_pem),
            key: file("telemetry.key_file", key_pem),
        })
        .expect("good files");
        assert!(ok.roots().ends_with("ca.pem"));
        let default = ClientTls::load(&TlsFiles::default()).expect("built-in roots");
        assert_eq!(default.roots(), "the built-in Mozilla roots");
    }
}
