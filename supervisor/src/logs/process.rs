//! The per-source chain: bytes → frame → UTF-8 (lossy) → multiline → parse → redact →
//! enriched records.
//!
//! Invariant: a processor is owned by exactly one reader (pipe or tailed file sequence), so the
//! records it yields are in the order the source wrote them. It does no I/O and reads no clock:
//! the reader passes the time in, and takes the finished records out with [`Processor::take`].

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::config::{LogRules, LogsConfig, ParseFormat};
use super::counters::{add, Counters};
use super::frame::Framer;
use super::multiline::{Line, Multiline};
use super::parse::parse_into;
use super::record::{Level, Origin, Record, Stream};
use super::redact::Redactor;

/// Turns one source's bytes into records.
#[derive(Debug)]
pub struct Processor {
    framer: Framer,
    multiline: Multiline,
    shape: Shape,
    out: Batches,
}

/// Finished records, cut into batches of at most `size` (`logs.batch_records`) as they are
/// made: each record is moved once, and a read's batches are allocated at the size its
/// lines need (no batch grows by copying, none is allocated far larger than it is filled).
#[derive(Debug)]
struct Batches {
    done: Vec<Vec<Record>>,
    size: usize,
    /// Lines of the current read not yet made into records.
    expect: usize,
}

/// What every record of this source gets.
#[derive(Debug)]
struct Shape {
    stream: Stream,
    level: Level,
    format: ParseFormat,
    origin: Arc<Origin>,
    counters: Arc<Counters>,
    redact: Redactor,
}

// === impl Processor ===

impl Processor {
    /// A processor for `stream` with that stream's settings from `cfg` and its compiled
    /// `rules` (compiled once, at config load: nothing here can fail).
    pub fn new(
        cfg: &LogsConfig,
        rules: &LogRules,
        stream: Stream,
        origin: Arc<Origin>,
        counters: Arc<Counters>,
    ) -> Self {
        let s = cfg.stream(stream);
        let redact = rules.redact.clone();
        Self {
            framer: Framer::new(usize::try_from(cfg.max_line_bytes.as_u64()).unwrap_or(usize::MAX)),
            multiline: Multiline::new(rules.multiline(stream).clone()),
            shape: Shape {
                stream,
                level: s.level,
                format: s.format,
                origin,
                counters,
                redact,
            },
            out: Batches {
                done: Vec::new(),
                size: cfg.batch_records.max(1),
                expect: 0,
            },
        }
    }

