//! The readable form of a record, for a human at a terminal (the stdout sink on a TTY).
//!
//! Invariant: this form is for eyes only, never parsed; it may change freely. Machines get JSON.
//! Only tandem writes control characters to the terminal: every one in the app's text (ESC
//! and OSC sequences, CR, NUL, C1 controls, bidi overrides) is shown escaped (`\e`, `\r`,
//! `\u{9b}`), so an app cannot move the operator's cursor, retitle the window, rewrite earlier
//! lines or hide text. Newlines and tabs are kept: multi-line records stay readable.

use super::super::record::{Level, Record};
use super::json::format_time;

/// Append `r` as one coloured line (`HH:MM:SS.mmm LEVEL stream msg key=value ...`).
pub fn render(r: &Record, out: &mut Vec<u8>) {
    let t = format_time(r.time.unwrap_or(r.observed));
    let clock = t.get(11..23).unwrap_or(&t);
    let colour = match r.level {
        Level::Trace | Level::Debug => "\x1b[2m",
        Level::Info => "\x1b[32m",
        Level::Warn => "\x1b[33m",
        Level::Error | Level::Fatal => "\x1b[31;1m",
    };
    let mut line = format!(
        "\x1b[2m{clock}\x1b[0m {colour}{:<5}\x1b[0m \x1b[2m{}\x1b[0m ",
        r.level.as_str(),
        r.stream,
    );
    push_escaped(&mut line, &r.msg);
    if let Some(f) = &r.fields {
        for (k, v) in f.to_map() {
            line.push_str(" \x1b[36m");
            push_escaped(&mut line, &k);
            line.push_str("\x1b[0m=");
            // JSON text: strings are already escaped, but a key inside an object is not
            // guaranteed to be by every serializer; escaping again is cheap and sure.
            push_escaped(&mut line, &v.to_string());
        }
    }
    out.extend_from_slice(line.as_bytes());
    if r.partial.is_some_and(|p| !p.last) {
        out.extend_from_slice(" \x1b[2m…\x1b[0m".as_bytes());
    }
    out.push(b'\n');
}

/// Whether `c` must not reach a terminal as it is.
fn unsafe_for_terminal(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        // bidi embeddings, overrides and isolates: text that displays in another order
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Appends `s` with every character [`unsafe_for_terminal`] written as an escape.
fn push_escaped(out: &mut String, s: &str) {
    if !s.chars().any(unsafe_for_terminal) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\x1b' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if unsafe_for_terminal(c) => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::logs::record::{Origin, Stream};

    #[test]
    fn one_readable_line_with_level_and_fields() {
        let origin = Arc::new(Origin {
            service: "s".into(),
            pid: None,
            restart_count: 0,
            resource_json: "{}".into(),
        });
        let mut r = Record::new(
            SystemTime::now(),
            Stream::Stderr,
            Level::Error,
            "boom".into(),
            origin,
        );
        let mut f = serde_json::Map::new();
        f.insert("user".into(), 7.into());
        r.fields = Some(crate::logs::record::Fields::from_map(&f));
        let mut out = Vec::new();
        render(&r, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.contains("ERROR") && text.contains("stderr") && text.contains("boom"));
        assert!(text.contains("user\x1b[0m=7"), "{text:?}");
    }

    #[test]
    fn control_characters_from_the_app_are_escaped() {
        let mut s = String::new();
        push_escaped(&mut s, "a\x1b[2J\x1b]0;pwned\x07\rb\0\u{9b}c\u{202e}d\n\te");
        assert_eq!(s, "a\\e[2J\\e]0;pwned\\u{7}\\rb\\0\\u{9b}c\\u{202e}d\n\te");
        let mut plain = String::new();
        push_escaped(&mut plain, "héllo wörld");
        assert_eq!(plain, "héllo wörld");
    }
}
