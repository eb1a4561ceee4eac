//! The app's log output: plain lines and JSON lines on stdout and stderr, like a real legacy
//! service whose libraries disagree about formats.
//!
//! Invariant: every record is written with one `write_all` under the stream's lock, so lines
//! from concurrent request threads never interleave mid-line; a multi-line record (a stack
//! trace) is written as one block for the same reason. While the app is stalled, nothing is
//! written at all.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::state::STALLED;

/// Which standard stream a record goes to.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// With `--log-file`: every record of both streams goes to this file instead.
static LOG_FILE: OnceLock<Mutex<File>> = OnceLock::new();

/// Sends all later records to `path` (created if absent, appended to).
pub fn to_file(path: &str) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let _ = LOG_FILE.set(Mutex::new(file));
    Ok(())
}

/// Writes `text` (one or more lines, newline added) to `stream` in a single write.
///
/// Errors are ignored on purpose: a legacy app that cannot log keeps serving, and a closed
/// pipe must not turn into a panic.
pub fn raw(stream: Stream, text: &str) {
    if STALLED.load(Ordering::SeqCst) {
        return;
    }
    let mut block = String::with_capacity(text.len() + 1);
    block.push_str(text);
    block.push('\n');
    if let Some(file) = LOG_FILE.get() {
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = file.write_all(block.as_bytes());
        return;
    }
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(block.as_bytes()),
        Stream::Stderr => std::io::stderr().lock().write_all(block.as_bytes()),
    };
}

/// A plain line in the classic `TIMESTAMP LEVEL message` shape.
pub fn plain(stream: Stream, level: &str, msg: &str) {
    raw(stream, &format!("{} {:<5} {}", rfc3339_now(), level, msg));
}

/// A JSON line: `ts`, `level`, `msg`, then the given string or number fields.
pub fn json(stream: Stream, level: &str, msg: &str, fields: &[(&str, Field<'_>)]) {
    let mut line = format!(
        "{{\"ts\":\"{}\",\"level\":\"{}\",\"msg\":{}",
        rfc3339_now(),
        level,
        quote(msg)
    );
    for (key, value) in fields {
        line.push(',');
        line.push_str(&quote(key));
        line.push(':');
        match value {
            Field::Str(s) => line.push_str(&quote(s)),
            Field::Num(n) => line.push_str(&n.to_string()),
        }
    }
    line.push('}');
    raw(stream, &line);
}

/// A JSON field value.
#[derive(Clone, Copy, Debug)]
pub enum Field<'a> {
    Str(&'a str),
    Num(u64),
}

/// A JSON string literal for `s`, escaped per RFC 8259.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ` (std has no calendar, so the civil date
/// comes from Howard Hinnant's days-from-civil inverse).
fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        now.subsec_millis()
    )
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_453), (2025, 12, 31));
    }

    #[test]
    fn quote_escapes_controls_and_quotes() {
        assert_eq!(quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
