//! The one config error: what is wrong, with the key and where its value came from.
//!
//! Displayed `file:line: key: message` for a value from a file; `TANDEM_X: key: message` for
//! one from a variable, `--set a.b: message` from a flag that names its key; `key: message` for
//! a default or a variable outside the config (`OTEL_*`). An error found while checking the
//! merged config (a bad pattern, an unreadable token file, an address that does not parse) gets
//! its place from the loader's record of where each key was set
//! ([`Origins::locate`](super::Origins::locate)), so it reads like an error found while
//! parsing the file.
use std::{fmt, path::PathBuf};

/// A config that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the value came from, when it came from one.
    pub file: Option<PathBuf>,
    /// The 1-based line of `key` in `file`, when known.
    pub line: Option<usize>,
    /// The dotted key (`logs.stdout.multiline.start`), or the variable outside the config the
    /// value came from (`OTEL_EXPORTER_OTLP_HEADERS`); empty when the error is about no one key
    /// (an unreadable file, an include cycle).
    pub key: String,
    /// The variable or flag that set `key`, when not a file: `TANDEM_ADMIN_LISTEN`,
    /// `--set admin.listen`.
    pub via: Option<String>,
    /// What is wrong.
    pub message: String,
}

// === impl ConfigError ===

impl ConfigError {
    /// An error about `key`, its place not known yet (see [`super::Origins::locate`]).
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            key: key.into(),
            via: None,
            message: message.into(),
        }
    }

    /// An error about a whole file (unreadable, an include cycle).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: Some(file.into()),
            ..Self::key("", message)
        }
    }

    /// An error about a value given by a variable or flag (`via`).
    pub fn via(via: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            via: Some(via.into()),
            ..Self::key(key, message)
        }
    }

    /// The same error about `key`.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// A message of the `key: message` form that checks written before this type used
    /// (`telemetry.protocol: ...`, `OTEL_SDK_DISABLED: ...`), split into key and message; a
    /// message that does not start with a key is kept whole.
    pub fn keyed(text: &str) -> Self {
        match text.split_once(": ") {
            Some((key, message)) if looks_like_key(key) => Self::key(key, message),
            _ => Self::key("", text),
        }
    }
}

/// A dotted config key (`a.b_c`, `proxy.listeners[0]`) or a variable (`OTEL_X`).
fn looks_like_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '[' | ']'))
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `--set a.b` names its key already: not `--set a.b: a.b: ...`.
        let mut key = (!self.key.is_empty()).then_some(self.key.as_str());
        match (&self.file, self.line, &self.via) {
            (Some(file), Some(line), _) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None, _) => write!(f, "{}: ", file.display())?,
            (None, _, Some(via)) => {
                write!(f, "{via}: ")?;
                if key.is_some_and(|k| via == k || via.ends_with(&format!(" {k}"))) {
                    key = None;
                }
            }
            (None, _, None) => {}
        }
        if let Some(key) = key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_place_then_the_key() {
        let mut e = ConfigError::key("admin.listen", "bad");
        assert_eq!(e.to_string(), "admin.listen: bad");
        e.file = Some("/etc/t.toml".into());
        e.line = Some(3);
        assert_eq!(e.to_string(), "/etc/t.toml:3: admin.listen: bad");
        let e = ConfigError::via("TANDEM_ADMIN_LISTEN", "admin.listen", "bad");
        assert_eq!(e.to_string(), "TANDEM_ADMIN_LISTEN: admin.listen: bad");
        let e = ConfigError::via("--set admin.listen", "admin.listen", "bad");
        assert_eq!(e.to_string(), "--set admin.listen: bad");
        assert_eq!(
            ConfigError::keyed("OTEL_SDK_DISABLED: \"x\" is not true or false").key,
            "OTEL_SDK_DISABLED"
        );
        assert_eq!(ConfigError::keyed("no command to run: give one").key, "");
    }
}
