//! JWT bearer-token validation with keys from a JWKS file, re-read when it changes.
//!
//! Invariant: the key is chosen by the token's `kid` and the algorithms accepted are those of
//! that key's type only (RSA: RS*/PS*, EC: ES256/ES384 by curve, OKP: EdDSA, oct: HS*), so
//! `alg: none` (not an algorithm jsonwebtoken parses), HS256 signed with an RSA public key
//! (algorithm confusion) and an unknown `kid` never verify. All crypto is jsonwebtoken's (ring).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::JwtConfig;
use crate::error::FileError;

/// The claims of a verified token, carried in the request's extensions (the rate limiter
/// may key on one).
#[derive(Debug, Clone)]
pub(crate) struct Claims(pub Arc<Map<String, Value>>);

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The token does not verify (401); the reason is logged, never sent.
    Invalid(String),
    /// Valid, but a required claim is absent (403).
    MissingClaim(String),
}

struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys of one JWKS file.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Used when the token has no `kid` and the set has exactly one key.
    only: Option<Arc<Key>>,
}

/// One listener's JWT validator.
pub(crate) struct JwtAuth {
    listener: String,
    cfg: JwtConfig,
    keys: RwLock<Arc<KeySet>>,
    /// The file's bytes last tried, and why they failed if they did.
    tried: Mutex<(Vec<u8>, Option<FileError>)>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("listener", &self.listener)
            .field("jwks_file", &self.cfg.jwks_file)
            .finish()
    }
}

/// The algorithms a key may verify: its declared `alg`, else every one of its type.
fn algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    if let Some(a) = jwk
        .common
        .key_algorithm
        .and_then(|a| Algorithm::from_str(&a.to_string()).ok())
    {
        return vec![a];
    }
    use Algorithm::*;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        AlgorithmParameters::OctetKey(_) => vec![HS256, HS384, HS512],
    }
}

fn parse_jwks(bytes: &[u8]) -> Result<KeySet, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = KeySet::default();
    let n = set.keys.len();
    for (i, jwk) in set.keys.iter().enumerate() {
        let what = jwk.common.key_id.as_deref().unwrap_or("(no kid)");
        let decoding =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i} {what}: unusable: {e}"))?;
        let algorithms = algorithms(jwk);
        if algorithms.is_empty() {
            return Err(format!("key {i} {what}: unsupported curve"));
        }
        let key = Arc::new(Key {
            decoding,
            algorithms,
        });
        if let Some(kid) = &jwk.common.key_id {
            keys.by_kid.insert(kid.clone(), key.clone());
        }
        if n == 1 {
            keys.only = Some(key);
        }
    }
    if n == 0 {
        return Err("no keys".into());
    }
    Ok(keys)
}

// === impl JwtAuth ===

impl JwtAuth {
    /// Reads the JWKS file; an error names the listener and the file.
    pub fn load(listener: &str, cfg: &JwtConfig) -> Result<Self, FileError> {
        let auth = Self {
            listener: listener.to_string(),
            cfg: cfg.clone(),
            keys: RwLock::new(Arc::default()),
            tried: Mutex::new((Vec::new(), None)),
        };
        let bytes = auth.read()?;
        let keys = parse_jwks(&bytes).map_err(|r| auth.err(r))?;
        auth.install(keys);
        if let Ok(mut t) = auth.tried.lock() {
            t.0 = bytes;
        }
        Ok(auth)
    }

    fn err(&self, reason: impl ToString) -> FileError {
        FileError {
            listener: self.listener.clone(),
            what: "auth.jwt.jwks_file",
            path: self.cfg.jwks_file.clone(),
            reason: reason.to_string(),
        }
    }

    fn path(&self) -> &Path {
        &self.cfg.jwks_file
    }

    fn read(&self) -> Result<Vec<u8>, FileError> {
        std::fs::read(self.path()).map_err(|e| self.err(e))
    }

    fn install(&self, keys: KeySet) {
        match self.keys.write() {
            Ok(mut k) => *k = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the JWKS file; like [`crate::tls::TlsState::reload`], a bad file keeps the
    /// keys in use and is reported once per change (and on each `forced` reload).
    pub fn reload(&self, forced: bool) -> Result<bool, FileError> {
        let bytes = self.read()?;
        let mut tried = match self.tried.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if tried.0 == bytes {
            return match (&tried.1, forced) {
                (Some(e), true) => Err(e.clone()),
                _ => Ok(false),
            };
        }
        let parsed = parse_jwks(&bytes);
        tried.0 = bytes;
        match parsed {
            Ok(keys) => {
                tried.1 = None;
                self.install(keys);
                Ok(true)
            }
            Err(reason) => {
                let e = self.err(reason);
                tried.1 = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Reloads and logs the outcome; returns the error, if any.
    pub fn log_reload(&self, forced: bool) -> Option<FileError> {
        match self.reload(forced) {
            Ok(true) => {
                tracing::info!(listener = %self.listener, jwks = %self.path().display(), "JWKS reloaded");
                None
            }
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, "JWKS reload failed; keeping the keys in use");
                Some(e)
            }
        }
    }

    /// Polls the JWKS file every `reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => { self.log_reload(false); }
            }
        }
    }

    /// The header names claims are forwarded in (client copies are removed).
    pub fn forwarded_headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.cfg
            .forward_claims
            .iter()
            .map(|(c, h)| (c.as_str(), h.as_str()))
    }

    /// Verifies a compact JWS: key by `kid`, signature, `exp`/`nbf` with leeway, `iss`,
    /// `aud`, then the required claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Reject> {
        let invalid = |why: String| Reject::Invalid(why);
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("header: {e}")))?;
        let keys = self.current();
        let key = match &header.kid {
            Some(kid) => keys
                .by_kid
                .get(kid)
                .ok_or_else(|| invalid(format!("unknown kid {kid:?}")))?,
            None => keys
                .only
                .as_ref()
                .ok_or_else(|| invalid("no kid, and the JWKS has several keys".into()))?,
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "alg {:?} not allowed for this key",
                header.alg
            )));
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = key.algorithms.clone();
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_nbf = true;
        v.validate_exp = true;
        let mut required = vec!["exp"];
        if self.cfg.issuers.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&self.cfg.issuers);
            required.push("iss");
        }
        if self.cfg.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.cfg.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &v)
            .map_err(|e| invalid(e.to_string()))?;
        let claims = data.claims;
        if let Some(missing) = self
            .cfg
            .required_claims
            .iter()
            .find(|c| claims.get(c.as_str()).is_none_or(Value::is_null))
        {
            return Err(Reject::MissingClaim(missing.clone()));
        }
        Ok(Claims(Arc::new(claims)))
    }
}

/// A claim as a header value: strings as they are, anything else as JSON text.
pub(crate) fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}
