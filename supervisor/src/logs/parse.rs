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
use super::swar;

const LEVEL_KEYS: &[&str] = &["level", "severity", "lvl", "levelname", "log.level"];
const MSG_KEYS: &[&str] = &["msg", "message"];
const TIME_KEYS: &[&str] = &["time", "ts", "timestamp", "@timestamp"];
const TRACE_KEYS: &[&str] = &["trace_id", "traceId", "trace.id"];
const SPAN_KEYS: &[&str] = &["span_id", "spanId", "span.id"];
const TRACEPARENT_KEYS: &[&str] = &["traceparent"];

/// Parse `record.msg` (the raw text) in place. Returns false on a parse failure.
pub fn parse_into(format: ParseFormat, record: &mut Record) -> bool {
    let mut text = std::mem::take(&mut record.msg);
    // `2026-11-24T10:00:00Z INFO request handled path=/x status=200`: a timestamp first is
    // the prefix many loggers write before the message and its logfmt pairs.
    if matches!(format, ParseFormat::Auto | ParseFormat::Logfmt) {
        if let Some(Prefixed {
            time,
            level,
            msg,
            mut entries,
        }) = prefixed(&text)
        {
            let head = Head {
                time: Some(time),
                level,
                msg_given: !msg.is_empty(),
            };
            apply(&mut entries, head, record);
            drop(entries);
            if head.msg_given {
                // Cut out of the line's own buffer: no copy.
                text.truncate(msg.end);
                text.drain(..msg.start);
                record.msg = text;
            }
            return true;
        }
    }
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
            apply(&mut e, Head::default(), record);
            true
        }
        Some(None) => {
            record.msg = text;
            record.parse_error = true;
            false
        }
    }
}

/// What a line's prefix stated, ahead of its pairs: those win over the same keys in pairs.
#[derive(Default, Clone, Copy)]
struct Head {
    time: Option<SystemTime>,
    level: Option<Level>,
    /// The caller sets the message (from the text before the pairs): `msg` pairs stay fields.
    msg_given: bool,
}

/// A line that starts with a timestamp: its parts.
struct Prefixed<'a> {
    time: SystemTime,
    level: Option<Level>,
    /// The message: the text between the prefix and the trailing pairs.
    msg: std::ops::Range<usize>,
    /// The trailing run of `key=value` pairs.
    entries: Vec<Entry<'a>>,
}

/// `TIMESTAMP [LEVEL] message [key=value ...]`: an RFC 3339 timestamp with its offset as the
/// first token, then optionally a level word (`INFO`, `[info]`, `info:`; a lower-case bare word
/// is prose), then the message, then a run of `key=value` pairs to the end of the line. Only
/// the timestamp is required; None if the line does not start with one.
fn prefixed(text: &str) -> Option<Prefixed<'_>> {
    let bytes = text.as_bytes();
    // Cheap refusal first: `YYYY-` starts every timestamp this reads.
    if bytes.len() < 20 || !bytes[..4].iter().all(u8::is_ascii_digit) || bytes[4] != b'-' {
        return None;
    }
    let end = logfmt::word_end(text, 0);
    // RFC 3339 with its offset only: a time without a zone is a guess, and stays text.
    let time = rfc3339(&text[..end])?;
    let mut at = logfmt::skip_space(text, end);
    let mut level = None;
    if at < text.len() {
        let word_to = logfmt::word_end(text, at);
        if let Some(l) = level_word(&text[at..word_to]) {
            level = Some(l);
            at = logfmt::skip_space(text, word_to);
        }
    }
    let (pairs, entries) = trailing_pairs(text, at);
    // Spaces before the pairs are trimmed one byte at a time: ASCII ones only (the last byte
    // of a multi-byte space is no char boundary, so `space_len` says 0 and it stays), so
    // `msg_end` stays on a char boundary.
    let mut msg_end = pairs;
    while msg_end > at && logfmt::space_len(text, msg_end - 1) > 0 {
        msg_end -= 1;
    }
    Some(Prefixed {
        time,
        level,
        msg: at..msg_end.max(at),
        entries,
    })
}

