//! The `[logs]` table of tandem's config: plain serde data, checked and compiled once by
//! [`LogsConfig::compile`] into [`LogRules`] (the multiline rules and redaction patterns the
//! pipeline runs with), so a bad pattern is a config error before anything starts.
//!
//! Invariant: every struct here is `deny_unknown_fields` + `default`, so an empty `[logs]` (or
//! none at all) is the zero-config pipeline: one `stdout` sink, `block` backpressure, `auto`
//! parsing, no multiline merging. Every limit has a named field and a default that fits two cores
//! and a few MB of memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::multiline::MultilineRules;
use super::record::Level;

/// A `[logs]` value that cannot be used: the dotted key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct LogsConfigError {
    /// The dotted key (`logs.stdout.multiline.start`, `logs.redact.patterns[0]`).
    pub key: String,
    /// What is wrong with its value.
    pub message: String,
}

impl LogsConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The checked form of `[logs]`: what the pipeline runs with, compiled once at config load.
#[derive(Debug, Clone)]
pub struct LogRules {
    /// Multiline rules of the app's stdout.
    pub stdout: MultilineRules,
    /// Multiline rules of the app's stderr.
    pub stderr: MultilineRules,
    /// The redaction patterns (built-in and the operator's).
    pub redact: super::redact::Redactor,
}

impl LogRules {
    /// The multiline rules of `stream`.
    pub fn multiline(&self, stream: super::record::Stream) -> &MultilineRules {
        match stream {
            super::record::Stream::Stdout => &self.stdout,
            super::record::Stream::Stderr => &self.stderr,
        }
    }
}

/// The `[logs]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// A line longer than this is delivered as several records marked `partial`.
    pub max_line_bytes: ByteSize,
    /// Size of one read from a pipe or file (also the most a reader holds unframed).
    pub read_buffer: ByteSize,
    /// Records per batch handed to the sinks (a batch is the unit of a sink queue).
    pub batch_records: usize,
    /// At exit: how long to wait for the app's pipes to reach EOF (a grandchild may hold them
    /// open), and then again for the sinks to flush.
    #[serde(with = "tandem_proxy::duration")]
    pub exit_timeout: Duration,
    /// Handling of the app's stdout.
    pub stdout: StreamConfig,
    /// Handling of the app's stderr.
    pub stderr: StreamConfig,
    /// Static attributes added to every record's resource (e.g. `team = "payments"`).
    pub attributes: BTreeMap<String, String>,
    /// The sinks records fan out to.
    pub sinks: SinksConfig,
    /// Tail mode: follow files instead of (or beside) the app's pipes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail: Option<TailConfig>,
    /// Secrets replaced before any sink: built-in patterns plus the operator's.
    pub redact: super::redact::RedactConfig,
}

/// How one stream of the app (stdout or stderr) is parsed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// `auto` | `json` | `logfmt` | `plain`.
    pub format: ParseFormat,
    /// Severity of a record that does not state its own.
    pub level: Level,
    /// Merging of continuation lines (stack traces) into one record.
    pub multiline: MultilineConfig,
}

/// How a line is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParseFormat {
    /// JSON if the line is a JSON object, logfmt if it looks like logfmt, else plain.
    Auto,
    /// A JSON object per line; anything else is kept as plain text and counted as a failure.
    Json,
    /// `key=value` pairs; anything else is kept as plain text and counted as a failure.
    Logfmt,
    /// The line is the message.
    Plain,
}

/// Multiline merging: either a preset or a custom pair of patterns.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultilineConfig {
    /// `none` (default), `java`, `python`, `go`, `traces` (all three), or `custom`.
    pub preset: MultilinePreset,
    /// custom: a line matching this begins a new record; other lines join the current one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// custom: a line matching this joins the current record; other lines begin a new one.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_: Option<String>,
    /// At most this many lines are merged into one record.
    pub max_lines: usize,
    /// At most this many bytes are merged into one record.
    pub max_bytes: ByteSize,
    /// A pending record is delivered after this long without a continuation line.
    #[serde(with = "tandem_proxy::duration")]
    pub timeout: Duration,
}

/// The multiline presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MultilinePreset {
    /// No merging: one line, one record.
    None,
    /// JVM stack traces (`\tat ...`, `Caused by: ...`, `... 5 more`).
    Java,
    /// Python tracebacks (`Traceback (most recent call last):` ... `ValueError: boom`).
    Python,
    /// Go panics (`panic: ...`, `goroutine 1 [running]:`, frames).
    Go,
    /// Java, Python and Go together.
    Traces,
    /// The `start` / `continue` patterns of this table.
    Custom,
}

/// The sinks.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Records as lines on tandem's stdout.
    pub stdout: StdoutSinkConfig,
    /// Records as JSON lines in a rotating file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSinkConfig>,
}

/// What a sink does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backpressure {
    /// No loss: the reader waits, the pipe fills, the app waits (Docker's default).
    Block,
    /// The app never waits: records that do not fit are counted and a summary record is sent.
    Drop,
}

