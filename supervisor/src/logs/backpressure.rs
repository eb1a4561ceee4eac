//! Backpressure: how a reader hands batches to every sink queue, per sink `block` or `drop`.
//!
//! Invariant: in `block` mode a reader waits for queue space (the pipe fills, the app waits: no
//! loss); in `drop` mode it never waits: a batch that does not fit is entered in that sink's
//! [`DropLedger`], and the sink's worker writes a summary record (how many records of which
//! stream were lost, first and last time) before its next batch and before it stops. The
//! summary needs no queue space, so it is never lost itself.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::config::Backpressure;
use super::counters::{add, SinkCounters};
use super::recent::Recent;
use super::record::{Fields, Level, Origin, Record, Stream};
use super::sinks::json::format_time;
use super::sinks::worker::{SinkHandle, SinkMsg};

/// One reader's way into every sink.
#[derive(Debug)]
pub struct Outlet {
    outs: Vec<Out>,
    stream: Stream,
    /// The app's recent records (the admin port's view); None for tandem's own records.
    tap: Option<Arc<Recent>>,
}

#[derive(Debug)]
struct Out {
    tx: mpsc::Sender<SinkMsg>,
    mode: Backpressure,
    counters: Arc<SinkCounters>,
    ledger: Arc<DropLedger>,
}

/// Records dropped by one sink and not yet reported, per stream.
#[derive(Debug, Default)]
pub struct DropLedger {
    lost: Mutex<[Option<Lost>; 2]>,
}

/// Records of one stream dropped since the last summary.
#[derive(Debug, Clone)]
pub struct Lost {
    count: u64,
    first: SystemTime,
    last: SystemTime,
    origin: Arc<Origin>,
}

// === impl Outlet ===

impl Outlet {
    /// An outlet into `sinks` for records of `stream`.
    pub fn new(sinks: &[SinkHandle], stream: Stream) -> Self {
        let outs = sinks
            .iter()
            .map(|s| Out {
                tx: s.tx.clone(),
                mode: s.mode,
                counters: s.counters.clone(),
                ledger: s.ledger.clone(),
            })
            .collect();
        Self {
            outs,
            stream,
            tap: None,
        }
    }

    /// Also keep what this outlet sends in `recent` (the app's readers do; the access log
    /// does not).
    pub fn with_tap(mut self, recent: Arc<Recent>) -> Self {
        self.tap = Some(recent);
        self
    }

    /// Hand each batch to every sink, in order (see [`Outlet::send`]).
    pub async fn send_all(&mut self, batches: Vec<Vec<Record>>) {
        for batch in batches {
            self.send(batch).await;
        }
    }

    /// Hand `records` to every sink, waiting or dropping as each sink's mode says.
    pub async fn send(&mut self, records: Vec<Record>) {
        let Some(origin) = records.first().map(|r| r.origin.clone()) else {
            return;
        };
        let records = Arc::new(records);
        if let Some(tap) = &self.tap {
            tap.push(&records);
        }
        for out in &mut self.outs {
            let msg = SinkMsg::Batch(records.clone());
            match out.mode {
                // An error means the worker is gone (shutdown): nothing left to do.
                Backpressure::Block => {
                    let _ = out.tx.send(msg).await;
                }
                Backpressure::Drop => match out.tx.try_send(msg) {
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let n = records.len() as u64;
                        add(&out.counters.dropped, n);
                        out.ledger.enter(self.stream, n, &origin);
                    }
                },
            }
        }
    }

    /// Wait until every sink has written and flushed everything sent before this call.
    /// Returns false if a sink is gone or `deadline` passed.
    pub async fn barrier(&self, deadline: Instant) -> bool {
        let mut acks = Vec::with_capacity(self.outs.len());
        for out in &self.outs {
            let (tx, rx) = oneshot::channel();
            match tokio::time::timeout_at(deadline, out.tx.send(SinkMsg::Barrier(tx))).await {
                Ok(Ok(())) => acks.push(rx),
                _ => return false,
            }
        }
        for rx in acks {
            if !matches!(tokio::time::timeout_at(deadline, rx).await, Ok(Ok(()))) {
                return false;
            }
        }
        true
    }
}

// === impl DropLedger ===

impl DropLedger {
    fn enter(&self, stream: Stream, n: u64, origin: &Arc<Origin>) {
        let now = SystemTime::now();
        let mut lost = self.lost.lock().expect("drop ledger lock poisoned");
        let l = lost[stream as usize].get_or_insert_with(|| Lost {
            count: 0,
            first: now,
            last: now,
            origin: origin.clone(),
        });
        l.count += n;
        l.last = now;
    }

    /// Summary records for everything entered since the last call (for the sink worker).
    pub fn take_summaries(&self, sink: &str) -> Vec<Record> {
        let taken = std::mem::take(&mut *self.lost.lock().expect("drop ledger lock poisoned"));
        [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip(taken)
            .filter_map(|(stream, l)| l.map(|l| summary(stream, sink, l)))
            .collect()
    }
}

/// The record that tells a sink's reader how many records it did not get, and when.
fn summary(stream: Stream, sink: &str, l: Lost) -> Record {
    let mut fields = Map::new();
    fields.insert("tandem.dropped".into(), Value::from(l.count));
    fields.insert(
        "tandem.dropped_first".into(),
        Value::from(format_time(l.first)),
    );
    fields.insert(
        "tandem.dropped_last".into(),
        Value::from(format_time(l.last)),
    );
    fields.insert("tandem.sink".into(), Value::from(sink));
    let msg = format!(
        "tandem dropped {} {stream} records: the {sink} sink could not keep up (backpressure = \"drop\")",
        l.count
    );
    let mut r = Record::new(SystemTime::now(), stream, Level::Warn, msg, l.origin);
    r.fields = Some(Fields::from_map(&fields));
    r
}
