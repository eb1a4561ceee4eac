//! tandem's own export queue, in front of an OTLP exporter: bounded, counted, batched, retried.
//!
//! Invariant: nothing is lost silently. A producer never waits ([`Sender::push`] is a
//! `try_send`); an item that does not fit is counted in `tandem_otlp_dropped_total{reason=
//! "queue_full"}`, a batch given up after `retry_for` (or at the stop deadline) in
//! `{reason="export_failed"}`. Memory is the queue plus one batch. The worker is a tokio task
//! (tonic's channel needs the runtime), so nothing here blocks a runtime thread.
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use tandem_backoff::{ExponentialBackoff, Jitter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::settings::{Queue, Signal};

/// A future an exporter returns.
pub type ExportFuture<'a> = Pin<Box<dyn Future<Output = OTelSdkResult> + Send + 'a>>;

/// One signal's exporter, as the queue sees it.
pub trait Exporter: Send + Sync + 'static {
    /// What is queued (a span, a log record).
    type Item: Send + 'static;
    /// Send one batch; may be called again with the same batch after a failure.
    fn export<'a>(&'a self, batch: &'a [Self::Item]) -> ExportFuture<'a>;
}

/// Labels of the drop counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `traces`, `logs`, `metrics`.
    pub signal: &'static str,
    /// `queue_full`, `export_failed`, `stopped`.
    pub reason: &'static str,
}

/// Labels of the per-signal counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    /// `traces`, `logs`, `metrics`.
    pub signal: &'static str,
}

/// What the export queues report on `/metrics` (`tandem_otlp_*`).
#[derive(Clone, Default, Debug)]
pub struct Stats {
    /// Items the receiver accepted (metrics: pushes).
    pub exported: Family<SignalLabels, Counter>,
    /// Items lost, by reason (metrics: pushes given up).
    pub dropped: Family<DropLabels, Counter>,
    /// Export requests that failed (each retry counts).
    pub failed_requests: Family<SignalLabels, Counter>,
}

// === impl Stats ===

impl Stats {
    /// Create the counters and register them.
    pub fn register(registry: &mut Registry) -> Self {
        let s = Self::default();
        registry.register(
            "tandem_otlp_exported",
            "Spans and log records the OTLP receiver accepted (metrics: pushes)",
            s.exported.clone(),
        );
        registry.register(
            "tandem_otlp_dropped",
            "Spans, log records (metrics: pushes) not exported, by reason",
            s.dropped.clone(),
        );
        registry.register(
            "tandem_otlp_failed_requests",
            "OTLP export requests that failed (each retry counts)",
            s.failed_requests.clone(),
        );
        s
    }

    /// Count `n` lost items of `signal`.
    pub fn drop_n(&self, signal: Signal, reason: &'static str, n: u64) {
        self.dropped
            .get_or_create(&DropLabels {
                signal: signal.as_str(),
                reason,
            })
            .inc_by(n);
    }

    fn signal(&self, f: &Family<SignalLabels, Counter>, signal: Signal) -> Counter {
        f.get_or_create(&SignalLabels {
            signal: signal.as_str(),
        })
        .clone()
    }
}

enum Msg<T> {
    Item(T),
    Flush(oneshot::Sender<()>),
}

/// The producers' end of a queue. Cheap to clone.
pub struct Sender<T> {
    tx: mpsc::Sender<Msg<T>>,
    signal: Signal,
    stats: Stats,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            signal: self.signal,
            stats: self.stats.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("signal", &self.signal)
            .finish()
    }
}

// === impl Sender ===

impl<T: Send + 'static> Sender<T> {
    /// Queue `item`, or count it as dropped; never waits.
    pub fn push(&self, item: T) {
        match self.tx.try_send(Msg::Item(item)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.drop_n(self.signal, "queue_full", 1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.drop_n(self.signal, "stopped", 1);
            }
        }
    }

    /// Export everything queued so far; true when done before `deadline`.
    pub async fn flush(&self, deadline: Instant) -> bool {
        let (ack, done) = oneshot::channel();
        let sent = tokio::time::timeout_at(deadline, self.tx.send(Msg::Flush(ack))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return false;
        }
        matches!(tokio::time::timeout_at(deadline, done).await, Ok(Ok(())))
    }
}

/// How the worker retries and when it must give up.
#[derive(Clone)]
pub struct Retry {
    /// Longest a batch is retried.
    pub retry_for: Duration,
    /// Bound on one request (the exporter has its own; this one is the backstop).
    pub request_timeout: Duration,
    /// Set at stop: retries end at this instant.
    pub stop: watch::Receiver<Option<Instant>>,
}

/// Start the worker for `exporter` on the current runtime.
pub fn spawn<E: Exporter>(
    exporter: E,
    signal: Signal,
    queue: Queue,
    retry: Retry,
    stats: Stats,
) -> Sender<E::Item> {
    let (tx, rx) = mpsc::channel(queue.size.max(1));
    let worker = Worker {
        exporter,
        signal,
        queue,
        retry,
        stats: stats.clone(),
        buf: Vec::with_capacity(queue.batch),
        failures: 0,
    };
    tokio::spawn(worker.run(rx));
    Sender { tx, signal, stats }
}

struct Worker<E: Exporter> {
    exporter: E,
    signal: Signal,
    queue: Queue,
    retry: Retry,
    stats: Stats,
    buf: Vec<E::Item>,
    failures: u64,
}

// === impl Worker ===

