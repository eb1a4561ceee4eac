//! Backpressure: how a reader hands batches to every sink queue, per sink `block` or `drop`.
//!
//! Invariant: in `block` mode a reader waits for queue space (the pipe fills, the app waits: no
//! loss); in `drop` mode it never waits: a batch that does not fit is counted in that sink's
//! `dropped`, and the next batch that fits is preceded by a summary record saying how many
//! records were lost and between which times. At end of stream an outstanding summary is sent
//! waiting (the app has closed its pipe, so waiting stalls nobody), bounded by a deadline.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::config::Backpressure;
use super::counters::{add, SinkCounters};
use super::record::{Level, Origin, Record, Stream};
use super::sinks::json::format_time;
use super::sinks::worker::{SinkHandle, SinkMsg};

/// One reader's way into every sink.
#[derive(Debug)]
pub struct Outlet {
    outs: Vec<Out>,
    stream: Stream,
    origin: Arc<Origin>,
}

#[derive(Debug)]
struct Out {
    name: String,
    tx: mpsc::Sender<SinkMsg>,
    mode: Backpressure,
    counters: Arc<SinkCounters>,
    lost: Option<Lost>,
}

/// Records dropped since the last summary.
#[derive(Debug, Clone, Copy)]
struct Lost {
    count: u64,
    first: SystemTime,
    last: SystemTime,
}

// === impl Outlet ===

impl Outlet {
    /// An outlet into `sinks` for records of `stream` from `origin` (used for summaries).
    pub fn new(sinks: &[SinkHandle], stream: Stream, origin: Arc<Origin>) -> Self {
        let outs = sinks
            .iter()
            .map(|s| Out {
                name: s.name.clone(),
                tx: s.tx.clone(),
                mode: s.mode,
                counters: s.counters.clone(),
                lost: None,
            })
            .collect();
        Self {
            outs,
            stream,
            origin,
        }
    }

    /// Hand `records` to every sink in batches of at most `batch` records.
    pub async fn send_all(&mut self, mut records: Vec<Record>, batch: usize) {
        let batch = batch.max(1);
        while records.len() > batch {
            let rest = records.split_off(batch);
            self.send(std::mem::replace(&mut records, rest)).await;
        }
        self.send(records).await;
    }

    /// Hand `records` to every sink, waiting or dropping as each sink's mode says.
    pub async fn send(&mut self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let records = Arc::new(records);
        for out in &mut self.outs {
            let summary = out
                .lost
                .map(|l| summary(&self.origin, self.stream, &out.name, l));
            let msg = SinkMsg::Batch {
                summary,
                records: records.clone(),
            };
            match out.mode {
                Backpressure::Block => {
                    if out.tx.send(msg).await.is_ok() {
                        out.lost = None;
                    }
                }
                Backpressure::Drop => match out.tx.try_send(msg) {
                    Ok(()) => out.lost = None,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let n = records.len() as u64;
                        add(&out.counters.dropped, n);
                        let now = SystemTime::now();
                        let l = out.lost.get_or_insert(Lost {
                            count: 0,
                            first: now,
                            last: now,
                        });
                        l.count += n;
                        l.last = now;
                    }
                    // The worker is gone (shutdown): nothing to count against the app.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                },
            }
        }
    }

    /// End of stream: deliver outstanding drop summaries, waiting until `deadline` at most.
    pub async fn close(&mut self, deadline: Instant) {
        for out in &mut self.outs {
            if let Some(l) = out.lost.take() {
                let msg = SinkMsg::Batch {
                    summary: Some(summary(&self.origin, self.stream, &out.name, l)),
                    records: Arc::new(Vec::new()),
                };
                if tokio::time::timeout_at(deadline, out.tx.send(msg))
                    .await
                    .is_err()
                {
                    tracing::warn!(sink = %out.name, dropped = l.count, "log sink: drop summary not delivered before the deadline");
                }
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

/// The record that tells a sink's reader how many records it did not get, and when.
fn summary(origin: &Arc<Origin>, stream: Stream, sink: &str, l: Lost) -> Record {
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
    let mut r = Record::new(SystemTime::now(), stream, Level::Warn, msg, origin.clone());
    r.fields = Some(Box::new(fields));
    r
}