/// Queue and backpressure settings every sink has (flattened into each sink's table by hand:
/// serde's `flatten` would defeat `deny_unknown_fields`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// `block` or `drop`.
    pub backpressure: Backpressure,
    /// Records the sink's queue holds (rounded up to whole batches).
    pub queue_records: usize,
}

/// The stdout sink.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutSinkConfig {
    /// Turn the sink off (e.g. when only the file sink is wanted).
    pub enabled: bool,
    /// `auto` (pretty on a TTY, else JSON), `json` or `pretty`.
    pub format: StdoutFormat,
    /// `block` (no loss, the app waits) or `drop` (the app never waits; losses counted).
    pub backpressure: Backpressure,
    /// Records the sink's queue holds (rounded up to whole batches).
    pub queue_records: usize,
}

/// The stdout sink's rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StdoutFormat {
    /// Pretty (coloured) when stdout is a terminal, JSON lines otherwise.
    Auto,
    /// One JSON object per line (see docs/logs.md).
    Json,
    /// A readable coloured line.
    Pretty,
}

/// The file sink.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    /// The active file; rotated files are `<path>.1` (newest) ... `<path>.<keep>`.
    pub path: PathBuf,
    /// Rotate when the active file would grow past this size (0: never by size).
    pub max_size: ByteSize,
    /// Rotate when the active file is this old (absent: never by time).
    #[serde(
        with = "tandem_proxy::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub rotate_every: Option<Duration>,
    /// Rotated files kept; older ones are deleted.
    pub keep: usize,
    /// `block` (no loss, the app waits) or `drop` (the app never waits; losses counted).
    pub backpressure: Backpressure,
    /// Records the sink's queue holds (rounded up to whole batches).
    pub queue_records: usize,
}

/// Tail mode: follow files in Nomad's naming (`alloc/logs/<task>.stdout.<N>`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailConfig {
    /// Globs of the files to follow; files that differ only in the trailing `.N` are one
    /// sequence, read in rising N. A name with `stderr` in it is the stderr stream.
    pub paths: Vec<String>,
    /// Where positions are saved so a restarted tandem neither repeats nor skips lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    /// How often files are checked for new data, new files and truncation.
    #[serde(with = "tandem_proxy::duration")]
    pub poll_interval: Duration,
    /// Where a sequence without a checkpoint starts: `beginning` or `end`.
    pub start_at: StartAt,
}

/// Where tail mode starts reading a sequence it has no checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The first byte of the lowest-numbered file.
    Beginning,
    /// The end of the highest-numbered file (only what is written from now on).
    End,
}

// === impl LogsConfig ===

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            max_line_bytes: ByteSize::kib(64),
            read_buffer: ByteSize::kib(64),
            batch_records: 256,
            exit_timeout: Duration::from_secs(5),
            stdout: StreamConfig::default(),
            stderr: StreamConfig {
                level: Level::Warn,
                ..StreamConfig::default()
            },
            attributes: BTreeMap::new(),
            sinks: SinksConfig::default(),
            tail: None,
            redact: super::redact::RedactConfig::default(),
        }
    }
}

impl LogsConfig {
    /// Cross-field checks and pattern compilation, once (config loading calls this); the error
    /// names the offending key.
    pub fn compile(&self) -> Result<LogRules, LogsConfigError> {
        let redact = super::redact::Redactor::new(&self.redact)?;
        let err = |key: &str, message: &str| LogsConfigError::new(key, message);
        if self.max_line_bytes.as_u64() < 16 {
            return Err(err("logs.max_line_bytes", "must be at least 16 bytes"));
        }
        if self.read_buffer.as_u64() < 1024 || self.read_buffer.as_u64() > 16 * 1024 * 1024 {
            return Err(err("logs.read_buffer", "must be between 1KiB and 16MiB"));
        }
        if self.exit_timeout.is_zero() {
            return Err(err("logs.exit_timeout", "must be above 0"));
        }
        if self.batch_records == 0 || self.batch_records > 65_536 {
            return Err(err("logs.batch_records", "must be between 1 and 65536"));
        }
        let multiline = |name: &str, s: &StreamConfig| {
            MultilineRules::compile(&s.multiline).map_err(|e| LogsConfigError {
                key: format!("logs.{name}.multiline.{}", e.key),
                message: e.message,
            })
        };
        let stdout = multiline("stdout", &self.stdout)?;
        let stderr = multiline("stderr", &self.stderr)?;
        for (key, q) in self.sinks.queues() {
            if q.queue_records == 0 {
                return Err(LogsConfigError::new(
                    format!("logs.sinks.{key}.queue_records"),
                    "must be at least 1",
                ));
            }
        }
        if let Some(f) = &self.sinks.file {
            if f.path.as_os_str().is_empty() {
                return Err(err(
                    "logs.sinks.file.path",
                    "required when [logs.sinks.file] is present",
                ));
            }
            if f.rotate_every.is_some_and(|d| d < Duration::from_secs(1)) {
                return Err(err("logs.sinks.file.rotate_every", "must be at least 1s"));
            }
        }
        if let Some(t) = &self.tail {
            if t.paths.is_empty() {
                return Err(err("logs.tail.paths", "at least one glob is required"));
            }
            for p in &t.paths {
                glob::Pattern::new(p)
                    .map_err(|e| LogsConfigError::new("logs.tail.paths", format!("{p:?}: {e}")))?;
            }
            if t.poll_interval.is_zero() {
                return Err(err("logs.tail.poll_interval", "must be above 0"));
            }
        }
        Ok(LogRules {
            stdout,
            stderr,
            redact,
        })
    }