/// A level as loggers write it before the message: `INFO`, `WARN`, `[info]`, `error:`.
fn level_word(word: &str) -> Option<Level> {
    let (inner, marked) = if let Some(w) = word.strip_prefix('[').and_then(|w| w.strip_suffix(']'))
    {
        (w, true)
    } else if let Some(w) = word.strip_suffix(':') {
        (w, true)
    } else {
        (word, false)
    };
    if inner.is_empty() || !(marked || inner.bytes().all(|b| b.is_ascii_uppercase())) {
        return None;
    }
    Level::from_name(inner)
}

/// The run of valued logfmt pairs that ends the line, and where it starts (`text.len()` if
/// the last word is not one). One pass: a word that is not a `key=value` pair resets the run.
fn trailing_pairs(text: &str, from: usize) -> (usize, Vec<Entry<'_>>) {
    let mut run = None;
    let mut entries = Vec::new();
    let mut at = logfmt::skip_space(text, from);
    while at < text.len() {
        match logfmt::pair_at(text, at) {
            Some(Some((pair, end))) if pair.value.is_some() => {
                run.get_or_insert(at);
                entries.push(entry(pair));
                at = end;
            }
            // A bare word: message text.
            Some(Some((_, end))) => {
                run = None;
                entries.clear();
                at = end;
            }
            // A word with a quote or a leading `=`: message text too.
            _ => {
                run = None;
                entries.clear();
                at = logfmt::word_end(text, at);
            }
        }
        at = logfmt::skip_space(text, at);
    }
    (run.unwrap_or(text.len()), entries)
}

/// RFC 3339 with the offset (`2026-11-24T10:00:00Z`, `...00.123+02:00`), read by hand: the
/// common case of a line's timestamp, without the general parser's cost. For a line's prefix
/// it is the only form read; for a `time`/`ts` value, None sends the text on to the general
/// parsers in [`time_of`], which also read the rarer forms.
fn rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b.get(r)?.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || min > 59
        || sec > 59
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset;
    // The sinks write 1970 to 9999 in UTC (see time_of).
    if !(0..253_402_300_800).contains(&secs) {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos as u32))
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
            .any(|p| LEVEL_KEYS.contains(&p.key) || MSG_KEYS.contains(&p.key));
        if !all_valued || (pairs.len() < 2 && !known) {
            return None;
        }
    }
    Some(pairs.into_iter().map(entry).collect())
}

