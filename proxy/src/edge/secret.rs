//! Hashed secrets as the API-key and basic-auth files hold them: `sha256:<64 hex digits>`.
//!
//! Invariant: a presented secret is hashed (ring's SHA-256) and only digests are compared, in
//! time independent of where they differ; plaintext secrets are never stored or logged.
//! SHA-256 suits high-entropy keys; human passwords want a slow hash (not supported yet).

/// A SHA-256 digest of a secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Digest([u8; 32]);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(..)")
    }
}

// === impl Digest ===

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| "expected sha256:<64 hex digits>".to_string())?;
        if hex.len() != 64 {
            return Err("expected 64 hex digits after sha256:".into());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| "not a hex digit after sha256:".to_string())?;
        }
        Ok(Self(out))
    }

    /// The digest of a presented secret.
    pub fn of(secret: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, secret);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Equality without an early exit.
    pub fn matches(&self, other: &Digest) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Whether a presented secret equals the expected one, in time that depends on neither their
/// contents nor their lengths: both are hashed and the fixed-size digests compared without an
/// early exit (a length check first would tell an attacker the secret's length).
pub fn secrets_equal(presented: &[u8], expected: &[u8]) -> bool {
    Digest::of(presented).matches(&Digest::of(expected))
}

/// The meaningful lines of a secrets file: trimmed, without blanks and `#` comments, with
/// their 1-based line numbers.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        // sha256("secret")
        let d = Digest::parse(
            "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
        )
        .expect("valid");
        assert!(d.matches(&Digest::of(b"secret")));
        assert!(!d.matches(&Digest::of(b"Secret")));
        assert!(Digest::parse("2bb8").is_err());
        assert!(Digest::parse("sha256:zz").is_err());
    }

    #[test]
    fn secrets_equal_whatever_the_lengths() {
        assert!(secrets_equal(b"s3cret-admin-token", b"s3cret-admin-token"));
        assert!(!secrets_equal(b"s3cret-admin-token", b"s3cret-admin-tokem"));
        assert!(!secrets_equal(b"", b"s3cret-admin-token"));
        assert!(!secrets_equal(
            b"s3cret-admin-token-and-more",
            b"s3cret-admin-token"
        ));
    }
}