impl<E: Exporter> Worker<E> {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg<E::Item>>) {
        // When the oldest item in `buf` must leave, full batch or not.
        let mut due: Option<Instant> = None;
        loop {
            let msg = match due {
                Some(at) => tokio::select! {
                    m = rx.recv() => m,
                    () = sleep_until(at) => {
                        self.export().await;
                        due = None;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            match msg {
                None => break,
                Some(Msg::Item(item)) => {
                    if self.buf.is_empty() {
                        due = Some(Instant::now() + self.queue.delay);
                    }
                    self.buf.push(item);
                    if self.buf.len() >= self.queue.batch {
                        self.export().await;
                        due = None;
                    }
                }
                Some(Msg::Flush(ack)) => {
                    self.export().await;
                    due = None;
                    let _ = ack.send(());
                }
            }
        }
        self.export().await;
    }

    /// Export `buf`, retrying with jittered exponential backoff while the receiver fails,
    /// until `retry_for` has passed or the stop deadline; then count the batch as dropped.
    async fn export(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let n = self.buf.len() as u64;
        let give_up = Instant::now() + self.retry.retry_for;
        let backoff = ExponentialBackoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
            2.0,
            Jitter::Equal,
        );
        let mut retries: u32 = 0;
        loop {
            let sent = timeout(
                self.retry.request_timeout + Duration::from_secs(1),
                self.exporter.export(&self.buf),
            )
            .await;
            let err = match sent {
                Ok(Ok(())) => {
                    self.stats
                        .signal(&self.stats.exported, self.signal)
                        .inc_by(n);
                    self.failures = 0;
                    break;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "export request timed out".to_string(),
            };
            self.stats
                .signal(&self.stats.failed_requests, self.signal)
                .inc();
            self.failures += 1;
            // Say it the first time and then at powers of two, not once per retry.
            if self.failures.is_power_of_two() {
                tracing::warn!(
                    event = "otlp_export_failed",
                    signal = self.signal.as_str(),
                    failures = self.failures,
                    error = %err,
                    "OTLP export failed; retrying"
                );
            }
            let stop = *self.retry.stop.borrow();
            let limit = stop.map_or(give_up, |s| s.min(give_up));
            let wait = backoff.delay(retries, &mut rand::rng());
            if Instant::now() + wait >= limit {
                self.stats.drop_n(self.signal, "export_failed", n);
                tracing::warn!(
                    event = "otlp_dropped",
                    signal = self.signal.as_str(),
                    dropped = n,
                    "OTLP receiver unreachable: a batch was given up"
                );
                break;
            }
            tokio::select! {
                () = sleep(wait) => {}
                // The stop deadline was set: look at the limit again.
                _ = self.retry.stop.changed() => {}
            }
            retries = retries.saturating_add(1);
        }
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    struct Flaky {
        up: Arc<AtomicBool>,
        got: Arc<AtomicUsize>,
    }

    impl Exporter for Flaky {
        type Item = u32;
        fn export<'a>(&'a self, batch: &'a [u32]) -> ExportFuture<'a> {
            Box::pin(async move {
                if self.up.load(Ordering::SeqCst) {
                    self.got.fetch_add(batch.len(), Ordering::SeqCst);
                    Ok(())
                } else {
                    Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                        "down".into(),
                    ))
                }
            })
        }
    }

    fn dropped(stats: &Stats, reason: &'static str) -> u64 {
        stats
            .dropped
            .get_or_create(&DropLabels {
                signal: "traces",
                reason,
            })
            .get()
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_and_failed_batches_are_counted_then_export_resumes() {
        let up = Arc::new(AtomicBool::new(false));
        let got = Arc::new(AtomicUsize::new(0));
        let stats = Stats::default();
        let (_stop_tx, stop) = watch::channel(None);
        let q = Queue {
            size: 4,
            batch: 2,
            delay: Duration::from_millis(10),
        };
        let retry = Retry {
            retry_for: Duration::from_secs(3),
            request_timeout: Duration::from_secs(1),
            stop,
        };
        let tx = spawn(
            Flaky {
                up: up.clone(),
                got: got.clone(),
            },
            Signal::Traces,
            q,
            retry,
            stats.clone(),
        );
        for i in 0..20 {
            tx.push(i);
        }
        assert!(dropped(&stats, "queue_full") >= 14, "queue holds only 4");
        // The receiver stays down past retry_for: batches are given up and counted.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let lost = dropped(&stats, "export_failed");
        assert!(lost >= 2, "{lost}");
        assert_eq!(lost + dropped(&stats, "queue_full"), 20);
        up.store(true, Ordering::SeqCst);
        for i in 0..3 {
            tx.push(i);
        }
        assert!(tx.flush(Instant::now() + Duration::from_secs(5)).await);
        assert_eq!(got.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_deadline_ends_retries() {
        let stats = Stats::default();
        let (stop_tx, stop) = watch::channel(None);
        let retry = Retry {
            retry_for: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(1),
            stop,
        };
        let q = Queue {
            size: 8,
            batch: 8,
            delay: Duration::from_millis(1),
        };
        let flaky = Flaky {
            up: Arc::new(AtomicBool::new(false)),
            got: Arc::new(AtomicUsize::new(0)),
        };
        let tx = spawn(flaky, Signal::Traces, q, retry, stats.clone());
        tx.push(1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop_tx.send_replace(Some(Instant::now() + Duration::from_secs(1)));
        assert!(tx.flush(Instant::now() + Duration::from_secs(10)).await);
        assert_eq!(dropped(&stats, "export_failed"), 1);
    }
}