fn entry(p: logfmt::Pair<'_>) -> Entry<'_> {
    Entry {
        key: Cow::Borrowed(p.key),
        val: p.value.map_or(Val::Bare, Val::Str),
        used: false,
    }
}

/// Move recognised keys into the record; the rest become `fields`.
fn apply(entries: &mut [Entry<'_>], head: Head, record: &mut Record) {
    // Most lines name none of the recognised keys (`path=`, `status=`): one look per entry
    // then, instead of one per entry and recognised key.
    let known = if entries.iter().any(|e| known_key(&e.key)) {
        &mut *entries
    } else {
        &mut []
    };
    if let Some(level) = head.level.or_else(|| take(known, LEVEL_KEYS, level_of)) {
        record.level = level;
    }
    if !head.msg_given {
        record.msg = take(known, MSG_KEYS, |v| match v {
            Scalar::Str(s) => Some(s.into_owned()),
            _ => None,
        })
        .unwrap_or_default();
    }
    record.time = head.time.or_else(|| take(known, TIME_KEYS, time_of));
    if let Some((t, s)) = take(known, TRACEPARENT_KEYS, |v| match v {
        Scalar::Str(s) => traceparent(&s),
        _ => None,
    }) {
        record.trace_id = Some(t);
        record.span_id = Some(s);
    }
    if let Some(t) = take(known, TRACE_KEYS, |v| hex_id(v, 32)) {
        record.trace_id = Some(t);
    }
    if let Some(s) = take(known, SPAN_KEYS, |v| hex_id(v, 16)) {
        record.span_id = Some(s);
    }
    record.fields = fields(entries);
}

/// Whether `key` is in one of the key lists [`apply`] looks for (a test keeps them in step).
fn known_key(key: &str) -> bool {
    matches!(
        key,
        "level"
            | "severity"
            | "lvl"
            | "levelname"
            | "log.level"
            | "msg"
            | "message"
            | "time"
            | "ts"
            | "timestamp"
            | "@timestamp"
            | "traceparent"
            | "trace_id"
            | "traceId"
            | "trace.id"
            | "span_id"
            | "spanId"
            | "span.id"
    )
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
    if entries.iter().all(|e| e.used) {
        return None;
    }
    let mut out = String::with_capacity(64);
    for e in entries.iter().filter(|e| !e.used) {
        out.push(if out.is_empty() { '{' } else { ',' });
        json_str(&mut out, e.key.as_ref());
        out.push(':');
        match &e.val {
            // A raw newline in JSON is whitespace between tokens (inside a string it must be
            // escaped), and a merged multiline record may hold a pretty-printed object: blank
            // it, or the sink's "one record, one line" breaks.
            Val::Json(raw) => {
                let raw = raw.get();
                if memchr::memchr2(b'\n', b'\r', raw.as_bytes()).is_none() {
                    out.push_str(raw);
                } else {
                    out.extend(raw.chars().map(|c| match c {
                        '\n' | '\r' => ' ',
                        c => c,
                    }));
                }
            }
            Val::Str(s) => json_str(&mut out, s.as_ref()),
            Val::Bare => out.push_str("true"),
        }
    }
    if out.is_empty() {
        return None;
    }
    out.push('}');
    Some(Fields::from_json_object(out))
}

/// [`json_string`] into a `String` (the fields' text is built as one, with no UTF-8 check at
/// the end).
fn json_str(out: &mut String, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string serialises"));
    }
}

/// `s` as a JSON string: copied as it is when nothing needs escaping (the common case),
/// else through serde_json's escaping. The JSON sink writes its strings with it too.
pub(crate) fn json_string(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing JSON to a Vec cannot fail");
    }
}

/// Whether `s` has a byte JSON strings escape: eight bytes at a time, the rest by table.
fn needs_escape(s: &[u8]) -> bool {
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let x = swar::load(c);
        if swar::any_below(x, 0x20) | swar::any_eq(x, b'"') | swar::any_eq(x, b'\\') {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| ESCAPED[usize::from(b)])
}

