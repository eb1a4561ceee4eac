//! The standard `OTEL_*` environment variables, read one way for tandem's own export and for
//! the pass-through's upstream: a value is trimmed and an empty one is unset; a signal's own
//! `OTEL_EXPORTER_OTLP_{TRACES,LOGS,METRICS}_X` beats the general `OTEL_EXPORTER_OTLP_X`; the
//! list variables (`..._HEADERS`, `OTEL_RESOURCE_ATTRIBUTES`) are `k1=v1,k2=v2` with
//! percent-encoded values.
//!
//! What this module does not decide: whether a variable beats a config key. tandem's own
//! export lets the environment win over `[telemetry]` (as `TANDEM_*` beats files); the
//! pass-through lets `[telemetry.passthrough]` win over the environment. Each caller states its
//! own order; every error names the variable it came from.
use std::time::Duration;

/// A value that cannot be used, named by where it came from: an `OTEL_*` variable or a config
/// key (`telemetry.protocol`), so the config check can place it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {message}")]
pub struct BadValue {
    /// The variable or dotted key.
    pub name: String,
    /// What is wrong with its value.
    pub message: String,
}

impl BadValue {
    /// `name`'s value is wrong: `message`.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// A variable that was found: its name (for error messages) and trimmed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The variable's name, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub name: String,
    /// Its value, trimmed, never empty.
    pub value: String,
    /// Whether it was the signal's own form (`..._TRACES_...`) rather than the general one.
    pub specific: bool,
}

/// A variable's value by name (the process's environment, or a test's).
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// One process environment, as a lookup.
pub struct OtelEnv<'a> {
    lookup: Lookup<'a>,
}

// === impl OtelEnv ===

impl<'a> OtelEnv<'a> {
    /// The variables `lookup` answers for.
    pub fn new(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self {
            lookup: Box::new(lookup),
        }
    }

    /// A variable's trimmed value; None when unset or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// `OTEL_EXPORTER_OTLP_{what}`.
    pub fn general(&self, what: &str) -> Option<Found> {
        self.found(format!("OTEL_EXPORTER_OTLP_{what}"), false)
    }

    /// `OTEL_EXPORTER_OTLP_{signal}_{what}`; `signal` is `TRACES`, `LOGS` or `METRICS`.
    pub fn specific(&self, signal: &str, what: &str) -> Option<Found> {
        self.found(format!("OTEL_EXPORTER_OTLP_{signal}_{what}"), true)
    }

    /// The signal's own variable, else the general one.
    pub fn exporter(&self, signal: &str, what: &str) -> Option<Found> {
        self.specific(signal, what).or_else(|| self.general(what))
    }

    fn found(&self, name: String, specific: bool) -> Option<Found> {
        let value = self.get(&name)?;
        Some(Found {
            name,
            value,
            specific,
        })
    }
}

/// `k1=v1,k2=v2` with percent-encoded values (W3C Baggage style), as the `OTEL_*` lists are.
pub fn key_values(s: &str, var: &str) -> Result<Vec<(String, String)>, BadValue> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| BadValue::new(var, format!("{pair:?} is not key=value")))?;
        let k = percent_decode(k.trim());
        if k.is_empty() {
            return Err(BadValue::new(var, format!("{pair:?} has an empty key")));
        }
        out.push((k, percent_decode(v.trim())));
    }
    Ok(out)
}

/// A duration in milliseconds, as the `OTEL_*` timeouts and intervals are given.
pub fn millis(v: &str, var: &str) -> Result<Duration, BadValue> {
    v.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| BadValue::new(var, format!("{v:?} is not a number of milliseconds")))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let d = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (d(b[i + 1]), d(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_signal_beats_the_general_variable_and_empty_is_unset() {
        let vars = BTreeMap::from([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", " http://all:4318 "),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9/x"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "  "),
        ]);
        let env = OtelEnv::new(|k| vars.get(k).map(|v| v.to_string()));
        let logs = env.exporter("LOGS", "ENDPOINT").expect("set");
        assert_eq!(logs.name, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT");
        assert!(logs.specific);
        let traces = env.exporter("TRACES", "ENDPOINT").expect("general");
        assert_eq!(traces.value, "http://all:4318");
        assert!(!traces.specific);
        assert_eq!(env.exporter("TRACES", "HEADERS"), None);
    }

    #[test]
    fn lists_are_percent_decoded() {
        assert_eq!(
            key_values("api-key=a%20b, x=1,,", "V").expect("valid"),
            [("api-key".into(), "a b".into()), ("x".into(), "1".into())]
        );
        assert_eq!(key_values("novalue", "V").unwrap_err().name, "V");
        assert!(key_values("=v", "V").is_err());
        assert_eq!(millis("250", "T"), Ok(Duration::from_millis(250)));
        assert!(millis("10s", "T").is_err());
    }
}
