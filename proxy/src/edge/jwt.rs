//! JWT bearer-token validation with keys from a JWKS file (re-read when it changes) or a JWKS
//! URL (fetched at start, refreshed periodically, refetched on an unknown `kid`).
//!
//! Rate bound: one fetch in flight at a time (the others wait for it); scheduled fetches
//! (start, refresh, retry after a failure) are at least `min_refetch_interval` apart, and so
//! are fetches for unknown `kid`s, whatever the number of such tokens. A failed fetch keeps
//! the keys in use.
//!
//! Invariant: the key is chosen by the token's `kid` and the algorithms accepted are those of
//! that key's type only (RSA: RS*/PS*, EC: ES256/ES384 by curve, OKP: EdDSA, oct: HS*), so
//! `alg: none` (not an algorithm jsonwebtoken parses), HS256 signed with an RSA public key
//! (algorithm confusion) and an unknown `kid` never verify. All crypto is jsonwebtoken's (ring).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::jwks_url::JwksUrl;
use crate::config::JwtConfig;
use crate::edge::jwks_url::JwksClient;
use crate::error::FileError;
use crate::obs::metrics::ListenerMetrics;

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
    /// No key for this token (unknown `kid`, or no key at all): a URL source may have it
    /// after a refetch.
    UnknownKey(String),
}

struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys of one JWKS.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Used when the token has no `kid` and the set has exactly one key.
    only: Option<Arc<Key>>,
    len: usize,
}

/// Where the keys come from.
enum Source {
    /// The file, and its bytes last tried with why they failed if they did.
    File {
        path: PathBuf,
        tried: Mutex<(Vec<u8>, Option<FileError>)>,
    },
    Url(UrlSource),
}

/// A JWKS URL's fetch state.
struct UrlSource {
    client: JwksClient,
    /// Held while a fetch runs (one at a time); holds when the last fetch for an unknown
    /// `kid` started.
    gate: tokio::sync::Mutex<Option<Instant>>,
    /// The wait before the next periodic refresh (the server's max-age, bounded).
    next_refresh: Mutex<Duration>,
    /// Fetches and failures before the metrics were attached (the first fetch runs at bind).
    pending: [AtomicU64; 2],
    /// `tandem_proxy_jwks_fetches_total` and `..._failures_total` of this listener.
    counters: OnceLock<[Counter; 2]>,
}

/// One listener's JWT validator.
pub(crate) struct JwtAuth {
    listener: String,
    cfg: JwtConfig,
    keys: RwLock<Arc<KeySet>>,
    source: Source,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("JwtAuth");
        d.field("listener", &self.listener);
        match &self.source {
            Source::File { path, .. } => d.field("jwks_file", path),
            Source::Url(u) => d.field("jwks_url", &u.client.url),
        };
        d.finish()
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
    let n = set.keys.len();
    let mut keys = KeySet {
        len: n,
        ..KeySet::default()
    };
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
    /// Reads the JWKS file, or prepares the URL's client (its CA file is read now; the first
    /// fetch is [`JwtAuth::prefetch`]); an error names the listener and the file or key.
    pub fn load(listener: &str, cfg: &JwtConfig) -> Result<Self, FileError> {
        let err = |what, path: PathBuf, reason: String| FileError {
            listener: listener.to_string(),
            what,
            path,
            reason,
        };
        let source = match (&cfg.jwks_url, &cfg.jwks_file) {
            (Some(url), _) => {
                let url =
                    JwksUrl::parse(url).map_err(|r| err("auth.jwt.jwks_url", PathBuf::new(), r))?;
                let client = JwksClient::new(url, cfg.jwks_ca_file.as_deref(), cfg.fetch_timeout)
                    .map_err(|(path, r)| err("auth.jwt.jwks_ca_file", path, r))?;
                Source::Url(UrlSource {
                    client,
                    gate: tokio::sync::Mutex::new(None),
                    next_refresh: Mutex::new(cfg.refresh_interval),
                    pending: [AtomicU64::new(0), AtomicU64::new(0)],
                    counters: OnceLock::new(),
                })
            }
            (None, Some(path)) => Source::File {
                path: path.clone(),
                tried: Mutex::new((Vec::new(), None)),
            },
            (None, None) => {
                return Err(err(
                    "auth.jwt",
                    PathBuf::new(),
                    "set auth.jwt.jwks_file or auth.jwt.jwks_url".into(),
                ))
            }
        };
        let auth = Self {
            listener: listener.to_string(),
            cfg: cfg.clone(),
            keys: RwLock::new(Arc::default()),
            source,
        };
        if let Source::File { tried, .. } = &auth.source {
            let bytes = auth.read()?;
            let keys = parse_jwks(&bytes).map_err(|r| auth.err(r))?;
            auth.install(keys);
            if let Ok(mut t) = tried.lock() {
                t.0 = bytes;
            }
        }
        Ok(auth)
    }

