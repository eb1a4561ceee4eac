//! Multiline: continuation lines (stack traces) are merged into the record they continue.
//!
//! Invariant: at most one record is pending, bounded by `max_lines` and `max_bytes`, and it is
//! delivered when a line that does not continue it arrives, when its deadline (`timeout` after
//! its last line) passes, or at end of stream. Time comes in as an argument (tokio's clock in the
//! reader), so the logic is testable without sleeping. Parts of an over-long line bypass merging.

use std::time::{Duration, SystemTime};

use regex::Regex;
use tokio::time::Instant;

use super::config::{LogsConfigError, MultilineConfig, MultilinePreset};
use super::record::Partial;

/// One framed line (or a merged group of lines) on its way to the parser.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The text, lines joined with `\n` when merged.
    pub text: String,
    /// Some input bytes were not UTF-8.
    pub lossy: bool,
    /// When the (first) line was read.
    pub observed: SystemTime,
    /// Part of an over-long line.
    pub partial: Option<Partial>,
    /// Physical lines in `text`.
    pub lines: u32,
    /// Input bytes this covers, newlines included (for tail checkpoints).
    pub raw_len: usize,
}

/// The compiled rules of one stream (cheap to clone: the regexes share their programs).
#[derive(Debug, Clone)]
pub struct MultilineRules {
    kind: Kind,
    max_lines: u32,
    max_bytes: usize,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Kind {
    Off,
    Start(Regex),
    Continue(Regex),
    Presets {
        java: Option<Regex>,
        python: bool,
        go: Option<Regex>,
    },
}

/// Python traceback progress of the pending record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Py {
    Outside,
    /// Inside `Traceback (most recent call last):` frames.
    Frames,
    /// After the `ValueError: ...` line.
    Exception,
    /// After `During handling ...` / `The above exception ...`.
    Chained,
}

/// The merging state of one stream.
#[derive(Debug)]
pub struct Multiline {
    rules: MultilineRules,
    pending: Option<Line>,
    deadline: Option<Instant>,
    py: Py,
    go_panic: bool,
}

/// Merges in progress: what a reader reports for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    /// Lines that joined an earlier line.
    pub merged_lines: u64,
}

const JAVA_CONTINUE: &str =
    r"^(?:\s+at\s|\s+\.\.\.\s*\d+\s+(?:more|common frames omitted)|\s*Caused by:|\s*Suppressed:)";
const GO_CONTINUE: &str =
    r"^(?:$|goroutine \d+ \[|\t|created by |\[signal |[\w.*/()\-]+\(.*\)$|exit status \d+$)";
const PY_START: &str = "Traceback (most recent call last):";

// === impl MultilineRules ===

impl MultilineRules {
    /// Compile the config; the error names the key under `multiline` (`start`, `continue`,
    /// ...) and the bad pattern.
    pub fn compile(cfg: &MultilineConfig) -> Result<Self, LogsConfigError> {
        let re = |key: &str, p: &str| {
            Regex::new(p).map_err(|e| LogsConfigError::new(key, format!("pattern {p:?}: {e}")))
        };
        let fixed = |p: &str| Regex::new(p).expect("built-in pattern compiles");
        let kind = match cfg.preset {
            MultilinePreset::None => Kind::Off,
            MultilinePreset::Java => Kind::Presets {
                java: Some(fixed(JAVA_CONTINUE)),
                python: false,
                go: None,
            },
            MultilinePreset::Python => Kind::Presets {
                java: None,
                python: true,
                go: None,
            },
            MultilinePreset::Go => Kind::Presets {
                java: None,
                python: false,
                go: Some(fixed(GO_CONTINUE)),
            },
            MultilinePreset::Traces => Kind::Presets {
                java: Some(fixed(JAVA_CONTINUE)),
                python: true,
                go: Some(fixed(GO_CONTINUE)),
            },
            MultilinePreset::Custom => match (&cfg.start, &cfg.continue_) {
                (Some(s), None) => Kind::Start(re("start", s)?),
                (None, Some(c)) => Kind::Continue(re("continue", c)?),
                _ => {
                    return Err(LogsConfigError::new(
                        "preset",
                        "preset \"custom\" needs exactly one of `start` or `continue`",
                    ))
                }
            },
        };
        if !matches!(cfg.preset, MultilinePreset::Custom)
            && (cfg.start.is_some() || cfg.continue_.is_some())
        {
            return Err(LogsConfigError::new(
                "preset",
                "`start` and `continue` need preset = \"custom\"",
            ));
        }
        if cfg.max_lines == 0 {
            return Err(LogsConfigError::new("max_lines", "must be at least 1"));
        }
        if cfg.timeout.is_zero() {
            return Err(LogsConfigError::new("timeout", "must be above 0"));
        }
        Ok(Self {
            kind,
            max_lines: u32::try_from(cfg.max_lines).unwrap_or(u32::MAX),
            max_bytes: usize::try_from(cfg.max_bytes.as_u64()).unwrap_or(usize::MAX),
            timeout: cfg.timeout,
        })
    }
}