    /// Feed bytes read at `now`.
    pub fn push(&mut self, data: &[u8], now: Instant) {
        add(&self.shape.counters.bytes_in, data.len() as u64);
        let observed = SystemTime::now();
        // UTF-8 is checked once for the whole read, where it is fastest: a `\n` is never part
        // of a multi-byte sequence, so each line inside the valid part is valid text. Lines
        // that began in an earlier read (the framer's carry) are checked alone.
        let valid = match std::str::from_utf8(data) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or_default(),
        };
        let Self {
            framer,
            multiline,
            shape,
            out,
        } = self;
        out.expect = memchr::memchr_iter(b'\n', data).count();
        framer.push(data, &mut |bytes, partial, raw| {
            let line = shape.line(bytes, within(valid, bytes), partial, raw, observed);
            if multiline.push(line, now, &mut |l| out.push(shape.record(l))) {
                add(&shape.counters.multiline_merges, 1);
            }
        });
    }

    /// Deliver a pending multiline record whose timeout has passed.
    pub fn tick(&mut self, now: Instant) {
        let Self {
            multiline,
            shape,
            out,
            ..
        } = self;
        multiline.tick(now, &mut |l| out.push(shape.record(l)));
    }

    /// End of stream: deliver the unfinished line and any pending multiline record.
    pub fn finish(&mut self) {
        let observed = SystemTime::now();
        let now = Instant::now();
        let Self {
            framer,
            multiline,
            shape,
            out,
        } = self;
        framer.finish(&mut |bytes, partial, raw| {
            let line = shape.line(bytes, None, partial, raw, observed);
            if multiline.push(line, now, &mut |l| out.push(shape.record(l))) {
                add(&shape.counters.multiline_merges, 1);
            }
        });
        multiline.flush(&mut |l| out.push(shape.record(l)));
    }

    /// Hand over: a pending multiline record is delivered now (a stack trace being written
    /// across an upgrade is split there), the unfinished line is taken out for the next reader
    /// ([`Processor::resume`]).
    pub fn hand_off(&mut self) -> (Vec<u8>, u32) {
        self.flush_merged();
        self.framer.take_unfinished()
    }

    /// Go on with what a previous reader of the stream handed off.
    pub fn resume(&mut self, carry: Vec<u8>, part: u32) {
        self.framer.resume(carry, part);
    }

    /// Deliver a pending multiline record now, but keep an unfinished line (tail mode at stop:
    /// the writer may still finish that line, and the checkpoint points before it).
    pub fn flush_merged(&mut self) {
        let Self {
            multiline,
            shape,
            out,
            ..
        } = self;
        multiline.flush(&mut |l| out.push(shape.record(l)));
    }

    /// When [`Processor::tick`] must run next, if a multiline record is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.multiline.deadline()
    }

    /// Input bytes read but not yet in a finished record (tail checkpoints subtract these).
    pub fn undelivered(&self) -> usize {
        self.framer.pending() + self.multiline.pending_raw()
    }

    /// Records finished so far.
    pub fn pending_records(&self) -> usize {
        self.out.done.iter().map(Vec::len).sum()
    }

    /// Records finished by the processor this one replaces, to go out first.
    pub fn prepend(&mut self, mut done: Vec<Vec<Record>>) {
        done.append(&mut self.out.done);
        self.out.done = done;
    }

    /// Take the finished records out, in batches of at most `logs.batch_records`.
    pub fn take(&mut self) -> Vec<Vec<Record>> {
        std::mem::take(&mut self.out.done)
    }
}

/// `part` as text, when it is a slice of `valid` (a line inside the read, not one joined
/// from the framer's carry) and starts and ends on its character boundaries (a part of an
/// over-long line may be cut inside a character).
fn within<'a>(valid: &'a str, part: &[u8]) -> Option<&'a str> {
    let from = (part.as_ptr() as usize).checked_sub(valid.as_ptr() as usize)?;
    valid.get(from..from.checked_add(part.len())?)
}

// === impl Batches ===

impl Batches {
    fn push(&mut self, r: Record) {
        match self.done.last_mut() {
            Some(batch) if batch.len() < self.size => batch.push(r),
            _ => {
                let mut batch = Vec::with_capacity(self.size.min(self.expect.max(1)));
                batch.push(r);
                self.done.push(batch);
            }
        }
        self.expect = self.expect.saturating_sub(1);
    }
}

// === impl Shape ===

impl Shape {
    /// `checked`: `bytes` as text, when the caller already knows they are valid UTF-8.
    fn line(
        &self,
        bytes: &[u8],
        checked: Option<&str>,
        partial: Option<super::record::Partial>,
        raw: usize,
        observed: SystemTime,
    ) -> Line {
        add(&self.counters.lines_in, 1);
        if partial.is_some() {
            add(&self.counters.partial, 1);
        }
        // Validation alone is much faster than the lossy scan; most lines are valid.
        let (text, lossy) = match checked.map_or_else(|| std::str::from_utf8(bytes), Ok) {
            Ok(s) => (s.to_owned(), false),
            Err(_) => {
                add(&self.counters.lossy, 1);
                (String::from_utf8_lossy(bytes).into_owned(), true)
            }
        };
        Line {
            text,
            lossy,
            observed,
            partial,
            lines: 1,
            raw_len: raw,
        }
    }

