//! The stdout sink: records as JSON lines on tandem's stdout (pretty when it is a terminal).
//!
//! Invariant: tandem's own diagnostics never go to stdout (they go to stderr), so a consumer of
//! tandem's stdout reads nothing but records, one per line.

use std::io::{self, IsTerminal, Write};

use super::super::config::{StdoutFormat, StdoutSinkConfig};
use super::super::record::Record;
use super::json::JsonRenderer;
use super::{pretty, Sink};

/// Writes to any `Write` (the process's stdout in production, a buffer in tests).
pub struct StdoutSink<W: Write + Send + 'static> {
    out: io::BufWriter<W>,
    pretty: bool,
    json: JsonRenderer,
    buf: Vec<u8>,
}

// === impl StdoutSink ===

impl StdoutSink<io::Stdout> {
    /// The sink on the process's stdout.
    pub fn from_config(cfg: &StdoutSinkConfig) -> Self {
        let stdout = io::stdout();
        let pretty = match cfg.format {
            StdoutFormat::Auto => stdout.is_terminal(),
            StdoutFormat::Json => false,
            StdoutFormat::Pretty => true,
        };
        Self::new(stdout, pretty)
    }
}

impl<W: Write + Send + 'static> StdoutSink<W> {
    /// A sink writing JSON lines (or the pretty form) to `out`.
    pub fn new(out: W, pretty: bool) -> Self {
        Self {
            out: io::BufWriter::with_capacity(64 * 1024, out),
            pretty,
            json: JsonRenderer::default(),
            buf: Vec::with_capacity(64 * 1024),
        }
    }
}

impl<W: Write + Send + 'static> Sink for StdoutSink<W> {
    fn write(&mut self, records: &[Record]) -> io::Result<()> {
        self.buf.clear();
        for r in records {
            if self.pretty {
                pretty::render(r, &mut self.buf);
            } else {
                self.json.render(r, &mut self.buf);
            }
        }
        self.out.write_all(&self.buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
