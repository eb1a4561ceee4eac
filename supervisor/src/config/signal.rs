//! Signal names in config and flags: `"SIGTERM"`, `"TERM"` and `"term"` all mean SIGTERM.
//!
//! Stored as nix's [`Signal`], serialized back in the canonical `SIGTERM` form so that
//! `tandem check` prints one spelling whatever the user wrote.
use std::{fmt, str::FromStr};

use nix::sys::signal::Signal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A signal named in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignalName(pub Signal);

impl FromStr for SignalName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        Signal::from_str(&name).map(SignalName).map_err(|_| {
            format!("unknown signal {s:?} (expected a name such as \"SIGTERM\" or \"HUP\")")
        })
    }
}

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl Serialize for SignalName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        for s in ["SIGTERM", "TERM", "term", " sigterm "] {
            assert_eq!(s.parse::<SignalName>().unwrap().0, Signal::SIGTERM);
        }
        assert!("SIGBOGUS".parse::<SignalName>().is_err());
        assert_eq!(SignalName(Signal::SIGQUIT).to_string(), "SIGQUIT");
    }
}
