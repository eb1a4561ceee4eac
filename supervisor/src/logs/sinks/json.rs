//! The JSON line format of a record (documented in docs/logs.md; keep the two in step).
//!
//! Invariant: one record is exactly one line: every string goes through serde_json's escaping, so
//! newlines of merged records, control bytes and U+FFFD of lossy lines never break a line.

use std::io::Write;
use std::time::SystemTime;

use super::super::parse::json_string as string;
use super::super::record::Record;

/// Renders records as JSON lines; caches the text of the last observed time (a batch mostly
/// shares one) and of the last record's own time (lines of one second often share it).
#[derive(Debug, Default)]
pub struct JsonRenderer {
    last: Option<(SystemTime, String)>,
    last_own: Option<(SystemTime, String)>,
}

// === impl JsonRenderer ===

impl JsonRenderer {
    /// Append `r` as one JSON object and a `\n` to `out`.
    pub fn render(&mut self, r: &Record, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        match r.time {
            Some(t) => out.extend_from_slice(cached(&mut self.last_own, t).as_bytes()),
            None => out.extend_from_slice(cached(&mut self.last, r.observed).as_bytes()),
        }
        out.extend_from_slice(b"\",\"observed_time\":\"");
        out.extend_from_slice(cached(&mut self.last, r.observed).as_bytes());
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(r.level.as_str().as_bytes());
        out.extend_from_slice(b"\",\"stream\":\"");
        out.extend_from_slice(r.stream.as_str().as_bytes());
        out.extend_from_slice(b"\",\"service\":");
        string(out, &r.origin.service);
        if let Some(pid) = r.origin.pid {
            out.extend_from_slice(b",\"pid\":");
            number(out, u64::from(pid));
            out.extend_from_slice(b",\"restart\":");
            number(out, u64::from(r.origin.restart_count));
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
            number(out, u64::from(p.index));
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
            number(out, u64::from(r.lines));
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
}

/// The text of `t`, formatted again only when it differs from the cached one.
fn cached(slot: &mut Option<(SystemTime, String)>, t: SystemTime) -> &str {
    if slot.as_ref().is_none_or(|(at, _)| *at != t) {
        // The buffer is reused.
        let mut bytes = slot.take().map(|(_, s)| s.into_bytes()).unwrap_or_default();
        bytes.clear();
        write_time(t, &mut bytes);
        *slot = Some((
            t,
            String::from_utf8(bytes).expect("a formatted time is ASCII"),
        ));
    }
    slot.as_ref().map_or("", |(_, s)| s.as_str())
}

/// RFC 3339 in UTC with microseconds: `2024-05-01T12:00:00.500000Z`.
pub fn format_time(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(27);
    write_time(t, &mut out);
    String::from_utf8(out).expect("a formatted time is ASCII")
}

/// [`format_time`] appended to `out`, without a formatter: the civil date from the day
/// number (Howard Hinnant's algorithm), digits written into a fixed buffer.
pub fn write_time(t: SystemTime, out: &mut Vec<u8>) {
    let Some(d) = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .filter(|d| d.as_secs() < 253_402_300_800)
    else {
        // Outside 1970..=9999 (the parser never makes one): humantime's own rules.
        write!(out, "{}", humantime::format_rfc3339_micros(t))
            .expect("writing to a Vec cannot fail");
        return;
    };
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 6, u64::from(d.subsec_micros()));
    out.extend_from_slice(&buf);
}

fn number(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::logs::record::{Level, Origin, Partial, Stream};

    #[test]
    fn times_and_numbers_written_by_hand_match_the_libraries() {
        // Leap days, century and 400-year rules, month ends, the edges of the range, and a
        // pseudo-random walk through it.
        let mut secs: Vec<u64> = vec![0, 59, 86_399, 951_782_400, 951_868_799, 4_107_542_399];
        secs.extend([1_709_164_800, 1_709_251_199, 253_402_300_799, 946_684_799]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            secs.push(x % 253_402_300_800);
        }
        for (i, s) in secs.into_iter().enumerate() {
            let t = SystemTime::UNIX_EPOCH
                + Duration::new(s, (i as u32).wrapping_mul(7_919_113) % 1_000_000_000);
            assert_eq!(
                format_time(t),
                humantime::format_rfc3339_micros(t).to_string(),
                "{s}"
            );
        }
        for n in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            number(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

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
