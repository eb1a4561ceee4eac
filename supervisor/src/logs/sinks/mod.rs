//! Sinks: where records go. Each sink runs on its own thread behind its own bounded queue.
//!
//! Invariant: a [`Sink`] sees records in the order each source produced them and is driven by
//! exactly one worker thread ([`worker`]), so a sink may block (a full stdout pipe, a slow disk)
//! without stalling anything but its own queue; what happens when that queue is full is the
//! sink's backpressure mode ([`crate::logs::backpressure`]). An OTLP logs sink plugs in by
//! implementing [`Sink`] (its exporter batches on its own) and adding a config entry in
//! `Pipeline::start`.

use std::io;

use super::record::Record;

pub mod file;
pub mod json;
pub mod otlp;
pub mod pretty;
pub mod stdout;
pub mod worker;

/// A destination for records.
pub trait Sink: Send + 'static {
    /// Write a batch; an error loses this batch (counted), the sink is called again with the next.
    fn write(&mut self, records: &[Record]) -> io::Result<()>;
    /// Push buffered data out (called whenever the queue runs empty, and at shutdown).
    fn flush(&mut self) -> io::Result<()>;
    /// Reopen output files (SIGHUP, after logrotate moved them away).
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
}