    /// The per-stream settings.
    pub fn stream(&self, stream: super::record::Stream) -> &StreamConfig {
        match stream {
            super::record::Stream::Stdout => &self.stdout,
            super::record::Stream::Stderr => &self.stderr,
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            format: ParseFormat::Auto,
            level: Level::Info,
            multiline: MultilineConfig::default(),
        }
    }
}

impl Default for MultilineConfig {
    fn default() -> Self {
        Self {
            preset: MultilinePreset::None,
            start: None,
            continue_: None,
            max_lines: 500,
            max_bytes: ByteSize::kib(256),
            timeout: Duration::from_secs(1),
        }
    }
}

impl SinksConfig {
    /// The queue settings of each enabled sink, with its config key.
    fn queues(&self) -> Vec<(&'static str, QueueConfig)> {
        let mut v = Vec::new();
        if self.stdout.enabled {
            v.push(("stdout", self.stdout.queue()));
        }
        if let Some(f) = &self.file {
            v.push(("file", f.queue()));
        }
        v
    }
}

impl StdoutSinkConfig {
    /// Queue and backpressure of this sink.
    pub fn queue(&self) -> QueueConfig {
        QueueConfig {
            backpressure: self.backpressure,
            queue_records: self.queue_records,
        }
    }
}

impl FileSinkConfig {
    /// Queue and backpressure of this sink.
    pub fn queue(&self) -> QueueConfig {
        QueueConfig {
            backpressure: self.backpressure,
            queue_records: self.queue_records,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backpressure: Backpressure::Block,
            queue_records: 8192,
        }
    }
}

impl Default for StdoutSinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            format: StdoutFormat::Auto,
            backpressure: Backpressure::Block,
            queue_records: 8192,
        }
    }
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            max_size: ByteSize::mib(100),
            rotate_every: None,
            keep: 5,
            backpressure: Backpressure::Block,
            queue_records: 8192,
        }
    }
}

impl Default for TailConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            checkpoint: None,
            poll_interval: Duration::from_millis(250),
            start_at: StartAt::Beginning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_is_the_default() {
        let c: LogsConfig = toml::from_str("").expect("empty config parses");
        assert_eq!(c, LogsConfig::default());
        assert!(c.compile().is_ok());
        assert_eq!(c.stderr.level, Level::Warn);
    }

    #[test]
    fn human_sizes_durations_and_unknown_keys() {
        let c: LogsConfig = toml::from_str(
            r#"
            max_line_bytes = "16KiB"
            [stderr.multiline]
            preset = "java"
            timeout = "250ms"
            [sinks.file]
            path = "/tmp/x.log"
            max_size = "1MiB"
            rotate_every = "1h"
            keep = 3
            backpressure = "drop"
            "#,
        )
        .expect("valid config parses");
        assert_eq!(c.max_line_bytes.as_u64(), 16 * 1024);
        assert_eq!(c.stderr.multiline.timeout, Duration::from_millis(250));
        let f = c.sinks.file.as_ref().expect("file sink present");
        assert_eq!(f.backpressure, Backpressure::Drop);
        assert_eq!(f.rotate_every, Some(Duration::from_secs(3600)));
        assert!(c.compile().is_ok());

        let err = toml::from_str::<LogsConfig>("max_line_byte = 3").expect_err("unknown key");
        assert!(err.to_string().contains("max_line_byte"), "{err}");
        let err =
            toml::from_str::<LogsConfig>("[sinks.file]\npath = \"x\"\nbackpresure = \"drop\"")
                .expect_err("unknown key in a sink");
        assert!(err.to_string().contains("backpresure"), "{err}");
        // The defaults survive a round trip through TOML (the core renders them).
        let text = toml::to_string(&LogsConfig::default()).expect("serialises");
        assert_eq!(
            toml::from_str::<LogsConfig>(&text).expect("parses"),
            LogsConfig::default()
        );
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = LogsConfig::default();
        c.stdout.multiline.preset = MultilinePreset::Custom;
        c.stdout.multiline.start = Some("([".into());
        let e = c.compile().expect_err("bad regex");
        assert_eq!(e.key, "logs.stdout.multiline.start", "{e}");
    }
}