// === impl Multiline ===

impl Multiline {
    /// A merger with no pending record.
    pub fn new(rules: MultilineRules) -> Self {
        Self {
            rules,
            pending: None,
            deadline: None,
            py: Py::Outside,
            go_panic: false,
        }
    }

    /// When the pending record must be delivered even if no further line arrives.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Input bytes held in the pending record.
    pub fn pending_raw(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.raw_len)
    }

    /// Feed one framed line; completed records go to `out`. Returns true if the line joined
    /// the pending record.
    pub fn push(&mut self, line: Line, now: Instant, out: &mut impl FnMut(Line)) -> bool {
        if matches!(self.rules.kind, Kind::Off) {
            out(line);
            return false;
        }
        if line.partial.is_some() {
            self.flush(out);
            out(line);
            return false;
        }
        let join = self.pending.is_some() && self.continues(&line.text);
        let fits = self.pending.as_ref().is_some_and(|p| {
            p.lines < self.rules.max_lines
                && p.text.len() + 1 + line.text.len() <= self.rules.max_bytes
        });
        if join && fits {
            let p = self.pending.as_mut().expect("join implies pending");
            p.text.push('\n');
            p.text.push_str(&line.text);
            p.lossy |= line.lossy;
            p.lines += 1;
            p.raw_len += line.raw_len;
        } else {
            if let Some(p) = self.pending.take() {
                out(finish(p));
            }
            if !join {
                self.begin(&line.text);
            }
            self.pending = Some(line);
        }
        self.deadline = Some(now + self.rules.timeout);
        join && fits
    }

    /// Deliver the pending record if its deadline has passed.
    pub fn tick(&mut self, now: Instant, out: &mut impl FnMut(Line)) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.flush(out);
        }
    }

    /// Deliver the pending record now (end of stream, or before a part).
    pub fn flush(&mut self, out: &mut impl FnMut(Line)) {
        if let Some(p) = self.pending.take() {
            out(finish(p));
        }
        self.deadline = None;
        self.py = Py::Outside;
        self.go_panic = false;
    }

    /// Does `text` continue the pending record? Advances the preset state machines.
    fn continues(&mut self, text: &str) -> bool {
        match &self.rules.kind {
            Kind::Off => false,
            Kind::Start(re) => !re.is_match(text),
            Kind::Continue(re) => re.is_match(text),
            Kind::Presets { java, python, go } => {
                if *python {
                    if let Some(join) = python_step(&mut self.py, text) {
                        return join;
                    }
                }
                if self.go_panic && go.as_ref().is_some_and(|re| re.is_match(text)) {
                    return true;
                }
                java.as_ref().is_some_and(|re| re.is_match(text))
            }
        }
    }

    /// A new record begins with `text`: reset the preset states.
    fn begin(&mut self, text: &str) {
        self.py = if text == PY_START {
            Py::Frames
        } else {
            Py::Outside
        };
        self.go_panic = text.starts_with("panic: ") || text.starts_with("fatal error: ");
    }
}

/// The Python state machine: Some(join) when it decides, None when not in a traceback.
fn python_step(py: &mut Py, text: &str) -> Option<bool> {
    {
        let indented = text.starts_with(' ') || text.starts_with('\t');
        let chain = text.starts_with("During handling of the above exception")
            || text.starts_with("The above exception was the direct cause");
        let (join, next) = match *py {
            Py::Outside => return None,
            Py::Frames if indented || text.is_empty() => (true, Py::Frames),
            Py::Frames => (true, Py::Exception),
            Py::Exception if chain => (true, Py::Chained),
            Py::Exception if text.is_empty() => (true, Py::Exception),
            Py::Chained if text == PY_START => (true, Py::Frames),
            Py::Chained if text.is_empty() => (true, Py::Chained),
            Py::Exception | Py::Chained => (false, Py::Outside),
        };
        *py = next;
        Some(join)
    }
}

