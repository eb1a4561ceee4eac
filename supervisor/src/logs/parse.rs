//! Parsing: a line's text becomes message, level, timestamp, trace context and fields.
//!
//! Invariant: parsing never loses the line. Whatever does not parse stays the message (with
//! `parse_error` set when the line claimed to be JSON or logfmt), and a recognised key whose
//! value cannot be interpreted (a level named "banana", a timestamp that is not one) stays in
//! `fields` untouched.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::config::ParseFormat;
use super::logfmt;
use super::record::{Level, Record};

const LEVEL_KEYS: &[&str] = &["level", "severity", "lvl", "levelname", "log.level"];
const MSG_KEYS: &[&str] = &["msg", "message"];
const TIME_KEYS: &[&str] = &["time", "ts", "timestamp", "@timestamp"];
const TRACE_KEYS: &[&str] = &["trace_id", "traceId", "trace.id"];
const SPAN_KEYS: &[&str] = &["span_id", "spanId", "span.id"];

/// Parse `record.msg` (the raw text) in place. Returns false on a parse failure.
pub fn parse_into(format: ParseFormat, record: &mut Record) -> bool {
    let text = record.msg.as_str();
    let ok = match format {
        ParseFormat::Plain => return true,
        ParseFormat::Json => json(text).map(|m| apply(m, record)).is_some(),
        ParseFormat::Logfmt => logfmt_map(text, false).map(|m| apply(m, record)).is_some(),
        ParseFormat::Auto => {
            let t = text.trim_start();
            if t.starts_with('{') {
                json(text).map(|m| apply(m, record)).is_some()
            } else {
                // A guess: a line that is not logfmt is plain text, not a failure.
                if memchr::memchr(b'=', text.as_bytes()).is_some() {
                    if let Some(m) = logfmt_map(text, true) {
                        apply(m, record);
                    }
                }
                true
            }
        }
    };
    if !ok {
        record.parse_error = true;
    }
    ok
}

fn json(text: &str) -> Option<Map<String, Value>> {
    serde_json::from_str::<Map<String, Value>>(text).ok()
}

/// logfmt pairs as a JSON map. With `strict_guess`, demand what makes a guess safe: every token
/// a `key=value` pair, and two pairs or a recognised key.
fn logfmt_map(text: &str, strict_guess: bool) -> Option<Map<String, Value>> {
    let pairs = logfmt::tokenize(text)?;
    if pairs.is_empty() {
        return None;
    }
    if strict_guess {
        let all_valued = pairs.iter().all(|p| p.value.is_some());
        let known = pairs
            .iter()
            .any(|p| LEVEL_KEYS.contains(&p.key.as_str()) || MSG_KEYS.contains(&p.key.as_str()));
        if !all_valued || (pairs.len() < 2 && !known) {
            return None;
        }
    }
    let mut map = Map::new();
    for p in pairs {
        map.insert(p.key, p.value.map_or(Value::Bool(true), Value::String));
    }
    Some(map)
}

/// Move recognised keys out of `map` into the record; the rest become `fields`.
fn apply(mut map: Map<String, Value>, record: &mut Record) {
    if let Some(level) = take(&mut map, LEVEL_KEYS, level_of) {
        record.level = level;
    }
    record.msg = take(&mut map, MSG_KEYS, |v| v.as_str().map(str::to_string)).unwrap_or_default();
    record.time = take(&mut map, TIME_KEYS, time_of);
    if let Some((t, s)) = take(&mut map, &["traceparent"], |v| {
        v.as_str().and_then(traceparent)
    }) {
        record.trace_id = Some(t);
        record.span_id = Some(s);
    }
    if let Some(t) = take(&mut map, TRACE_KEYS, |v| hex_id(v, 32)) {
        record.trace_id = Some(t);
    }
    if let Some(s) = take(&mut map, SPAN_KEYS, |v| hex_id(v, 16)) {
        record.span_id = Some(s);
    }
    record.fields = (!map.is_empty()).then(|| Box::new(map));
}

/// Remove the first of `keys` whose value `f` accepts.
fn take<T>(
    map: &mut Map<String, Value>,
    keys: &[&str],
    f: impl Fn(&Value) -> Option<T>,
) -> Option<T> {
    for k in keys {
        if let Some(out) = map.get(*k).and_then(&f) {
            map.remove(*k);
            return Some(out);
        }
    }
    None
}

fn level_of(v: &Value) -> Option<Level> {
    match v {
        Value::String(s) => Level::from_name(s),
        Value::Number(n) => n.as_f64().and_then(Level::from_number),
        _ => None,
    }
}

