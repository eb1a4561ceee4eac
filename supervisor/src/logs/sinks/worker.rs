//! The sink worker: one OS thread per sink, draining that sink's bounded queue.
//!
//! Invariant: the worker is the only caller of its [`Sink`]; it flushes whenever its queue runs
//! empty (so a quiet app's last line is out at once) and once more when every sender is gone,
//! then reports done. Drop summaries are written by the worker, before the next batch and at
//! the end, so they never need queue space. A panicking sink drops the done signal, which reads as done too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::super::backpressure::DropLedger;
use super::super::config::{Backpressure, QueueConfig};
use super::super::counters::{add, SinkCounters};
use super::super::record::Record;
use super::super::LogsError;
use super::Sink;

/// What a sink's queue carries.
#[derive(Debug)]
pub enum SinkMsg {
    /// Records, shared by all sinks.
    Batch(Arc<Vec<Record>>),
    /// Answered once everything queued before it is written and flushed.
    Barrier(oneshot::Sender<()>),
    /// Nothing to write: look at the reopen flag.
    Wake,
}

/// The pipeline's handle on one sink worker.
#[derive(Debug)]
pub struct SinkHandle {
    /// The sink's name (`stdout`, `file`).
    pub name: String,
    /// The queue into the worker.
    pub tx: mpsc::Sender<SinkMsg>,
    /// What a sender does when the queue is full.
    pub mode: Backpressure,
    /// The sink's counters.
    pub counters: Arc<SinkCounters>,
    /// Records dropped and not yet reported (drop mode).
    pub ledger: Arc<DropLedger>,
    reopen: Arc<AtomicBool>,
    done: Option<oneshot::Receiver<()>>,
}

/// Start the worker thread for `sink` with a queue of `queue.queue_records` records.
pub fn spawn(
    name: &str,
    sink: Box<dyn Sink>,
    queue: &QueueConfig,
    batch_records: usize,
) -> Result<SinkHandle, LogsError> {
    let batches = queue.queue_records.div_ceil(batch_records.max(1)).max(1);
    let (tx, rx) = mpsc::channel(batches);
    let (done_tx, done_rx) = oneshot::channel();
    let counters = Arc::new(SinkCounters {
        name: name.to_string(),
        ..SinkCounters::default()
    });
    let reopen = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(DropLedger::default());
    let w = Worker {
        ledger: ledger.clone(),
        name: name.to_string(),
        sink,
        rx,
        counters: counters.clone(),
        reopen: reopen.clone(),
    };
    std::thread::Builder::new()
        .name(format!("tandem-sink-{name}"))
        .spawn(move || {
            w.run();
            let _ = done_tx.send(());
        })
        .map_err(|e| LogsError::Sink {
            sink: name.to_string(),
            source: e,
        })?;
    Ok(SinkHandle {
        name: name.to_string(),
        tx,
        mode: queue.backpressure,
        counters,
        ledger,
        reopen,
        done: Some(done_rx),
    })
}

// === impl SinkHandle ===

impl SinkHandle {
    /// Ask the worker to reopen its files before its next write.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
        // If the queue is full the worker is busy and will see the flag on its next message.
        let _ = self.tx.try_send(SinkMsg::Wake);
    }

    /// A second handle on the same queue (without the done signal, which only the pipeline
    /// holds).
    pub fn clone_sender(&self) -> SinkHandle {
        SinkHandle {
            name: self.name.clone(),
            tx: self.tx.clone(),
            mode: self.mode,
            counters: self.counters.clone(),
            ledger: self.ledger.clone(),
            reopen: self.reopen.clone(),
            done: None,
        }
    }

    /// The signal that the worker has written everything and stopped.
    pub fn take_done(&mut self) -> Option<oneshot::Receiver<()>> {
        self.done.take()
    }
}

struct Worker {
    name: String,
    sink: Box<dyn Sink>,
    rx: mpsc::Receiver<SinkMsg>,
    counters: Arc<SinkCounters>,
    ledger: Arc<DropLedger>,
    reopen: Arc<AtomicBool>,
}

// === impl Worker ===

impl Worker {
    fn run(mut self) {
        loop {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.flush();
                    match self.rx.blocking_recv() {
                        Some(m) => m,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            if self.reopen.swap(false, Ordering::Relaxed) {
                if let Err(e) = self.sink.reopen() {
                    tracing::warn!(sink = %self.name, error = %e, "log sink: reopen failed");
                }
            }
            match msg {
                SinkMsg::Batch(records) => {
                    self.summaries();
                    self.write(&records);
                }
                SinkMsg::Barrier(ack) => {
                    self.flush();
                    let _ = ack.send(());
                }
                SinkMsg::Wake => {}
            }
        }
        self.summaries();
        self.flush();
    }

    /// Report records dropped since the last report (drop mode), before what comes next.
    fn summaries(&mut self) {
        let s = self.ledger.take_summaries(&self.name);
        if !s.is_empty() {
            self.write(&s);
        }
    }

    fn write(&mut self, records: &[Record]) {
        match self.sink.write(records) {
            Ok(()) => add(&self.counters.records_out, records.len() as u64),
            Err(e) => self.error("write", &e),
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.sink.flush() {
            self.error("flush", &e);
        }
    }

    fn error(&self, what: &str, e: &std::io::Error) {
        let n = self.counters.errors.fetch_add(1, Ordering::Relaxed) + 1;
        // Say it the first time and then at powers of two, not once per batch.
        if n.is_power_of_two() {
            tracing::warn!(sink = %self.name, errors = n, error = %e, "log sink: {what} failed");
        }
    }
}
