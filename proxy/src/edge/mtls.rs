//! mTLS: client certificates verified against the listener's CA bundle, an optional SAN
//! allow-list checked during the handshake, and the verified identity forwarded to the app in
//! one header (Envoy's `x-forwarded-client-cert` format).
//!
//! Invariant: the identity header the app sees was written by tandem: the stack removes every
//! client-sent copy on every request, on TLS and cleartext connections alike, before adding
//! the identity of the certificate verified on this connection.

use std::fmt::Write as _;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::extensions::GeneralName;

use crate::config::ListenerConfig;

/// The header used when no client auth is configured: still stripped, so an app behind a
/// cleartext listener is never fooled by a client-sent identity.
const DEFAULT_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The SANs of a certificate, as the allow-list and the identity header see them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Sans {
    pub dns: Vec<String>,
    pub uri: Vec<String>,
}

/// Reads the subject and SANs of a DER certificate; `None` if it does not parse.
fn parse(der: &[u8]) -> Option<(String, Sans)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut sans = Sans::default();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.dns.push((*d).to_string()),
                GeneralName::URI(u) => sans.uri.push((*u).to_string()),
                _ => {}
            }
        }
    }
    Some((cert.subject().to_string(), sans))
}

/// Whether any SAN is on the list (`dns:x`, `uri:x`, or a bare `x` matching either kind).
pub(crate) fn allowed(sans: &Sans, list: &[String]) -> bool {
    list.iter().any(|entry| {
        if let Some(d) = entry.strip_prefix("dns:") {
            sans.dns.iter().any(|s| s.eq_ignore_ascii_case(d))
        } else if let Some(u) = entry.strip_prefix("uri:") {
            sans.uri.iter().any(|s| s == u)
        } else {
            sans.uri.iter().any(|s| s == entry)
                || sans.dns.iter().any(|s| s.eq_ignore_ascii_case(entry))
        }
    })
}

/// The identity header value for a verified leaf certificate:
/// `Hash=<sha256 hex>;Subject="...";URI=...;DNS=...`.
pub(crate) fn identity(der: &[u8]) -> Option<String> {
    let (subject, sans) = parse(der)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::from("Hash=");
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    let _ = write!(out, ";Subject=\"{}\"", subject.replace('"', "\\\""));
    for u in &sans.uri {
        let _ = write!(out, ";URI={u}");
    }
    for d in &sans.dns {
        let _ = write!(out, ";DNS={d}");
    }
    Some(out)
}

/// Chain verification by webpki (CA, validity dates, key usage), then the SAN allow-list:
/// a certificate that is valid but not listed fails the handshake.
#[derive(Debug)]
pub(crate) struct AllowListVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allowed_sans: Vec<String>,
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed_sans.is_empty() {
            return Ok(verified);
        }
        match parse(end_entity) {
            Some((_, sans)) if allowed(&sans, &self.allowed_sans) => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The listener's identity header name (the default one without client auth).
pub(crate) fn identity_header(cfg: &ListenerConfig) -> HeaderName {
    cfg.tls
        .as_ref()
        .and_then(|t| t.client_auth.as_ref())
        .and_then(|c| HeaderName::from_bytes(c.identity_header.as_bytes()).ok())
        .unwrap_or(DEFAULT_IDENTITY_HEADER)
}

/// Strips client copies of the identity header, then adds the verified identity (`id`: the
/// TLS session's client identity), if any.
pub(crate) fn set_identity(header: &HeaderName, id: Option<&str>, headers: &mut HeaderMap) {
    headers.remove(header);
    if let Some(v) = id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert(header.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_kinds() {
        let sans = Sans {
            dns: vec!["client.test".into()],
            uri: vec!["spiffe://td/ns/a/sa/web".into()],
        };
        assert!(allowed(&sans, &["dns:CLIENT.test".into()]));
        assert!(allowed(&sans, &["uri:spiffe://td/ns/a/sa/web".into()]));
        assert!(allowed(&sans, &["spiffe://td/ns/a/sa/web".into()]));
        assert!(!allowed(&sans, &["uri:client.test".into()]));
        assert!(!allowed(&sans, &["spiffe://td/ns/a/sa/other".into()]));
        assert!(!allowed(&Sans::default(), &["client.test".into()]));
    }
}
