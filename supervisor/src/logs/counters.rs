//! Self-metrics of the log pipeline: plain atomic counters, exported on `/metrics` later.
//!
//! Invariant: counters only ever grow (relaxed atomics; a snapshot is not a consistent cut, but
//! each value is exact once the pipeline has shut down, which is what tests compare).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

/// Counters of the whole pipeline (shared by readers and sink workers).
#[derive(Debug, Default)]
pub struct Counters {
    /// Lines (and parts of over-long lines) read from all sources.
    pub lines_in: AtomicU64,
    /// Bytes read from all sources.
    pub bytes_in: AtomicU64,
    /// Records that were parts of an over-long line.
    pub partial: AtomicU64,
    /// Lines that were merged into an earlier line's record.
    pub multiline_merges: AtomicU64,
    /// Lines that were meant to be JSON/logfmt but did not parse.
    pub parse_failures: AtomicU64,
    /// Lines that were not valid UTF-8.
    pub lossy: AtomicU64,
    /// Per sink, in the order sinks were started.
    pub sinks: Vec<Arc<SinkCounters>>,
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// The sink's name (`stdout`, `file`).
    pub name: String,
    /// Records written by the sink (drop summaries included).
    pub records_out: AtomicU64,
    /// Records dropped because the sink's queue was full (drop mode).
    pub dropped: AtomicU64,
    /// Write errors (the batch is lost, the sink goes on).
    pub errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    /// See [`Counters::lines_in`].
    pub lines_in: u64,
    /// See [`Counters::bytes_in`].
    pub bytes_in: u64,
    /// See [`Counters::partial`].
    pub partial: u64,
    /// See [`Counters::multiline_merges`].
    pub multiline_merges: u64,
    /// See [`Counters::parse_failures`].
    pub parse_failures: u64,
    /// See [`Counters::lossy`].
    pub lossy: u64,
    /// Per sink.
    pub sinks: Vec<SinkSnapshot>,
}

/// A copy of one sink's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkSnapshot {
    /// The sink's name.
    pub name: String,
    /// See [`SinkCounters::records_out`].
    pub records_out: u64,
    /// See [`SinkCounters::dropped`].
    pub dropped: u64,
    /// See [`SinkCounters::errors`].
    pub errors: u64,
}

/// Add `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

// === impl Counters ===

impl Counters {
    /// Read every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            lines_in: get(&self.lines_in),
            bytes_in: get(&self.bytes_in),
            partial: get(&self.partial),
            multiline_merges: get(&self.multiline_merges),
            parse_failures: get(&self.parse_failures),
            lossy: get(&self.lossy),
            sinks: self
                .sinks
                .iter()
                .map(|s| SinkSnapshot {
                    name: s.name.clone(),
                    records_out: get(&s.records_out),
                    dropped: get(&s.dropped),
                    errors: get(&s.errors),
                })
                .collect(),
        }
    }
}
