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
    out: Vec<Record>,
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
            out: Vec::new(),
        }
    }

    /// Feed bytes read at `now`.
    pub fn push(&mut self, data: &[u8], now: Instant) {
        add(&self.shape.counters.bytes_in, data.len() as u64);
        let observed = SystemTime::now();
        let Self {
            framer,
            multiline,
            shape,
            out,
        } = self;
        framer.push(data, &mut |bytes, partial, raw| {
            let line = shape.line(bytes, partial, raw, observed);
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
            let line = shape.line(bytes, partial, raw, observed);
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
        self.out.len()
    }

    /// Records finished by the processor this one replaces, to go out first.
    pub fn prepend(&mut self, mut done: Vec<Record>) {
        done.append(&mut self.out);
        self.out = done;
    }

    /// Take the finished records out.
    pub fn take(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.out)
    }
}

// === impl Shape ===

impl Shape {
    fn line(
        &self,
        bytes: &[u8],
        partial: Option<super::record::Partial>,
        raw: usize,
        observed: SystemTime,
    ) -> Line {
        add(&self.counters.lines_in, 1);
        if partial.is_some() {
            add(&self.counters.partial, 1);
        }
        // Validation alone is much faster than the lossy scan; most lines are valid.
        let (text, lossy) = match std::str::from_utf8(bytes) {
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
        let r = p.take();
        assert_eq!(r.len(), 4);
        assert_eq!((r[0].level, r[0].msg.as_str()), (Level::Warn, "plain"));
        assert_eq!((r[1].level, r[1].msg.as_str()), (Level::Debug, "j"));
        assert!(r[2].lossy && r[2].msg.ends_with("\u{0}bin"));
        assert_eq!(r[3].msg, "no newline");
        let s = c.snapshot();
        assert_eq!((s.lines_in, s.lossy, s.bytes_in), (4, 1, data.len() as u64));
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
        let r = p.take();
        assert_eq!(r[0].lines, 3);
        assert!(r[1..].iter().all(|x| x.partial.is_some() && !x.parse_error));
        assert_eq!(c.multiline_merges.load(Ordering::Relaxed), 2);
        assert_eq!(c.parse_failures.load(Ordering::Relaxed), 0);
    }
}
