//! Parsing: a line's text becomes message, level, timestamp, trace context and fields.
//!
//! Invariant: parsing never loses the line. Whatever does not parse stays the message (with
//! `parse_error` set when the line claimed to be JSON or logfmt), and a recognised key whose
//! value cannot be interpreted (a level named "banana", a timestamp that is not one) stays in
//! `fields` untouched.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tandem_trace_context::Traceparent;

use super::config::ParseFormat;
use super::logfmt;
use super::record::{Fields, Level, Record};

const LEVEL_KEYS: &[&str] = &["level", "severity", "lvl", "levelname", "log.level"];
const MSG_KEYS: &[&str] = &["msg", "message"];
const TIME_KEYS: &[&str] = &["time", "ts", "timestamp", "@timestamp"];
const TRACE_KEYS: &[&str] = &["trace_id", "traceId", "trace.id"];
const SPAN_KEYS: &[&str] = &["span_id", "spanId", "span.id"];

/// Parse `record.msg` (the raw text) in place. Returns false on a parse failure.
pub fn parse_into(format: ParseFormat, record: &mut Record) -> bool {
    let text = std::mem::take(&mut record.msg);
    let entries = match format {
        ParseFormat::Plain => None,
        ParseFormat::Json => Some(json(&text)),
        ParseFormat::Logfmt => Some(logfmt_entries(&text, false)),
        ParseFormat::Auto if text.trim_start().starts_with('{') => Some(json(&text)),
        // A guess: a line that is not logfmt is plain text, not a failure.
        ParseFormat::Auto if memchr::memchr(b'=', text.as_bytes()).is_some() => {
            logfmt_entries(&text, true).map(Some)
        }
        ParseFormat::Auto => None,
    };
    match entries {
        None => {
            record.msg = text;
            true
        }
        Some(Some(mut e)) => {
            apply(&mut e, record);
            true
        }
        Some(None) => {
            record.msg = text;
            record.parse_error = true;
            false
        }
    }
}

/// One key of a structured line and its value as written.
struct Entry<'a> {
    key: Cow<'a, str>,
    val: Val<'a>,
    used: bool,
}

enum Val<'a> {
    /// A JSON value, exactly as it appeared in the line.
    Json(&'a RawValue),
    /// A logfmt value (always a string).
    Str(Cow<'a, str>),
    /// A logfmt key without `=` (a flag: true).
    Bare,
}

/// What the recognisers look at: a value's string or number, if it is one.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Other,
}

/// A JSON object's entries, keys and values borrowed from the line where possible.
struct Object<'a>(Vec<Entry<'a>>);

#[derive(serde::Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(key), raw)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    entries.push(Entry {
                        key,
                        val: Val::Json(raw),
                        used: false,
                    });
                }
                Ok(Object(entries))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

fn json(text: &str) -> Option<Vec<Entry<'_>>> {
    serde_json::from_str::<Object<'_>>(text).ok().map(|o| o.0)
}

/// logfmt pairs as entries. With `strict_guess`, demand what makes a guess safe: every token
/// a `key=value` pair, and two pairs or a recognised key.
fn logfmt_entries(text: &str, strict_guess: bool) -> Option<Vec<Entry<'_>>> {
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
    Some(
        pairs
            .into_iter()
            .map(|p| Entry {
                key: Cow::Owned(p.key),
                val: p.value.map_or(Val::Bare, |v| Val::Str(Cow::Owned(v))),
                used: false,
            })
            .collect(),
    )
}

/// Move recognised keys into the record; the rest become `fields`.
fn apply(entries: &mut [Entry<'_>], record: &mut Record) {
    if let Some(level) = take(entries, LEVEL_KEYS, level_of) {
        record.level = level;
    }
    record.msg = take(entries, MSG_KEYS, |v| match v {
        Scalar::Str(s) => Some(s.into_owned()),
        _ => None,
    })
    .unwrap_or_default();
    record.time = take(entries, TIME_KEYS, time_of);
    if let Some((t, s)) = take(entries, &["traceparent"], |v| match v {
        Scalar::Str(s) => traceparent(&s),
        _ => None,
    }) {
        record.trace_id = Some(t);
        record.span_id = Some(s);
    }
    if let Some(t) = take(entries, TRACE_KEYS, |v| hex_id(v, 32)) {
        record.trace_id = Some(t);
    }
    if let Some(s) = take(entries, SPAN_KEYS, |v| hex_id(v, 16)) {
        record.span_id = Some(s);
    }
    record.fields = fields(entries);
}

/// Mark the first of `keys` (in that order of preference) whose value `f` accepts as used.
fn take<T>(
    entries: &mut [Entry<'_>],
    keys: &[&str],
    f: impl Fn(Scalar<'_>) -> Option<T>,
) -> Option<T> {
    for k in keys {
        for e in entries.iter_mut().filter(|e| !e.used && e.key == *k) {
            if let Some(out) = f(scalar(&e.val)) {
                e.used = true;
                return Some(out);
            }
        }
    }
    None
}

fn scalar<'a>(v: &Val<'a>) -> Scalar<'a> {
    match v {
        Val::Str(s) => Scalar::Str(s.clone()),
        Val::Bare => Scalar::Other,
        Val::Json(raw) => {
            let text = raw.get();
            match text.as_bytes().first() {
                Some(b'"') => serde_json::from_str::<Key<'a>>(text)
                    .map_or(Scalar::Other, |k| Scalar::Str(k.0)),
                Some(b'-' | b'0'..=b'9') => text.parse().map_or(Scalar::Other, Scalar::Num),
                _ => Scalar::Other,
            }
        }
    }
}

/// The unused entries as one JSON object, values copied as written.
fn fields(entries: &[Entry<'_>]) -> Option<Fields> {
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| !e.used) {
        out.push(if out.is_empty() { b'{' } else { b',' });
        serde_json::to_writer(&mut out, e.key.as_ref()).expect("writing JSON to a Vec cannot fail");
        out.push(b':');
        match &e.val {
            // A raw newline in JSON is whitespace between tokens (inside a string it must be
            // escaped), and a merged multiline record may hold a pretty-printed object: blank
            // it, or the sink's "one record, one line" breaks.
            Val::Json(raw) => {
                out.extend(
                    raw.get()
                        .bytes()
                        .map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { b }),
                )
            }
            Val::Str(s) => serde_json::to_writer(&mut out, s.as_ref())
                .expect("writing JSON to a Vec cannot fail"),
            Val::Bare => out.extend_from_slice(b"true"),
        }
    }
    if out.is_empty() {
        return None;
    }
    out.push(b'}');
    let text = String::from_utf8(out).expect("JSON keys and raw values are UTF-8");
    Some(Fields::from_json_object(text))
}

