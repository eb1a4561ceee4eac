//! The [`Pipeline`]: sinks and readers started, fed and stopped as the lifecycle says.
//!
//! Invariant: the order at exit is `finish_readers(deadline)` (every reader reaches EOF, or is
//! cancelled at the deadline and delivers what it already has) then `shutdown(timeout)` (sink
//! queues drain, sinks flush). Sink threads end when the last sender is gone, so the pipeline
//! holds senders only inside readers and in its sink handles, which `shutdown` drops.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backpressure::Outlet;
use super::capture::{receiver, PipeReader};
use super::config::{LogsConfig, QueueConfig};
use super::counters::{Counters, CountersSnapshot};
use super::enrich::{AppInstance, LogContext};
use super::process::Processor;
use super::record::Stream;
use super::sinks::file::FileSink;
use super::sinks::stdout::StdoutSink;
use super::sinks::worker::{self, SinkHandle};
use super::sinks::Sink;
use super::tail::Follower;
use super::LogsError;

/// After a cancel, how long a reader may take to deliver what it holds before it is aborted.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// The running log pipeline.
pub struct Pipeline {
    cfg: LogsConfig,
    ctx: LogContext,
    counters: Arc<Counters>,
    sinks: Vec<SinkHandle>,
    readers: Mutex<Vec<Reader>>,
}

/// A running reader task.
struct Reader {
    task: JoinHandle<()>,
    cancel: watch::Sender<bool>,
    /// Tail followers never see EOF: they are cancelled as soon as readers are finished.
    follows: bool,
}

/// An extra sink handed in by the caller (an OTLP sink, a test's slow sink).
pub struct ExtraSink {
    /// Its name in counters and drop summaries.
    pub name: String,
    /// The sink.
    pub sink: Box<dyn Sink>,
    /// Its queue and backpressure.
    pub queue: QueueConfig,
}

// === impl Pipeline ===

impl Pipeline {
    /// Validate `cfg`, open the configured sinks and start their workers. Needs a tokio runtime
    /// only from [`Pipeline::attach`] on.
    pub fn start(cfg: &LogsConfig, ctx: LogContext) -> Result<Pipeline, LogsError> {
        Self::start_with(cfg, ctx, Vec::new())
    }

    /// [`Pipeline::start`] with extra sinks beside the configured ones.
    pub fn start_with(
        cfg: &LogsConfig,
        ctx: LogContext,
        extra: Vec<ExtraSink>,
    ) -> Result<Pipeline, LogsError> {
        cfg.validate().map_err(LogsError::Config)?;
        let mut sinks = Vec::new();
        let batch = cfg.batch_records;
        if cfg.sinks.stdout.enabled {
            let s = StdoutSink::from_config(&cfg.sinks.stdout);
            sinks.push(worker::spawn(
                "stdout",
                Box::new(s),
                &cfg.sinks.stdout.queue,
                batch,
            )?);
        }
        if let Some(f) = &cfg.sinks.file {
            let s = FileSink::open(f).map_err(|source| LogsError::Sink {
                sink: format!("file {}", f.path.display()),
                source,
            })?;
            sinks.push(worker::spawn("file", Box::new(s), &f.queue, batch)?);
        }
        for e in extra {
            sinks.push(worker::spawn(&e.name, e.sink, &e.queue, batch)?);
        }
        let counters = Arc::new(Counters {
            sinks: sinks.iter().map(|s| s.counters.clone()).collect(),
            ..Counters::default()
        });
        Ok(Pipeline {
            cfg: cfg.clone(),
            ctx,
            counters,
            sinks,
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Read the app's `stream` from `fd` (the read end of its pipe) in a new task.
    pub fn attach(
        &self,
        stream: Stream,
        fd: OwnedFd,
        instance: AppInstance,
    ) -> Result<(), LogsError> {
        let origin = self.ctx.origin(&self.cfg.attributes, Some(instance));
        let processor = Processor::new(&self.cfg, stream, origin.clone(), self.counters.clone())?;
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let reader = PipeReader {
            rx: receiver(stream, fd)?,
            processor,
            outlet: Outlet::new(&self.sinks, stream, origin),
            read_buffer: self.read_buffer(),
            batch: self.cfg.batch_records,
            cancel: cancel_rx,
        };
        self.push_reader(tokio::spawn(reader.run()), cancel_tx, false);
        Ok(())
    }

    /// Start following the files of `[logs.tail]` (nothing if it is absent).
    pub fn tail(&self) -> Result<(), LogsError> {
        let Some(tail) = &self.cfg.tail else {
            return Ok(());
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let follower = Follower::new(
            tail,
            &self.cfg,
            &self.ctx,
            &self.sinks,
            self.counters.clone(),
            cancel_rx,
        )?;
        self.push_reader(tokio::spawn(follower.run()), cancel_tx, true);
        Ok(())
    }

    /// Wait until every pipe reader has reached EOF, at most until `deadline`; then cancel the
    /// rest (and every tail follower), which deliver what they hold. True if all reached EOF.
    pub async fn finish_readers(&self, deadline: Instant) -> bool {
        let readers = std::mem::take(&mut *self.readers.lock().expect("reader list lock poisoned"));
        let mut all_eof = true;
        let mut left = Vec::new();
        for mut r in readers {
            if r.follows {
                let _ = r.cancel.send(true);
                left.push(r);
                continue;
            }
            if tokio::time::timeout_at(deadline, &mut r.task)
                .await
                .is_err()
            {
                all_eof = false;
                let _ = r.cancel.send(true);
                left.push(r);
            }
        }
        let grace = Instant::now().max(deadline) + CANCEL_GRACE;
        for mut r in left {
            if tokio::time::timeout_at(grace, &mut r.task).await.is_err() {
                tracing::warn!("log reader did not finish after cancel; aborting it");
                r.task.abort();
            }
        }
        if !all_eof {
            tracing::warn!(
                "log capture: a pipe was still open at the deadline (a grandchild holds it?)"
            );
        }
        all_eof
    }

    /// Close the sink queues and wait until every sink has written and flushed, at most
    /// `timeout`. True if all did. Call [`Pipeline::finish_readers`] first.
    pub async fn shutdown(mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for r in std::mem::take(&mut *self.readers.lock().expect("reader list lock poisoned")) {
            r.task.abort();
        }
        let dones: Vec<_> = self
            .sinks
            .iter_mut()
            .filter_map(|s| s.take_done())
            .collect();
        self.sinks.clear(); // drop the senders: workers end when the queues are empty
        let mut ok = true;
        for d in dones {
            if tokio::time::timeout_at(deadline, d).await.is_err() {
                ok = false;
            }
        }
        if !ok {
            tracing::warn!(?timeout, "log sinks did not flush before the timeout");
        }
        ok
    }

    /// Reopen sink files (SIGHUP after logrotate).
    pub fn reopen(&self) {
        for s in &self.sinks {
            s.reopen();
        }
    }

    /// The pipeline's counters (live).
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    fn read_buffer(&self) -> usize {
        usize::try_from(self.cfg.read_buffer.as_u64()).unwrap_or(64 * 1024)
    }

    fn push_reader(&self, task: JoinHandle<()>, cancel: watch::Sender<bool>, follows: bool) {
        let mut readers = self.readers.lock().expect("reader list lock poisoned");
        readers.retain(|r| !r.task.is_finished());
        readers.push(Reader {
            task,
            cancel,
            follows,
        });
    }
}