/// A merged record does not end in the blank lines that were only joined tentatively.
fn finish(mut line: Line) -> Line {
    while line.lines > 1 && line.text.ends_with('\n') {
        line.text.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(preset: MultilinePreset) -> MultilineRules {
        MultilineRules::compile(&MultilineConfig {
            preset,
            ..MultilineConfig::default()
        })
        .expect("preset compiles")
    }

    fn line(t: &str) -> Line {
        Line {
            text: t.to_string(),
            lossy: false,
            observed: SystemTime::UNIX_EPOCH,
            partial: None,
            lines: 1,
            raw_len: t.len() + 1,
        }
    }

    fn run(preset: MultilinePreset, text: &str) -> Vec<String> {
        let mut m = Multiline::new(rules(preset));
        let mut out = Vec::new();
        let now = Instant::now();
        for l in text.lines() {
            m.push(line(l), now, &mut |r| out.push(r.text));
        }
        m.flush(&mut |r| out.push(r.text));
        out
    }

    const JAVA: &str = "starting\nException in thread \"main\" java.lang.IllegalStateException: boom\n\tat Main.b(Main.java:9)\n\tat Main.main(Main.java:3)\nCaused by: java.lang.RuntimeException: inner\n\tat Main.c(Main.java:12)\n\t... 1 more\nnext line\n";
    const PYTHON: &str = "starting\nTraceback (most recent call last):\n  File \"x.py\", line 3, in <module>\n    f()\n  File \"x.py\", line 2, in f\n    raise ValueError(\"a\")\nValueError: a\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"x.py\", line 5, in <module>\n    g()\nKeyError: 'b'\nnext line\n";
    const GO: &str = "starting\npanic: runtime error: index out of range [5] with length 3\n\ngoroutine 1 [running]:\nmain.f(...)\n\t/app/main.go:8\nmain.main()\n\t/app/main.go:4 +0x1d\nexit status 2\n";

    #[test]
    fn java_trace_is_one_record() {
        let out = run(MultilinePreset::Java, JAVA);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert!(out[1].starts_with("Exception in thread") && out[1].ends_with("... 1 more"));
        assert_eq!(out[1].lines().count(), 6);
    }

    #[test]
    fn python_chained_traceback_is_one_record() {
        let out = run(MultilinePreset::Python, PYTHON);
        assert_eq!(
            out,
            vec!["starting", &PYTHON[9..PYTHON.len() - 11], "next line"]
        );
    }

    #[test]
    fn go_panic_is_one_record() {
        let out = run(MultilinePreset::Go, GO);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert!(out[1].starts_with("panic: ") && out[1].ends_with("exit status 2"));
    }

    #[test]
    fn traces_preset_handles_all_three_in_one_stream() {
        let all = format!("{JAVA}{PYTHON}{GO}");
        let out = run(MultilinePreset::Traces, &all);
        assert_eq!(out.len(), 3 + 3 + 2, "{out:#?}");
    }

    #[test]
    fn none_passes_lines_through_and_custom_start_merges() {
        assert_eq!(run(MultilinePreset::None, JAVA).len(), JAVA.lines().count());
        let cfg = MultilineConfig {
            preset: MultilinePreset::Custom,
            start: Some(r"^\d{4}-".into()),
            ..MultilineConfig::default()
        };
        let mut m = Multiline::new(MultilineRules::compile(&cfg).expect("compiles"));
        let mut out = Vec::new();
        let now = Instant::now();
        for l in ["2024- a", "x", "y", "2024- b", "z"] {
            m.push(line(l), now, &mut |r| out.push(r.text));
        }
        m.flush(&mut |r| out.push(r.text));
        assert_eq!(out, vec!["2024- a\nx\ny", "2024- b\nz"]);
    }

    #[test]
    fn max_lines_and_timeout_bound_a_record() {
        let cfg = MultilineConfig {
            preset: MultilinePreset::Java,
            max_lines: 3,
            timeout: Duration::from_millis(100),
            ..MultilineConfig::default()
        };
        let mut m = Multiline::new(MultilineRules::compile(&cfg).expect("compiles"));
        let mut out: Vec<Line> = Vec::new();
        let t0 = Instant::now();
        for l in ["E", "\tat a", "\tat b", "\tat c", "\tat d"] {
            m.push(line(l), t0, &mut |r| out.push(r));
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].lines, 3);
        // Not yet due, then due.
        m.tick(t0 + Duration::from_millis(50), &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(m.deadline(), Some(t0 + Duration::from_millis(100)));
        m.tick(t0 + Duration::from_millis(100), &mut |r| out.push(r));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].text, "\tat c\n\tat d");
        assert_eq!(out[1].raw_len, 12);
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn custom_needs_exactly_one_pattern() {
        let cfg = MultilineConfig {
            preset: MultilinePreset::Custom,
            ..MultilineConfig::default()
        };
        assert!(MultilineRules::compile(&cfg).is_err());
    }
}
