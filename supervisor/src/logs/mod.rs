//! The log pipeline: every line the app writes becomes a structured record, none lost (in the
//! default `block` mode), and the app is never stalled by tandem itself.
//!
//! ```text
//! app stdout/stderr ─pipe─▶ capture ─▶ frame ─▶ multiline ─▶ parse ─▶ redact ─▶ enrich ─▶ backpressure
//!    (or tail: files)                                                   ─▶ [queue ─▶ sink]×N
//!                                                                       ─▶ recent (the admin port's last records)
//! ```
//!
//! Invariant: one reader per source keeps that source's records in order; each sink has its own
//! bounded queue and thread; nothing holds more than a named limit (`max_line_bytes`,
//! `read_buffer`, `queue_records`, multiline `max_bytes`). The lifecycle decides *when* (start,
//! attach, finish readers, shut down); this module only knows *how*. The record's JSON line
//! format is documented in `docs/logs.md`.

pub mod backpressure;
pub mod capture;
pub mod config;
pub mod counters;
pub mod enrich;
pub mod frame;
pub mod inject;
pub mod logfmt;
pub mod multiline;
pub mod parse;
pub mod pipeline;
pub mod process;
pub mod recent;
pub mod record;
pub mod redact;
pub mod sinks;
mod swar;
pub mod tail;

use std::io;
use std::path::PathBuf;

pub use capture::HandedPipe;
pub use config::{Backpressure, LogRules, LogsConfig, LogsConfigError};
pub use counters::{Counters, CountersSnapshot};
pub use enrich::{AppInstance, LogContext};
pub use inject::Injector;
pub use pipeline::{Delivered, HandedReaders, Pipeline};
pub use recent::Recent;
pub use record::{Level, Record, Stream};
pub use sinks::Sink;

/// What can go wrong starting or feeding the pipeline (never a line's content: bad input is
/// kept and flagged, not an error).
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// The `[logs]` table is inconsistent.
    #[error("invalid [logs] config: {0}")]
    Config(String),
    /// A sink could not be opened or its thread started.
    #[error("log sink {sink}: {source}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An app pipe could not be registered for reading.
    #[error("log capture of the app's {stream}: {source}")]
    Capture {
        /// Which stream.
        stream: Stream,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Tail mode could not read or write its checkpoint file.
    #[error("log tail checkpoint {path}: {source}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}