/// The bytes JSON strings escape: controls, `"` and `\\`.
static ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

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
            if let Some(t) = rfc3339(&s) {
                return Some(t);
            }
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
    fn a_timestamp_and_level_prefix_before_the_message_and_its_pairs() {
        let line = "2026-11-24T10:00:00Z INFO request handled path=/api/v1/items/123 status=200";
        for format in [ParseFormat::Auto, ParseFormat::Logfmt] {
            let (ok, r) = parsed(format, line);
            assert!(ok && !r.parse_error);
            assert_eq!(r.level, Level::Info);
            assert_eq!(r.msg, "request handled");
            let secs = |t: SystemTime| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after")
                    .as_secs_f64()
            };
            assert_eq!(r.time.map(secs), Some(1_795_514_400.0));
            assert_eq!(
                r.fields.expect("pairs kept").as_json(),
                r#"{"path":"/api/v1/items/123","status":"200"}"#
            );
        }
        // tracing-subscriber's format: padded level, the target stays in the message.
        let (_, r) = parsed(
            ParseFormat::Auto,
            "2026-11-24T10:00:00.250+02:00  WARN app::db: slow query took=3s trace_id=4BF92F3577B34DA6A3CE929D0E0E4736",
        );
        assert_eq!(
            (r.level, r.msg.as_str()),
            (Level::Warn, "app::db: slow query")
        );
        assert_eq!(
            r.time.map(|t| t
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after")
                .as_millis()),
            Some(1_795_507_200_250)
        );
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(r.fields.expect("kept").as_json(), r#"{"took":"3s"}"#);
        // No pairs: time and level, the rest is the message.
        let (_, r) = parsed(ParseFormat::Auto, "2026-11-24T10:00:00Z [error] db down");
        assert_eq!((r.level, r.msg.as_str()), (Level::Error, "db down"));
        assert!(r.time.is_some() && r.fields.is_none());
        // A multi-byte space before the pairs stays in the message (cut on a char boundary).
        let (_, r) = parsed(
            ParseFormat::Auto,
            "2026-11-24T10:00:00Z INFO done \u{3000}status=200",
        );
        assert_eq!(r.msg, "done \u{3000}");
        assert_eq!(r.fields.expect("kept").as_json(), r#"{"status":"200"}"#);
        // A lower-case bare word is prose, and a message may hold quotes and `=`; only the
        // run of pairs that ends the line becomes fields.
        let (_, r) = parsed(
            ParseFormat::Auto,
            r#"2026-11-24T10:00:00Z error budget: said "x=1" a=1 to bob user=7 note="a b""#,
        );
        assert_eq!(r.level, Level::Info);
        assert_eq!(r.msg, r#"error budget: said "x=1" a=1 to bob"#);
        assert_eq!(
            r.fields.expect("kept").as_json(),
            r#"{"user":"7","note":"a b"}"#
        );
        // The prefix wins over the pairs; the pairs' own copies are kept as fields, and a
        // `msg` pair is the message when no text comes before the pairs.
        let (_, r) = parsed(
            ParseFormat::Auto,
            "2026-11-24T10:00:00Z ERROR: msg=\"db down\" level=debug",
        );
        assert_eq!((r.level, r.msg.as_str()), (Level::Error, "db down"));
        assert_eq!(r.fields.expect("kept").as_json(), r#"{"level":"debug"}"#);
        // Not a timestamp, or plain: the line as it was.
        for (format, line) in [
            (ParseFormat::Auto, "2026-13-01T00:00:00Z INFO x"),
            (ParseFormat::Auto, "2024-05-01 12:00:00.123 GET /api 200"),
            (ParseFormat::Plain, "2026-11-24T10:00:00Z INFO x a=1"),
        ] {
            let (ok, r) = parsed(format, line);
            assert!(ok && r.time.is_none() && r.fields.is_none(), "{line}");
            assert_eq!(r.msg, line);
        }
    }

    #[test]
    fn the_hand_read_rfc3339_agrees_with_the_time_crate() {
        let rfc = &time::format_description::well_known::Rfc3339;
        for s in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59.999999999Z",
            "2024-05-01T12:00:00.5+02:00",
            "2026-11-24t10:00:00.123-07:30",
            "1999-12-31T23:59:59.1234567891Z",
            "9999-12-31T23:59:59Z",
        ] {
            let want = time::OffsetDateTime::parse(s, rfc)
                .map(SystemTime::from)
                .ok();
            assert_eq!(rfc3339(s), want, "{s}");
        }
        for s in [
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+2:00",
            "1970-01-01T00:00:00+01:00",
            "2024-05-01 12:00:00Z",
        ] {
            assert_eq!(rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn the_known_key_check_is_the_key_lists() {
        let lists = [
            LEVEL_KEYS,
            MSG_KEYS,
            TIME_KEYS,
            TRACEPARENT_KEYS,
            TRACE_KEYS,
            SPAN_KEYS,
        ];
        for k in lists.iter().flat_map(|l| l.iter()) {
            assert!(known_key(k), "{k}");
        }
        for k in [
            "path", "status", "Level", "msgs", "trace", "span", "", "time ",
        ] {
            assert!(!known_key(k), "{k}");
        }
        // Each listed key once: the check and the lists hold the same 18 keys.
        assert_eq!(lists.iter().map(|l| l.len()).sum::<usize>(), 18);
    }

    #[test]
    fn the_eight_byte_escape_check_agrees_with_the_table() {
        // Every byte value at every position of strings of 1..=24 bytes of a plain filler.
        for len in 1..=24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(
                        needs_escape(&s),
                        ESCAPED[usize::from(b)],
                        "{len} {at} {b:#x}"
                    );
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape(
            "caf\u{e9} \u{1f600} /api/v1/items".as_bytes()
        ));
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
