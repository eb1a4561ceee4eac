//! Test PKI and TLS clients: CAs and certificates made with rcgen in each test, written to a
//! temporary directory for the proxy to read, and rustls clients that speak HTTP/1.1 or h2
//! over them.
//!
//! Invariant: nothing here is a fixture on disk except one RSA key (ring cannot generate RSA
//! keys); every certificate is fresh, so a test cannot pass on a stale file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::{full, BoxError, TestBody};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n: u64 = rand::random();
        let p = std::env::temp_dir().join(format!("tandem-{tag}-{}-{n:x}", std::process::id()));
        std::fs::create_dir_all(&p).expect("mkdir");
        Self(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        // Write then rename, as Vault agent and Nomad templates do.
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write");
        std::fs::rename(&tmp, &p).expect("rename");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA that issues certificates.
pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

/// An issued certificate and its key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).expect("self-signed CA");
        Self { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `dns` names plus `uris` SANs; `expired` makes it valid only in 2020.
    pub fn issue(&self, cn: &str, dns: &[&str], uris: &[&str], expired: bool) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().expect("ia5 uri")));
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 2, 1);
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("signed");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// A rustls client trusting `ca`, offering `alpn`, presenting `client` if given.
pub fn client_config(ca: &Ca, alpn: &[&[u8]], client: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut c = match client {
        Some(i) => b
            .with_client_auth_cert(
                vec![i.der.clone()],
                PrivateKeyDer::try_from(i.key_der.clone()).expect("key der"),
            )
            .expect("client cert"),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

/// Connects and handshakes as `localhost`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    Ok(TlsConnector::from(config).connect(name, tcp).await?)
}

/// The leaf certificate the server presented.
pub fn server_leaf(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().expect("server certs")[0].clone()
}

/// One HTTP connection over TLS.
pub enum Conn {
    H1(http1::SendRequest<TestBody>),
    H2(http2::SendRequest<TestBody>),
}

impl Conn {
    /// Speaks whatever ALPN chose.
    pub async fn over(s: TlsStream<TcpStream>) -> Result<Self, BoxError> {
        let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(s);
        if h2 {
            let (tx, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Conn::H2(tx))
        } else {
            let (tx, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Conn::H1(tx))
        }
    }

    pub async fn send(
        &mut self,
        req: Request<TestBody>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
        let resp = match self {
            Conn::H1(tx) => {
                tx.ready().await?;
                tx.send_request(req).await?
            }
            Conn::H2(tx) => {
                tx.ready().await?;
                tx.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
        let mut b = Request::get(format!("https://localhost{path}"));
        if matches!(self, Conn::H1(_)) {
            b = b.header("host", "localhost");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(full(Bytes::new()))?).await
    }
}

/// Server certificate files for `localhost`, issued by `ca`, written into `dir`.
pub fn write_server_cert(dir: &TempDir, ca: &Ca, cn: &str) -> (PathBuf, PathBuf, Issued) {
    let leaf = ca.issue(cn, &["localhost"], &[], false);
    let cert = dir.write("server.pem", &leaf.cert_pem);
    let key = dir.write("server-key.pem", &leaf.key_pem);
    (cert, key, leaf)
}

/// A rustls server config presenting `leaf`; with `client_ca`, a client certificate from it
/// is required (mTLS).
pub fn server_config(
    leaf: &Issued,
    client_ca: Option<&Ca>,
    alpn: &[&[u8]],
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let b = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.cert.der().clone()).expect("root");
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("verifier");
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let mut c = b
        .with_single_cert(
            vec![leaf.der.clone()],
            PrivateKeyDer::try_from(leaf.key_der.clone()).expect("key der"),
        )
        .expect("server config");
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}
