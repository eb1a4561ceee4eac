//! Request authentication at the edge: JWT bearer tokens, static API keys or basic auth,
//! one per listener, with exempt path prefixes (e.g. `/health`).
//!
//! Invariant: headers tandem vouches for (forwarded JWT claims) are removed from every
//! request first, exempt or not, so the app only ever sees values tandem verified; a refusal
//! is a [`Cause`] (401 with `WWW-Authenticate`, or 403), answered by the stack like any other.
//! A token whose key is unknown to a JWKS-URL listener waits for one (rate-bounded) refetch
//! and is checked again; everything else is decided without awaiting.

use std::sync::Arc;

use http::{header, HeaderName, HeaderValue, Request};

use crate::cause::{Cause, Challenge};
use crate::config::AuthConfig;
use crate::edge::apikey::ApiKeys;
use crate::edge::basic::BasicUsers;
use crate::edge::jwt::{claim_text, JwtAuth, Reject};
use crate::error::FileError;

/// The credential check a listener uses.
#[derive(Debug)]
pub(crate) enum Method {
    Jwt(Arc<JwtAuth>),
    ApiKey(ApiKeys),
    Basic(BasicUsers),
}

/// Why `check` did not let a request through.
enum Refusal {
    /// Answer with this cause.
    Cause(Cause),
    /// The token's key is unknown; a JWKS refetch may bring it.
    UnknownKey,
}

impl From<Cause> for Refusal {
    fn from(c: Cause) -> Self {
        Refusal::Cause(c)
    }
}

/// One listener's authentication.
#[derive(Debug)]
pub(crate) struct Auth {
    exempt: Vec<String>,
    pub method: Method,
}

// === impl Auth ===

impl Auth {
    /// Reads the key or secrets file the config names.
    pub fn load(listener: &str, cfg: &AuthConfig) -> Result<Self, FileError> {
        let method = match (&cfg.jwt, &cfg.api_key, &cfg.basic) {
            (Some(j), _, _) => Method::Jwt(Arc::new(JwtAuth::load(listener, j)?)),
            (_, Some(k), _) => Method::ApiKey(ApiKeys::load(listener, k)?),
            (_, _, Some(b)) => Method::Basic(BasicUsers::load(listener, b)?),
            // validate() ensures exactly one; none configured would mean no check at all.
            (None, None, None) => {
                return Err(FileError {
                    listener: listener.to_string(),
                    what: "auth",
                    path: Default::default(),
                    reason: "no method configured".into(),
                })
            }
        };
        Ok(Self {
            exempt: cfg
                .exempt_paths
                .iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect(),
            method,
        })
    }

    /// Whether `path` is under an exempt prefix, segment-wise.
    fn is_exempt(&self, path: &str) -> bool {
        self.exempt.iter().any(|p| {
            p.is_empty()
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// Checks the request's credentials, rewriting its headers for the app. With `refetch`,
    /// an unknown key is [`Refusal::UnknownKey`] (the caller refetches and calls again
    /// without), else a 401.
    fn check<B>(&self, req: &mut Request<B>, refetch: bool) -> Result<(), Refusal> {
        if let Method::Jwt(j) = &self.method {
            for (_, h) in j.forwarded_headers() {
                req.headers_mut().remove(h);
            }
        }
        if self.is_exempt(req.uri().path()) {
            return Ok(());
        }
        match &self.method {
            Method::ApiKey(k) => k
                .check(req.headers_mut())
                .then_some(())
                .ok_or(Cause::Unauthorized(Challenge::ApiKey).into()),
            Method::Basic(b) => b
                .check(req.headers_mut())
                .map(|_| ())
                .ok_or(Cause::Unauthorized(Challenge::Basic).into()),
            Method::Jwt(j) => {
                let token = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .ok_or(Cause::Unauthorized(Challenge::Bearer))?;
                let claims = j.verify(token).map_err(|r| match r {
                    Reject::UnknownKey(_) if refetch && j.refetches() => Refusal::UnknownKey,
                    Reject::Invalid(why) | Reject::UnknownKey(why) => {
                        tracing::debug!(reason = %why, "JWT refused");
                        Refusal::Cause(Cause::Unauthorized(Challenge::BearerInvalid))
                    }
                    Reject::MissingClaim(c) => {
                        tracing::debug!(claim = %c, "JWT lacks a required claim");
                        Refusal::Cause(Cause::Forbidden)
                    }
                })?;
                for (claim, h) in j.forwarded_headers() {
                    let value = claims
                        .0
                        .get(claim)
                        .map(claim_text)
                        .and_then(|t| HeaderValue::from_str(&t).ok());
                    if let (Some(v), Ok(name)) = (value, HeaderName::from_bytes(h.as_bytes())) {
                        req.headers_mut().insert(name, v);
                    }
                }
                req.extensions_mut().insert(claims);
                Ok(())
            }
        }
    }

    /// Checks the request's credentials, rewriting its headers for the app. A token whose
    /// key a JWKS URL may bring waits for one (rate-bounded) refetch and is checked again.
    pub(crate) async fn authorize<B>(&self, req: &mut Request<B>) -> Result<(), Cause> {
        match self.check(req, true) {
            Ok(()) => Ok(()),
            Err(Refusal::Cause(cause)) => Err(cause),
            Err(Refusal::UnknownKey) => {
                if let Method::Jwt(j) = &self.method {
                    j.fetch("unknown_kid").await;
                }
                match self.check(req, false) {
                    Ok(()) => Ok(()),
                    Err(Refusal::Cause(c)) => Err(c),
                    Err(Refusal::UnknownKey) => Err(Cause::Unauthorized(Challenge::BearerInvalid)),
                }
            }
        }
    }
}
