//! A listener's edge security state, loaded from the files its config names: TLS (and mTLS),
//! authentication, rate limiting.
//!
//! Invariant: loaded in [`crate::Inbound::bind`] before any port is bound, so a missing or bad
//! file fails the start; afterwards only [`Edge::reload`] and the file watchers change it, and
//! a reload that fails keeps what is in force.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Method};
use crate::config::ListenerConfig;
use crate::error::FileError;
use crate::ratelimit::RateLimiter;
use crate::tls::TlsState;

/// See the module doc.
#[derive(Debug, Clone, Default)]
pub(crate) struct Edge {
    pub tls: Option<Arc<TlsState>>,
    pub auth: Option<Arc<Auth>>,
    pub rate: Option<Arc<RateLimiter>>,
}

// === impl Edge ===

impl Edge {
    pub fn load(c: &ListenerConfig) -> Result<Self, FileError> {
        let name = c.display_name();
        Ok(Self {
            tls: c
                .tls
                .as_ref()
                .map(|t| TlsState::load(&name, t, c.protocol).map(Arc::new))
                .transpose()?,
            auth: c
                .auth
                .as_ref()
                .map(|a| Auth::load(&name, a).map(Arc::new))
                .transpose()?,
            rate: c.rate_limit.as_ref().map(|r| Arc::new(RateLimiter::new(r))),
        })
    }

    /// Starts polling the certificate and JWKS files until `stop`.
    pub fn watch(&self, stop: &CancellationToken) {
        if let Some(t) = &self.tls {
            tokio::spawn(t.clone().watch(stop.child_token()));
        }
        if let Some(Method::Jwt(j)) = self.auth.as_ref().map(|a| &a.method) {
            tokio::spawn(j.clone().watch(stop.child_token()));
        }
    }

    /// Re-reads the files now; returns what failed (the old contents stay in force).
    pub fn reload(&self) -> Vec<FileError> {
        let mut failed = Vec::new();
        if let Some(e) = self.tls.as_ref().and_then(|t| t.log_reload(true)) {
            failed.push(e);
        }
        if let Some(Method::Jwt(j)) = self.auth.as_ref().map(|a| &a.method) {
            if let Some(e) = j.log_reload(true) {
                failed.push(e);
            }
        }
        failed
    }
}