fn level_of(v: Scalar<'_>) -> Option<Level> {
    match v {
        Scalar::Str(s) => {
            Level::from_name(&s).or_else(|| s.parse().ok().and_then(Level::from_number))
        }
        Scalar::Num(n) => Level::from_number(n),
        Scalar::Other => None,
    }
}

/// RFC 3339 (any offset), or a number of seconds/milliseconds/microseconds/nanoseconds since
/// the epoch (told apart by magnitude, as zap, pino and others write them).
fn time_of(v: Scalar<'_>) -> Option<SystemTime> {
    match v {
        Scalar::Str(s) => {
            let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map(SystemTime::from)
                .ok()
                .or_else(|| humantime::parse_rfc3339_weak(&s).ok())?;
            // The sinks write RFC 3339 from 1970 to year 9999 (humantime panics before the
            // epoch, fails after 9999): a time outside is not a timestamp, and stays in fields.
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
            (secs < 253_402_300_800).then_some(t)
        }
        Scalar::Num(x) => {
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
        Scalar::Other => None,
    }
}

/// The trace and span id of a W3C `traceparent` ([`Traceparent::parse`], the proxy's parser).
/// An app's own log line may write the hex in upper case: it is read as lower case.
fn traceparent(s: &str) -> Option<(String, String)> {
    let tp = Traceparent::parse(&s.to_ascii_lowercase())?;
    Some((tp.trace_id_hex(), tp.span_id_hex()))
}

fn hex_id(v: Scalar<'_>, len: usize) -> Option<String> {
    let Scalar::Str(s) = v else { return None };
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
        // Kept as written: order, spacing-free values, number text.
        assert_eq!(f.as_json(), r#"{"user":{"id":7},"retries":3}"#);
        assert_eq!(f.to_map()["user"]["id"], 7);
    }

    #[test]
    fn a_time_the_sinks_cannot_write_stays_in_fields() {
        // Found by fuzz/log_parse: year 11 reached the JSON sink, whose formatter panicked.
        for line in [
            "level=warn ts=0011-05-01T12:00:00Z msg=x",
            r#"{"msg":"x","time":"9999-12-31T23:59:59-23:00"}"#,
        ] {
            let mut r = rec(line);
            assert!(parse_into(ParseFormat::Auto, &mut r));
            assert_eq!(r.time, None, "{line}");
            let fields = r.fields.as_ref().map(|f| f.as_json().to_string());
            assert!(fields.is_some_and(|f| f.contains("\"t")), "{line}");
            let mut out = Vec::new();
            crate::logs::sinks::json::JsonRenderer::default().render(&r, &mut out);
        }
    }

    #[test]
    fn a_pretty_printed_object_renders_as_one_line() {
        // Found by fuzz/log_parse: raw values were copied with their newlines.
        let mut r = rec("{\"msg\":\"x\",\"user\":{\n  \"id\": 7,\r\n  \"n\": \"a\\nb\"\n}}");
        assert!(parse_into(ParseFormat::Json, &mut r));
        let mut out = Vec::new();
        crate::logs::sinks::json::JsonRenderer::default().render(&r, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("one JSON line");
        assert_eq!(v["fields"]["user"]["n"], "a\nb");
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
        assert_eq!(r.fields.expect("kept").to_map().len(), 3);
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
        assert_eq!(r.fields.expect("kept").as_json(), r#"{"path":"/var"}"#);
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
    fn escaped_keys_big_numbers_and_logfmt_flags() {
        let (_, r) = parsed(
            ParseFormat::Json,
            r#"{"msg":"caf\u00e9","k\"q":12345678901234567890123,"f":1.50}"#,
        );
        assert_eq!(r.msg, "café");
        assert_eq!(
            r.fields.expect("kept").as_json(),
            r#"{"k\"q":12345678901234567890123,"f":1.50}"#
        );
        let (_, r) = parsed(ParseFormat::Logfmt, "level=50 msg=hi debug");
        assert_eq!(r.level, Level::Error);
        assert_eq!(r.fields.expect("kept").as_json(), r#"{"debug":true}"#);
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
