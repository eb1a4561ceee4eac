//! A listener's edge security state, loaded from the files its config names: TLS (and mTLS),
//! TLS towards the app, authentication, rate limiting.
//!
//! Invariant: loaded in [`crate::Inbound::bind`] before any port is bound, so a missing or bad
//! file fails the start; afterwards only [`Edge::reload`] and the file watchers change it, and
//! a reload that fails keeps what is in force.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::ListenerConfig;
use crate::edge::auth::{Auth, Method};
use crate::edge::ratelimit::RateLimiter;
use crate::edge::tls::TlsState;
use crate::edge::upstream_tls::UpstreamTls;
use crate::error::FileError;
use crate::obs::metrics::ListenerMetrics;

pub(crate) mod apikey;
pub(crate) mod auth;
pub(crate) mod basic;
pub(crate) mod jwks_url;
pub(crate) mod jwt;
pub(crate) mod mtls;
pub(crate) mod quiet;
pub(crate) mod ratelimit;
pub(crate) mod secret;
pub(crate) mod tls;
pub(crate) mod upstream_tls;

/// See the module doc.
#[derive(Debug, Clone, Default)]
pub(crate) struct Edge {
    pub tls: Option<Arc<TlsState>>,
    pub upstream_tls: Option<Arc<UpstreamTls>>,
    pub auth: Option<Arc<Auth>>,
    pub rate: Option<Arc<RateLimiter>>,
}

/// Calls `reload` every `interval` (the first after one interval) until `stop`: the file
/// polls of the listener's TLS, JWKS and upstream TLS files.
pub(crate) async fn poll_every(
    interval: std::time::Duration,
    stop: CancellationToken,
    reload: impl Fn(),
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => reload(),
        }
    }
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
            upstream_tls: c
                .upstream_tls
                .as_ref()
                .map(|u| UpstreamTls::load(c, u).map(Arc::new))
                .transpose()?,
            auth: c
                .auth
                .as_ref()
                .map(|a| Auth::load(&name, a).map(Arc::new))
                .transpose()?,
            rate: c.rate_limit.as_ref().map(|r| Arc::new(RateLimiter::new(r))),
        })
    }

    /// The first fetch of a JWKS URL (a failure leaves the listener without keys until a
    /// later fetch succeeds; it does not fail the start: the IdP may be down for a moment).
    pub async fn prefetch(&self) {
        if let Some(Method::Jwt(j)) = self.auth.as_ref().map(|a| &a.method) {
            j.prefetch().await;
        }
    }

    /// Starts polling the certificate and JWKS files (and refreshing a JWKS URL) until
    /// `stop`; JWKS fetches are counted in `metrics`.
    pub fn watch(&self, stop: &CancellationToken, metrics: Option<&ListenerMetrics>) {
        if let (Some(Method::Jwt(j)), Some(m)) = (self.auth.as_ref().map(|a| &a.method), metrics) {
            j.attach_metrics(m);
        }
        if let Some(t) = &self.tls {
            tokio::spawn(t.clone().watch(stop.child_token()));
        }
        if let Some(u) = &self.upstream_tls {
            tokio::spawn(u.clone().watch(stop.child_token()));
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
        if let Some(e) = self.upstream_tls.as_ref().and_then(|u| u.log_reload(true)) {
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
