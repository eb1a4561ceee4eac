//! Typed errors of the proxy library: configuration, the CLI spec, binding, the files the
//! edge reads (certificates, keys, JWKS, hashed secrets).
//!
//! Invariant: every error names what the operator must fix (listener, key, address); request
//! failures are not errors here but [`crate::cause::Cause`]s, answered with a status.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A listener spec on the command line (`LISTEN=UPSTREAM`) that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// No `=` between LISTEN and UPSTREAM.
    #[error("proxy spec {0:?}: missing '=' (expected [PROTOCOL:]LISTEN=UPSTREAM, e.g. 8080=127.0.0.1:3000)")]
    MissingEquals(String),
    /// A prefix that is not http, h2c or tcp.
    #[error("proxy spec: unknown protocol {0:?} (expected http, h2c or tcp)")]
    UnknownProtocol(String),
    /// Nothing before the `=`.
    #[error("proxy spec: empty LISTEN (give a port or ip:port)")]
    EmptyListen,
    /// LISTEN is neither a port nor ip:port.
    #[error("proxy spec: LISTEN {0:?} is neither a port nor ip:port")]
    BadListen(String),
    /// Nothing after the `=`.
    #[error("proxy spec: empty UPSTREAM (give a port or host:port)")]
    EmptyUpstream,
    /// UPSTREAM is not host:port.
    #[error("upstream {upstream:?}: {reason}")]
    BadUpstream {
        /// What was given.
        upstream: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A listener configuration value that is out of range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// One key of one listener is invalid.
    #[error("listener {listener}: {key}: {reason}")]
    Invalid {
        /// The listener's display name.
        listener: String,
        /// The dotted config key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// Two listeners share a name (metrics labels would collide).
    #[error("listener name {0:?} is used twice")]
    DuplicateName(String),
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A configuration error, found before anything was bound.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate, key, JWKS or secrets file cannot be used.
    #[error(transparent)]
    File(#[from] FileError),
    /// The listen address could not be bound (in use, no permission).
    #[error("listener {listener}: cannot bind {addr}: {source}")]
    Bind {
        /// The listener's display name.
        listener: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A file named in a listener's config that cannot be read or used. At bind this fails the
/// start; on a reload the old contents stay in force and this says why.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("listener {listener}: {what} {}: {reason}", path.display())]
pub struct FileError {
    /// The listener's display name.
    pub listener: String,
    /// What the file is for (`tls.cert`, `auth.jwt.jwks_file`, ...).
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why it cannot be used.
    pub reason: String,
}
