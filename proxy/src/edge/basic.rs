//! HTTP basic auth (RFC 7617) against a file of `user:sha256:<hex>` lines.
//!
//! Invariant: an unknown user costs the same hash and comparison as a known one, and the
//! `Authorization` header is removed before the request reaches the app.

use std::collections::HashMap;

use base64::Engine as _;
use http::{header, HeaderMap};

use crate::config::BasicAuthConfig;
use crate::edge::secret::{self, Digest};
use crate::error::FileError;

/// One listener's users.
#[derive(Debug)]
pub(crate) struct BasicUsers {
    users: HashMap<String, Digest>,
}

// === impl BasicUsers ===

impl BasicUsers {
    /// Reads the users file; an error names the listener, the file and the line.
    pub fn load(listener: &str, cfg: &BasicAuthConfig) -> Result<Self, FileError> {
        let err = |reason: String| FileError {
            listener: listener.to_string(),
            what: "auth.basic.users_file",
            path: cfg.users_file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&cfg.users_file).map_err(|e| err(e.to_string()))?;
        let mut users = HashMap::new();
        for (n, line) in secret::lines(&text) {
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err(format!("line {n}: expected user:sha256:<hex>")))?;
            let d = Digest::parse(hash).map_err(|r| err(format!("line {n}: {r}")))?;
            users.insert(user.to_string(), d);
        }
        if users.is_empty() {
            return Err(err("no users".into()));
        }
        Ok(Self { users })
    }

    /// The user, if the request carries valid basic credentials; the header is removed.
    pub fn check(&self, headers: &mut HeaderMap) -> Option<String> {
        let value = headers.remove(header::AUTHORIZATION)?;
        let encoded = value.to_str().ok()?.strip_prefix("Basic ")?.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        let presented = Digest::of(password.as_bytes());
        let unknown = Digest::of(b"");
        let expected = self.users.get(user);
        let ok = presented.matches(expected.unwrap_or(&unknown));
        (ok && expected.is_some()).then(|| user.to_string())
    }
}
