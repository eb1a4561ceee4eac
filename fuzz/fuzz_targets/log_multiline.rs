//! Multiline merging (`tandem::logs::multiline`): continuation lines (stack traces) joined
//! into the record they continue, under the configured bounds.
//!
//! Input: 1 byte chooses the preset (none, java, python, go, traces, custom start, custom
//! continue), 1 byte `max_lines` (1..=16), 1 byte `max_bytes` (16..=4111, in steps of 16);
//! for a custom preset the first line is the pattern (invalid ones must be refused, not
//! panic); the remaining lines are fed one by one, some marked as parts of a long line, with a
//! clock that advances past the timeout now and then. Asserts: no panic; every input line comes
//! out exactly once, in order (the outputs, split on `\n`, are the inputs); a record never holds
//! more than `max_lines` lines, nor more than `max_bytes` bytes when it merged several; parts
//! are never merged; raw byte counts add up. (Trailing blank lines of a merged record are
//! trimmed from its text but counted in `lines`.)
#![no_main]

use std::time::{Duration, SystemTime};

use bytesize::ByteSize;
use libfuzzer_sys::fuzz_target;
use tandem::logs::config::{MultilineConfig, MultilinePreset};
use tandem::logs::multiline::{Line, Multiline, MultilineRules};
use tandem::logs::record::Partial;
use tokio::time::Instant;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max_lines = 1 + usize::from(data[1] % 16);
    let max_bytes = 16 + 16 * u64::from(data[2]);
    let text = String::from_utf8_lossy(&data[3..]);
    let mut lines = text.split('\n');
    let mut cfg = MultilineConfig {
        max_lines,
        max_bytes: ByteSize::b(max_bytes),
        timeout: Duration::from_millis(100),
        ..MultilineConfig::default()
    };
    cfg.preset = match data[0] % 7 {
        0 => MultilinePreset::None,
        1 => MultilinePreset::Java,
        2 => MultilinePreset::Python,
        3 => MultilinePreset::Go,
        4 => MultilinePreset::Traces,
        n => {
            let pattern = lines.next().unwrap_or_default().chars().take(64).collect();
            if n == 5 {
                cfg.start = Some(pattern);
            } else {
                cfg.continue_ = Some(pattern);
            }
            MultilinePreset::Custom
        }
    };
    let Ok(rules) = MultilineRules::compile(&cfg) else {
        return;
    };
    let mut m = Multiline::new(rules);
    let mut now = Instant::now();
    let mut inputs = Vec::new();
    let mut outputs: Vec<Line> = Vec::new();
    for (i, l) in lines.enumerate() {
        // A line starting with NUL stands for a part of an over-long line.
        let partial = l.starts_with('\0').then_some(Partial {
            index: 0,
            last: false,
        });
        // A line starting with SOH lets the pending record's timeout pass first.
        if l.starts_with('\u{1}') {
            now += Duration::from_millis(150);
            m.tick(now, &mut |l| outputs.push(l));
            assert!(m.deadline().is_none(), "a record outlived its timeout");
        }
        let line = Line {
            text: l.to_string(),
            lossy: false,
            observed: SystemTime::UNIX_EPOCH,
            partial,
            lines: 1,
            raw_len: l.len() + 1 + i % 2,
        };
        inputs.push(line.clone());
        m.push(line, now, &mut |l| outputs.push(l));
    }
    m.flush(&mut |l| outputs.push(l));
    assert_eq!(m.pending_raw(), 0);

    let mut want = inputs.iter();
    for out in &outputs {
        assert!(out.lines >= 1);
        assert!(
            out.lines as usize <= max_lines,
            "{} lines merged, max {max_lines}",
            out.lines
        );
        if out.lines > 1 {
            assert!(
                out.text.len() as u64 <= max_bytes,
                "{} bytes merged, max {max_bytes}",
                out.text.len()
            );
            assert!(out.partial.is_none(), "a part was merged");
        }
        // Trailing blank lines of a merged record are trimmed (a Go panic ends with one);
        // `lines` still counts them.
        let got: Vec<&str> = out.text.split('\n').collect();
        assert!(
            got.len() <= out.lines as usize,
            "more lines in text than counted"
        );
        let mut raw = 0;
        for k in 0..out.lines as usize {
            let w = want.next().expect("more lines out than in");
            match got.get(k) {
                Some(g) => assert_eq!(*g, w.text, "lines out of order or changed"),
                None => assert!(w.text.is_empty(), "a non-blank line was trimmed"),
            }
            raw += w.raw_len;
        }
        assert_eq!(out.raw_len, raw, "raw byte count");
    }
    assert!(want.next().is_none(), "lines lost");
});
