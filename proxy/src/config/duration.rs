//! Durations in config files: humantime text (`"250ms"`, `"1h 30m"`), bounded when loaded.
//!
//! Every `Duration` field of tandem's config (supervisor and proxy) goes through
//! `#[serde(with = "tandem_proxy::duration")]` (or `duration::option`), so a value such as
//! `"18446744073709551615s"` is refused where it is written, with the file, line and key the
//! loader gets from serde's span, instead of passing `tandem check` and overflowing later
//! when a deadline is computed (`Instant + Duration` panics on overflow).
//!
//! Invariant: a loaded duration is at most [`MAX`]; code that adds several of them may still
//! saturate, but never needs to check for overflow of one value against a clock.

use std::time::Duration;

use serde::{de, Deserializer, Serializer};

/// The longest duration a config key accepts: one year. No timeout, delay or interval of a
/// supervisor or proxy needs more, and a clock plus a few of these cannot overflow.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// `value` if it is at most [`MAX`], else a serde error that says so (the loader adds the
/// file, line and key).
fn bounded<E: de::Error>(value: Duration) -> Result<Duration, E> {
    if value > MAX {
        return Err(E::custom(
            "duration too long: at most 365days (1 year) is accepted",
        ));
    }
    Ok(value)
}

/// Parses a humantime duration and refuses one longer than [`MAX`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    bounded(value)
}

/// Writes the duration as humantime text (what `tandem check` prints).
pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    humantime_serde::serialize(value, s)
}

/// The same for an optional duration (absent: `None`).
pub mod option {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Parses an optional humantime duration and refuses one longer than [`super::MAX`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let value: Option<Duration> = humantime_serde::option::deserialize(d)?;
        value.map(super::bounded).transpose()
    }

    /// Writes the duration as humantime text, if any.
    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::option::serialize(value, s)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(with = "super")]
        d: Duration,
        #[serde(default, with = "super::option")]
        o: Option<Duration>,
    }

    fn parse(text: &str) -> Result<T, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_up_to_a_year() {
        let t = parse("d = \"250ms\"\no = \"365days\"").expect("valid");
        assert_eq!(t.d, Duration::from_millis(250));
        assert_eq!(t.o, Some(MAX));
        assert_eq!(parse("d = \"0s\"").expect("zero").d, Duration::ZERO);
    }

    #[test]
    fn refuses_longer_ones_with_a_reason() {
        for text in [
            "d = \"18446744073709551615s\"",
            "d = \"99999999999999h\"",
            "d = \"1s\"\no = \"366days\"",
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains("too long") && e.contains("365days"), "{e}");
        }
        // Past u64 seconds: humantime's own error, still an error.
        assert!(parse("d = \"99999999999999999999999s\"").is_err());
    }
}
