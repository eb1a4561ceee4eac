//! Static API keys: the client sends its key in a header; the keys file holds SHA-256 hashes,
//! one per line (`sha256:<hex>`, optionally after a name: `billing sha256:<hex>`).
//!
//! Invariant: the key header is removed before the request reaches the app, so the app (and
//! its logs) never see a credential tandem already checked.

use http::{HeaderMap, HeaderName};

use crate::config::ApiKeyConfig;
use crate::edge::secret::{self, Digest};
use crate::error::FileError;

/// One listener's API keys.
#[derive(Debug)]
pub(crate) struct ApiKeys {
    pub header: HeaderName,
    keys: Vec<Digest>,
}

// === impl ApiKeys ===

impl ApiKeys {
    /// Reads the keys file; an error names the listener, the file and the line.
    pub fn load(listener: &str, cfg: &ApiKeyConfig) -> Result<Self, FileError> {
        let err = |reason: String| FileError {
            listener: listener.to_string(),
            what: "auth.api_key.keys_file",
            path: cfg.keys_file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&cfg.keys_file).map_err(|e| err(e.to_string()))?;
        let mut keys = Vec::new();
        for (n, line) in secret::lines(&text) {
            let hash = line.split_whitespace().last().unwrap_or(line);
            keys.push(Digest::parse(hash).map_err(|r| err(format!("line {n}: {r}")))?);
        }
        if keys.is_empty() {
            return Err(err("no keys".into()));
        }
        let header = HeaderName::from_bytes(cfg.header.as_bytes())
            .map_err(|_| err(format!("{:?} is not a header name", cfg.header)))?;
        Ok(Self { header, keys })
    }

    /// Whether the request carries a listed key; the header is removed either way.
    pub fn check(&self, headers: &mut HeaderMap) -> bool {
        let Some(presented) = headers.remove(&self.header) else {
            return false;
        };
        let d = Digest::of(presented.as_bytes());
        // Every key is compared, so timing does not tell which one nearly matched.
        self.keys.iter().fold(false, |ok, k| k.matches(&d) | ok)
    }
}
