//! The readable form of a record, for a human at a terminal (the stdout sink on a TTY).
//!
//! Invariant: this form is for eyes only, never parsed; it may change freely. Machines get JSON.

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
    let line = format!(
        "\x1b[2m{clock}\x1b[0m {colour}{:<5}\x1b[0m \x1b[2m{}\x1b[0m {}",
        r.level.as_str(),
        r.stream,
        r.msg
    );
    out.extend_from_slice(line.as_bytes());
    if let Some(f) = &r.fields {
        for (k, v) in f.to_map() {
            out.extend_from_slice(format!(" \x1b[36m{k}\x1b[0m={v}").as_bytes());
        }
    }
    if r.partial.is_some_and(|p| !p.last) {
        out.extend_from_slice(" \x1b[2m…\x1b[0m".as_bytes());
    }
    out.push(b'\n');
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
}