    fn err(&self, reason: impl ToString) -> FileError {
        FileError {
            listener: self.listener.clone(),
            what: "auth.jwt.jwks_file",
            path: self.path().to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn path(&self) -> &Path {
        match &self.source {
            Source::File { path, .. } => path,
            Source::Url(_) => Path::new(""),
        }
    }

    fn read(&self) -> Result<Vec<u8>, FileError> {
        std::fs::read(self.path()).map_err(|e| self.err(e))
    }

    /// Whether keys come from a URL (and an unknown `kid` may be worth a refetch).
    pub fn refetches(&self) -> bool {
        matches!(self.source, Source::Url(_))
    }

    /// Counts fetches and failures on /metrics from now on (and those before).
    pub fn attach_metrics(&self, m: &ListenerMetrics) {
        if let Source::Url(u) = &self.source {
            let counters = m.jwks_counters();
            for (c, p) in counters.iter().zip(&u.pending) {
                c.inc_by(p.swap(0, Ordering::AcqRel));
            }
            let _ = u.counters.set(counters);
        }
    }

    /// The first fetch of a URL source, at bind: a failure is logged and counted, and the
    /// listener starts with no keys (every token gets 401) until a fetch succeeds.
    pub async fn prefetch(&self) {
        self.fetch("start").await;
    }

    /// Fetches the URL's JWKS now, after any fetch in flight. For an `unknown_kid`, only if
    /// the last such fetch started `min_refetch_interval` ago or more (else nothing: the
    /// caller checks again with the keys that are in force). A good answer replaces the keys;
    /// a failure keeps them. Returns whether new keys are in force.
    pub async fn fetch(&self, why: &'static str) -> bool {
        let Source::Url(u) = &self.source else {
            return false;
        };
        let mut last = u.gate.lock().await;
        if why == "unknown_kid" {
            if last.is_some_and(|t| t.elapsed() < self.cfg.min_refetch_interval) {
                return false;
            }
            *last = Some(Instant::now());
        }
        u.count(0);
        let url = u.client.url.redacted();
        let fetched = u.client.fetch().await.and_then(|f| {
            parse_jwks(&f.body)
                .map(|k| (k, f.max_age))
                .map_err(|e| format!("answer: {e}"))
        });
        match fetched {
            Ok((keys, max_age)) => {
                let next = max_age
                    .unwrap_or(self.cfg.refresh_interval)
                    .clamp(self.cfg.min_refetch_interval, self.cfg.refresh_interval);
                tracing::info!(
                    event = "jwks_fetched",
                    listener = %self.listener,
                    url = %url,
                    keys = keys.len,
                    reason = why,
                    next_refresh_s = next.as_secs(),
                    "JWKS fetched"
                );
                self.install(keys);
                if let Ok(mut n) = u.next_refresh.lock() {
                    *n = next;
                }
                true
            }
            Err(e) => {
                u.count(1);
                tracing::warn!(
                    event = "jwks_fetch_failed",
                    listener = %self.listener,
                    url = %url,
                    reason = why,
                    error = %e,
                    "JWKS fetch failed; keeping the keys in use"
                );
                if let Ok(mut n) = u.next_refresh.lock() {
                    *n = self.cfg.min_refetch_interval;
                }
                false
            }
        }
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

    /// Re-reads the JWKS file; like [`crate::edge::tls::TlsState::reload`], a bad file keeps the
    /// keys in use and is reported once per change (and on each `forced` reload).
    pub fn reload(&self, forced: bool) -> Result<bool, FileError> {
        let Source::File { tried, .. } = &self.source else {
            // A URL source refreshes on its own schedule.
            return Ok(false);
        };
        let bytes = self.read()?;
        let mut tried = match tried.lock() {
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

    /// Polls the JWKS file every `reload_interval`, or refreshes the URL's JWKS when due,
    /// until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        if let Source::Url(u) = &self.source {
            loop {
                let wait = u
                    .next_refresh
                    .lock()
                    .map_or(self.cfg.refresh_interval, |n| *n);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => { self.fetch("refresh").await; }
                }
            }
        }
        let interval = self.cfg.reload_interval;
        crate::edge::poll_every(interval, stop, || {
            self.log_reload(false);
        })
        .await;
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
                .ok_or_else(|| Reject::UnknownKey(format!("unknown kid {kid:?}")))?,
            None if keys.len == 0 => return Err(Reject::UnknownKey("no keys yet".into())),
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

// === impl UrlSource ===

impl UrlSource {
    /// Counts a fetch (0) or a failure (1), on /metrics once attached.
    fn count(&self, which: usize) {
        match self.counters.get() {
            Some(c) => {
                c[which].inc();
            }
            None => {
                self.pending[which].fetch_add(1, Ordering::AcqRel);
            }
        }
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
