//! The [`Record`]: one log event as every sink receives it.
//!
//! Invariant: a record never borrows from a read buffer (sinks run on their own threads and
//! batches are shared between sinks through an `Arc`), and what is the same for every record of
//! one app instance (service, pid, restart count, resource) lives once in an `Arc<Origin>`.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which of the app's output streams a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

/// Severity, normalised (OpenTelemetry's severity ranges, named like most log libraries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Finest detail.
    #[serde(alias = "trace")]
    Trace,
    /// Debugging detail.
    #[serde(alias = "debug")]
    Debug,
    /// Normal operation.
    #[serde(alias = "info")]
    Info,
    /// Something unexpected, handled.
    #[serde(alias = "warn")]
    Warn,
    /// An operation failed.
    #[serde(alias = "error")]
    Error,
    /// The app cannot go on.
    #[serde(alias = "fatal")]
    Fatal,
}

/// Where a record stands among the parts of a line longer than `max_line_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    /// 0 for the first part of the line.
    pub index: u32,
    /// True on the part that ends the line.
    pub last: bool,
}

/// What is shared by every record of one source: the app instance and the environment.
#[derive(Debug)]
pub struct Origin {
    /// `service.name`.
    pub service: String,
    /// The app's pid (None in tail mode, where tandem did not start the writer).
    pub pid: Option<u32>,
    /// How many times the app was restarted before this instance.
    pub restart_count: u32,
    /// Resource attributes (host, container, Nomad, systemd, static), already rendered as one
    /// JSON object so the hot path does not serialise them per record.
    pub resource_json: String,
}

/// One log event.
#[derive(Debug, Clone)]
pub struct Record {
    /// When tandem read the line.
    pub observed: SystemTime,
    /// The record's own timestamp, when it had a valid one.
    pub time: Option<SystemTime>,
    /// stdout or stderr.
    pub stream: Stream,
    /// From the record's own level field, else the stream's default.
    pub level: Level,
    /// The message (the whole line for plain text; lines joined by `\n` when merged).
    pub msg: String,
    /// Remaining fields of a JSON or logfmt line (None for plain text or when none remain).
    pub fields: Option<Fields>,
    /// W3C trace id (32 hex digits), from `trace_id`, `traceId` or `traceparent`.
    pub trace_id: Option<String>,
    /// W3C span id (16 hex digits), from `span_id`, `spanId` or `traceparent`.
    pub span_id: Option<String>,
    /// Set when the line was longer than `max_line_bytes`.
    pub partial: Option<Partial>,
    /// The line was not valid UTF-8; invalid bytes were replaced by U+FFFD.
    pub lossy: bool,
    /// Number of lines merged into this record (1 unless multiline merged some).
    pub lines: u32,
    /// The line looked like (or was configured as) JSON/logfmt but did not parse.
    pub parse_error: bool,
    /// Service, instance and resource.
    pub origin: Arc<Origin>,
}

/// The fields of a structured line that are not one of the recognised keys: the text of one
/// JSON object, keys in the line's order, values byte for byte as the app wrote them (numbers
/// keep their precision). Kept as text because most sinks only copy it; [`Fields::to_map`]
/// gives typed values to those that need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields(String);

// === impl Fields ===

impl Fields {
    /// Wrap the text of a JSON object. Only the parser and [`Fields::from_map`] build one, so
    /// the text is valid JSON by construction.
    pub(crate) fn from_json_object(text: String) -> Self {
        Self(text)
    }

    /// Fields from a map (records tandem makes itself, such as drop summaries).
    pub fn from_map(map: &Map<String, Value>) -> Self {
        Self(serde_json::to_string(map).expect("a JSON map serialises"))
    }

    /// The JSON object text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The fields as typed values (parses the text).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

// === impl Stream ===

impl Stream {
    /// `"stdout"` or `"stderr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Level ===

impl Level {
    /// The upper-case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Fatal => "FATAL",
        }
    }

    /// Recognise a level name as log libraries write it (case-insensitive).
    pub fn from_name(s: &str) -> Option<Level> {
        // A word that starts and ends with a visible ASCII character has no space to trim
        // (Unicode's spaces start with a non-ASCII byte): the usual case, without the scan.
        let s = match (s.as_bytes().first(), s.as_bytes().last()) {
            (Some(a), Some(z)) if a.is_ascii_graphic() && z.is_ascii_graphic() => s,
            _ => s.trim(),
        };
        let mut buf = [0u8; 16];
        let lower = buf.get_mut(..s.len())?;
        lower.copy_from_slice(s.as_bytes());
        lower.make_ascii_lowercase();
        Some(match &*lower {
            b"trace" | b"finest" | b"finer" | b"verbose" => Level::Trace,
            b"debug" | b"dbug" | b"fine" | b"config" => Level::Debug,
            b"info" | b"information" | b"informational" | b"notice" | b"inf" => Level::Info,
            b"warn" | b"warning" | b"wrn" => Level::Warn,
            b"error" | b"err" | b"eror" | b"severe" => Level::Error,
            b"fatal" | b"critical" | b"crit" | b"panic" | b"emerg" | b"emergency" | b"alert"
            | b"dpanic" => Level::Fatal,
            _ => return None,
        })
    }

    /// Recognise a numeric level: pino/bunyan (10..60), else syslog (0..7).
    pub fn from_number(n: f64) -> Option<Level> {
        if !(0.0..=100.0).contains(&n) {
            return None;
        }
        Some(match n as u32 {
            10..=19 => Level::Trace,
            20..=29 => Level::Debug,
            30..=39 => Level::Info,
            40..=49 => Level::Warn,
            50..=59 => Level::Error,
            60..=100 => Level::Fatal,
            0..=2 => Level::Fatal,
            3 => Level::Error,
            4 => Level::Warn,
            5 | 6 => Level::Info,
            7 => Level::Debug,
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Record ===

impl Record {
    /// A plain-text record with defaults for everything a parser may later fill in.
    pub fn new(
        observed: SystemTime,
        stream: Stream,
        level: Level,
        msg: String,
        origin: Arc<Origin>,
    ) -> Self {
        Self {
            observed,
            time: None,
            stream,
            level,
            msg,
            fields: None,
            trace_id: None,
            span_id: None,
            partial: None,
            lossy: false,
            lines: 1,
            parse_error: false,
            origin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_and_numbers() {
        assert_eq!(Level::from_name("WARNING"), Some(Level::Warn));
        assert_eq!(Level::from_name("err"), Some(Level::Error));
        assert_eq!(Level::from_name("banana"), None);
        assert_eq!(Level::from_name(" info\t"), Some(Level::Info));
        assert_eq!(Level::from_name("\u{a0}Error\u{3000}"), Some(Level::Error));
        assert_eq!(Level::from_name(""), None);
        assert_eq!(Level::from_number(30.0), Some(Level::Info));
        assert_eq!(Level::from_number(50.0), Some(Level::Error));
        assert_eq!(Level::from_number(3.0), Some(Level::Error));
        assert_eq!(Level::from_number(-1.0), None);
    }
}
