//! The JSON line format of a record (documented in docs/logs.md; keep the two in step).
//!
//! Invariant: one record is exactly one line: every string goes through serde_json's escaping, so
//! newlines of merged records, control bytes and U+FFFD of lossy lines never break a line.

use std::io::Write;
use std::time::SystemTime;

use super::super::record::Record;

/// Renders records as JSON lines; caches the last timestamp's text (a batch mostly shares one).
#[derive(Debug, Default)]
pub struct JsonRenderer {
    last: Option<(SystemTime, String)>,
}

// === impl JsonRenderer ===

impl JsonRenderer {
    /// Append `r` as one JSON object and a `\n` to `out`.
    pub fn render(&mut self, r: &Record, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        match r.time {
            // Formatted straight into the line: a record's own times rarely repeat.
            Some(t) => write!(out, "{}", humantime::format_rfc3339_micros(t))
                .expect("writing to a Vec cannot fail"),
            None => out.extend_from_slice(self.time(r.observed).as_bytes()),
        }
        out.extend_from_slice(b"\",\"observed_time\":\"");
        out.extend_from_slice(self.time(r.observed).as_bytes());
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(r.level.as_str().as_bytes());
        out.extend_from_slice(b"\",\"stream\":\"");
        out.extend_from_slice(r.stream.as_str().as_bytes());
        out.extend_from_slice(b"\",\"service\":");
        string(out, &r.origin.service);
        if let Some(pid) = r.origin.pid {
            out.extend_from_slice(b",\"pid\":");
            out.extend_from_slice(itoa(pid as u64).as_bytes());
            out.extend_from_slice(b",\"restart\":");
            out.extend_from_slice(itoa(u64::from(r.origin.restart_count)).as_bytes());
        }
        out.extend_from_slice(b",\"msg\":");
        string(out, &r.msg);
        if let Some(t) = &r.trace_id {
            out.extend_from_slice(b",\"trace_id\":");
            string(out, t);
        }
        if let Some(s) = &r.span_id {
            out.extend_from_slice(b",\"span_id\":");
            string(out, s);
        }
        if let Some(p) = r.partial {
            out.extend_from_slice(b",\"partial\":{\"index\":");
            out.extend_from_slice(itoa(u64::from(p.index)).as_bytes());
            out.extend_from_slice(if p.last {
                b",\"last\":true}"
            } else {
                b",\"last\":false}"
            });
        }
        if r.lossy {
            out.extend_from_slice(b",\"lossy\":true");
        }
        if r.lines > 1 {
            out.extend_from_slice(b",\"lines\":");
            out.extend_from_slice(itoa(u64::from(r.lines)).as_bytes());
        }
        if r.parse_error {
            out.extend_from_slice(b",\"parse_error\":true");
        }
        if let Some(f) = &r.fields {
            out.extend_from_slice(b",\"fields\":");
            out.extend_from_slice(f.as_json().as_bytes());
        }
        out.extend_from_slice(b",\"resource\":");
        out.extend_from_slice(r.origin.resource_json.as_bytes());
        out.extend_from_slice(b"}\n");
    }

    fn time(&mut self, t: SystemTime) -> &str {
        if self.last.as_ref().is_none_or(|(at, _)| *at != t) {
            self.last = Some((t, format_time(t)));
        }
        self.last.as_ref().map_or("", |(_, s)| s.as_str())
    }
}

/// RFC 3339 in UTC with microseconds: `2024-05-01T12:00:00.500000Z`.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing JSON to a Vec cannot fail");
}

fn itoa(n: u64) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::logs::record::{Level, Origin, Partial, Stream};

    #[test]
    fn one_line_with_all_fields() {
        let origin = Arc::new(Origin {
            service: "web".into(),
            pid: Some(42),
            restart_count: 1,
            resource_json: r#"{"host.name":"h"}"#.into(),
        });
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_557_600_500);
        let mut r = Record::new(
            t0,
            Stream::Stderr,
            Level::Error,
            "a\nb \"q\" \u{fffd}".into(),
            origin,
        );
        r.partial = Some(Partial {
            index: 2,
            last: true,
        });
        r.lossy = true;
        r.lines = 2;
        r.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        let mut out = Vec::new();
        JsonRenderer::default().render(&r, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["time"], "2024-05-01T10:00:00.500000Z");
        assert_eq!(v["observed_time"], v["time"]);
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["service"], "web");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["restart"], 1);
        assert_eq!(v["msg"], "a\nb \"q\" \u{fffd}");
        assert_eq!(v["partial"]["index"], 2);
        assert_eq!(v["partial"]["last"], true);
        assert_eq!(v["lossy"], true);
        assert_eq!(v["lines"], 2);
        assert_eq!(v["resource"]["host.name"], "h");
        assert!(v.get("fields").is_none() && v.get("span_id").is_none());
    }
}