/// RFC 3339 (any offset), or a number of seconds/milliseconds/microseconds/nanoseconds since
/// the epoch (told apart by magnitude, as zap, pino and others write them).
pub fn time_of(v: &Value) -> Option<SystemTime> {
    match v {
        Value::String(s) => {
            if let Ok(t) =
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            {
                return Some(t.into());
            }
            humantime::parse_rfc3339_weak(s).ok()
        }
        Value::Number(n) => {
            let x = n.as_f64()?;
            if !x.is_finite() || x <= 0.0 {
                return None;
            }
            let secs = if x < 1e11 {
                x
            } else if x < 1e14 {
                x / 1e3
            } else if x < 1e17 {
                x / 1e6
            } else {
                x / 1e9
            };
            // Beyond year 9999 is not a timestamp.
            (secs < 253_402_300_800.0)
                .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
        }
        _ => None,
    }
}

/// `00-<trace>-<span>-<flags>` (W3C Trace Context).
fn traceparent(s: &str) -> Option<(String, String)> {
    let mut it = s.trim().split('-');
    let (_ver, trace, span, _flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let ok = |x: &str, n| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(trace, 32) && ok(span, 16)).then(|| (trace.to_ascii_lowercase(), span.to_ascii_lowercase()))
}

fn hex_id(v: &Value, len: usize) -> Option<String> {
    let s = v.as_str()?;
    (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::logs::record::{Origin, Stream};

    fn rec(text: &str) -> Record {
        let origin = Arc::new(Origin {
            service: "t".into(),
            pid: None,
            restart_count: 0,
            resource_json: "{}".into(),
        });
        Record::new(
            SystemTime::now(),
            Stream::Stdout,
            Level::Info,
            text.into(),
            origin,
        )
    }

    fn parsed(format: ParseFormat, text: &str) -> (bool, Record) {
        let mut r = rec(text);
        let ok = parse_into(format, &mut r);
        (ok, r)
    }

    #[test]
    fn json_keeps_fields_and_recognises_keys() {
        let (ok, r) = parsed(
            ParseFormat::Auto,
            r#"{"level":"error","msg":"db down","ts":"2024-05-01T12:00:00.5+02:00","trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736","span_id":"00f067aa0ba902b7","user":{"id":7},"retries":3}"#,
        );
        assert!(ok && !r.parse_error);
        assert_eq!(r.level, Level::Error);
        assert_eq!(r.msg, "db down");
        let t = r.time.expect("time parsed");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch")
                .as_millis(),
            1_714_557_600_500
        );
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(r.span_id.as_deref(), Some("00f067aa0ba902b7"));
        let f = r.fields.expect("fields kept");
        assert_eq!(f["user"]["id"], 7);
        assert_eq!(f["retries"], 3);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn pino_numbers_and_traceparent() {
        let (_, r) = parsed(
            ParseFormat::Json,
            r#"{"level":50,"time":1714557600500,"message":"x","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#,
        );
        assert_eq!(r.level, Level::Error);
        assert_eq!(
            r.time,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_557_600_500))
        );
        assert_eq!(r.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(r.fields.is_none());
    }

    #[test]
    fn uninterpretable_known_keys_stay_fields() {
        let (_, r) = parsed(
            ParseFormat::Json,
            r#"{"level":"banana","time":"yesterday","msg":5}"#,
        );
        assert_eq!(r.level, Level::Info);
        assert_eq!(r.time, None);
        assert_eq!(r.msg, "");
        assert_eq!(r.fields.expect("kept").len(), 3);
    }

    #[test]
    fn logfmt_in_auto_and_strict() {
        let (_, r) = parsed(
            ParseFormat::Auto,
            r#"time=2024-05-01T10:00:00Z level=warn msg="disk 91% full" path=/var"#,
        );
        assert_eq!(r.level, Level::Warn);
        assert_eq!(r.msg, "disk 91% full");
        assert!(r.time.is_some());
        assert_eq!(r.fields.expect("kept")["path"], "/var");
        // Prose with an `=` stays plain in auto mode, without a parse error.
        let (ok, r) = parsed(ParseFormat::Auto, "computed x=5 for user bob");
        assert!(ok && !r.parse_error);
        assert_eq!(r.msg, "computed x=5 for user bob");
        // In logfmt mode, a stray quote is a failure and the line is kept.
        let (ok, r) = parsed(ParseFormat::Logfmt, r#"say "hi""#);
        assert!(!ok && r.parse_error);
        assert_eq!(r.msg, r#"say "hi""#);
    }

    #[test]
    fn broken_json_is_kept_and_flagged() {
        let (ok, r) = parsed(ParseFormat::Auto, r#"{"level":"info", oops"#);
        assert!(!ok && r.parse_error);
        assert_eq!(r.msg, r#"{"level":"info", oops"#);
        let (ok, r) = parsed(ParseFormat::Plain, r#"{"level":"error"}"#);
        assert!(ok && r.fields.is_none() && r.level == Level::Info);
    }
}
