//! Records tandem makes itself (the proxy's access log) entering the pipeline beside the app's.
//!
//! The producer side ([`Injector::emit`]) never waits: it is called on the proxy's request
//! path. It offers to a bounded queue and counts what did not fit; a task moves the queue into
//! the sinks with the same backpressure as the app's lines. Invariant: a dropped access record
//! is counted (`tandem_log_injected_dropped_total`), never silent.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use super::{
    backpressure::Outlet,
    record::{Fields, Level, Origin, Record, Stream},
};

/// Queue bound between the request path and the sinks.
pub const INJECT_QUEUE: usize = 8192;

/// Handle for emitting tandem-made records. Cheap to clone.
#[derive(Clone)]
pub struct Injector {
    tx: mpsc::Sender<Record>,
    origin: Arc<Origin>,
    dropped: Arc<AtomicU64>,
}

// === impl Injector ===

impl Injector {
    /// Offer one record; never waits. `fields` become the record's fields; a `trace_id` and
    /// `span_id` are lifted into the record's own.
    pub fn emit(&self, level: Level, msg: String, mut fields: Map<String, Value>) {
        let take = |fields: &mut Map<String, Value>, k: &str| match fields.remove(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        };
        let trace_id = take(&mut fields, "trace_id");
        let span_id = take(&mut fields, "span_id");
        let record = Record {
            observed: SystemTime::now(),
            time: None,
            stream: Stream::Stdout,
            level,
            msg,
            fields: (!fields.is_empty()).then(|| Fields::from_map(&fields)),
            trace_id,
            span_id,
            partial: None,
            lossy: false,
            lines: 1,
            parse_error: false,
            origin: self.origin.clone(),
        };
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records that did not fit in the queue.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Build an injector and the task body that moves its records into `outlet`. The task ends
/// when every injector is dropped or `cancel` turns true (then it delivers what is queued).
pub(crate) fn channel(
    origin: Arc<Origin>,
    mut outlet: Outlet,
    batch: usize,
    mut cancel: watch::Receiver<bool>,
) -> (Injector, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel(INJECT_QUEUE);
    let injector = Injector {
        tx,
        origin,
        dropped: Arc::default(),
    };
    let task = async move {
        let mut buf = Vec::with_capacity(batch);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut buf, batch.max(1)) => {
                    if n == 0 {
                        break;
                    }
                    outlet.send(std::mem::take(&mut buf)).await;
                }
                changed = cancel.changed() => {
                    if changed.is_ok() && !*cancel.borrow() {
                        continue;
                    }
                    while let Ok(r) = rx.try_recv() {
                        if buf.len() >= batch.max(1) {
                            outlet.send(std::mem::take(&mut buf)).await;
                        }
                        buf.push(r);
                    }
                    outlet.send(std::mem::take(&mut buf)).await;
                    break;
                }
            }
        }
    };
    (injector, task)
}