    fn record(&self, line: Line) -> Record {
        let mut r = Record::new(
            line.observed,
            self.stream,
            self.level,
            line.text,
            self.origin.clone(),
        );
        r.partial = line.partial;
        r.lossy = line.lossy;
        r.lines = line.lines;
        // A part of a long line is a fragment: parsing it as JSON would only fail.
        let format = if r.partial.is_some() {
            ParseFormat::Plain
        } else {
            self.format
        };
        if !parse_into(format, &mut r) {
            add(&self.counters.parse_failures, 1);
        }
        // After parsing, so a secret inside a JSON or logfmt value is found where it lands.
        self.redact.record(&mut r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::config::MultilinePreset;
    use std::sync::atomic::Ordering;

    fn processor(cfg: &LogsConfig, stream: Stream) -> (Processor, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let origin = Arc::new(Origin {
            service: "t".into(),
            pid: Some(1),
            restart_count: 0,
            resource_json: "{}".into(),
        });
        (
            Processor::new(
                cfg,
                &cfg.compile().expect("valid"),
                stream,
                origin,
                counters.clone(),
            ),
            counters,
        )
    }

    #[test]
    fn stream_defaults_levels_json_and_garbage() {
        let cfg = LogsConfig::default();
        let (mut p, c) = processor(&cfg, Stream::Stderr);
        let now = Instant::now();
        let data = b"plain\n{\"level\":\"debug\",\"msg\":\"j\"}\n\xff\xfe\x00bin\nno newline";
        p.push(data, now);
        assert_eq!(p.undelivered(), 10);
        p.finish();
        let r: Vec<Record> = p.take().concat();
        assert_eq!(r.len(), 4);
        assert_eq!((r[0].level, r[0].msg.as_str()), (Level::Warn, "plain"));
        assert_eq!((r[1].level, r[1].msg.as_str()), (Level::Debug, "j"));
        assert!(r[2].lossy && r[2].msg.ends_with("\u{0}bin"));
        assert_eq!(r[3].msg, "no newline");
        let s = c.snapshot();
        assert_eq!((s.lines_in, s.lossy, s.bytes_in), (4, 1, data.len() as u64));
    }

    #[test]
    fn text_checked_per_read_finds_each_invalid_line_and_only_it() {
        let cfg = LogsConfig::default();
        let (mut p, c) = processor(&cfg, Stream::Stdout);
        let now = Instant::now();
        // A character cut by the end of a read, an invalid line among valid ones, and valid
        // lines after it (outside the read's valid part: checked one by one).
        p.push(b"ok\ncaf\xc3", now);
        p.push(b"\xa9\nbad\xff\nlast \xe2\x82\xac\nmore\n", now);
        p.finish();
        let r: Vec<Record> = p.take().concat();
        let got: Vec<(&str, bool)> = r.iter().map(|x| (x.msg.as_str(), x.lossy)).collect();
        assert_eq!(
            got,
            [
                ("ok", false),
                ("caf\u{e9}", false),
                ("bad\u{fffd}", true),
                ("last \u{20ac}", false),
                ("more", false)
            ]
        );
        assert_eq!(c.snapshot().lossy, 1);
        let elsewhere = b"abc".to_vec();
        assert_eq!(within("abc", &elsewhere), None, "not a slice of the read");
        let read = "x\u{e9}y";
        assert_eq!(within(read, &read.as_bytes()[1..3]), Some("\u{e9}"));
        assert_eq!(
            within(read, &read.as_bytes()[1..2]),
            None,
            "inside a character"
        );
    }

    #[test]
    fn multiline_merges_are_counted_and_parts_stay_plain() {
        let mut cfg = LogsConfig::default();
        cfg.stdout.multiline.preset = MultilinePreset::Java;
        cfg.max_line_bytes = bytesize::ByteSize::b(16);
        let (mut p, c) = processor(&cfg, Stream::Stdout);
        let now = Instant::now();
        p.push(
            b"E: x\n\tat a\n\tat b\n{\"msg\":\"0123456789abcdef\"}\n",
            now,
        );
        p.finish();
        let r: Vec<Record> = p.take().concat();
        assert_eq!(r[0].lines, 3);
        assert!(r[1..].iter().all(|x| x.partial.is_some() && !x.parse_error));
        assert_eq!(c.multiline_merges.load(Ordering::Relaxed), 2);
        assert_eq!(c.parse_failures.load(Ordering::Relaxed), 0);
    }
}
