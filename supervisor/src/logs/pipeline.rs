//! The [`Pipeline`]: sinks and readers started, fed and stopped as the lifecycle says.
//!
//! Invariant: the order at exit is `finish_readers(deadline)` (every reader reaches EOF, or is
//! cancelled at the deadline and delivers what it already has) then `shutdown(timeout)` (sink
//! queues drain, sinks flush). Sink threads end when the last sender is gone, so the pipeline
//! holds senders only inside readers and in its sink handles, which `shutdown` drops.
//! Across restarts, a run's records come before the next run's only if its readers have
//! delivered before the next run is attached: [`Pipeline::attach`] returns a [`Delivered`]
//! for the lifecycle to wait on.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backpressure::Outlet;
use super::capture::{receiver, HandedPipe, PipeReader};
use super::config::{LogRules, LogsConfig, QueueConfig};
use super::counters::{Counters, CountersSnapshot};
use super::enrich::{AppInstance, LogContext};
use super::process::Processor;
use super::recent::{Recent, RECENT_RECORDS};
use super::record::Stream;
use super::sinks::file::FileSink;
use super::sinks::stdout::StdoutSink;
use super::sinks::worker::{self, SinkHandle};
use super::sinks::Sink;
use super::tail::Follower;
use super::LogsError;

/// After a cancel, how long a reader may take to deliver what it holds before it is aborted.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// The settings a reload changes under running readers (`logs.stdout`, `logs.stderr`,
/// `logs.redact`, `logs.max_line_bytes`, `logs.attributes`).
pub struct Live {
    pub cfg: LogsConfig,
    pub rules: LogRules,
}

/// The running log pipeline.
pub struct Pipeline {
    /// What readers parse and redact with: each pipe reader takes a new value at its next
    /// line boundary ([`Pipeline::apply`]).
    live: watch::Sender<Arc<Live>>,
    cfg: LogsConfig,
    /// `cfg`'s patterns, compiled once at config load.
    rules: LogRules,
    ctx: LogContext,
    counters: Arc<Counters>,
    sinks: Vec<SinkHandle>,
    readers: Mutex<Vec<Reader>>,
    /// The app's last records, for the admin port.
    recent: Arc<Recent>,
}

/// What a reader task gives back when it ends.
enum Ended {
    Nothing,
    /// A pipe reader asked to hand over.
    Pipe(HandedPipe),
    /// A tail follower: every sequence's position.
    Tail(super::tail::Checkpoint),
}

/// What the log readers hand over to a new image of tandem (`tandem upgrade`).
#[derive(Default)]
pub struct HandedReaders {
    /// The app's pipes: stream, instance, pipe with its unfinished line.
    pub pipes: Vec<(Stream, AppInstance, HandedPipe)>,
    /// Tail mode's positions (flushed up to there).
    pub tail: Option<super::tail::Checkpoint>,
}

/// A running reader task.
struct Reader {
    task: JoinHandle<Ended>,
    cancel: watch::Sender<bool>,
    /// A pipe reader's: ask it to hand its pipe over, and what it reads.
    handoff: Option<(watch::Sender<bool>, Stream, AppInstance)>,
}

/// Resolves when one pipe reader has handed its last record to the sink queues (it reached
/// EOF, was cancelled, or is gone).
#[derive(Debug)]
pub struct Delivered(Option<oneshot::Receiver<()>>);

/// An extra sink handed in by the caller (an OTLP sink, a test's slow sink).
pub struct ExtraSink {
    /// Its name in counters and drop summaries.
    pub name: String,
    /// The sink.
    pub sink: Box<dyn Sink>,
    /// Its queue and backpressure.
    pub queue: QueueConfig,
}

// === impl Delivered ===

impl Delivered {
    /// Wait until the reader has delivered, at most until `deadline`. True if it did.
    /// Cancel-safe: waiting again after a timeout or a dropped wait picks up where it was.
    pub async fn wait(&mut self, deadline: Instant) -> bool {
        let Some(rx) = &mut self.0 else {
            return true;
        };
        // A reader aborted or panicked drops its sender: nothing more comes from it either.
        let done = tokio::time::timeout_at(deadline, rx).await.is_ok();
        if done {
            // A finished receiver must not be polled again.
            self.0 = None;
        }
        done
    }
}

// === impl Pipeline ===

impl Pipeline {
    /// Compile `cfg`, open the configured sinks and start their workers. Needs a tokio runtime
    /// only from [`Pipeline::attach`] on. (tandem itself starts from the config's checked
    /// form, with [`Pipeline::start_with`].)
    pub fn start(cfg: &LogsConfig, ctx: LogContext) -> Result<Pipeline, LogsError> {
        let rules = cfg
            .compile()
            .map_err(|e| LogsError::Config(e.to_string()))?;
        Self::start_with(cfg, &rules, ctx, Vec::new())
    }

    /// Open the configured sinks of `cfg` (whose patterns `rules` are, compiled at config
    /// load), and extra sinks beside them, and start their workers.
    pub fn start_with(
        cfg: &LogsConfig,
        rules: &LogRules,
        ctx: LogContext,
        extra: Vec<ExtraSink>,
    ) -> Result<Pipeline, LogsError> {
        let mut sinks = Vec::new();
        let batch = cfg.batch_records;
        if cfg.sinks.stdout.enabled {
            let s = StdoutSink::from_config(&cfg.sinks.stdout);
            sinks.push(worker::spawn(
                "stdout",
                Box::new(s),
                &cfg.sinks.stdout.queue(),
                batch,
            )?);
        }
        if let Some(f) = &cfg.sinks.file {
            let s = FileSink::open(f).map_err(|source| LogsError::Sink {
                sink: format!("file {}", f.path.display()),
                source,
            })?;
            sinks.push(worker::spawn("file", Box::new(s), &f.queue(), batch)?);
        }
        for e in extra {
            sinks.push(worker::spawn(&e.name, e.sink, &e.queue, batch)?);
        }
        let counters = Arc::new(Counters {
            sinks: sinks.iter().map(|s| s.counters.clone()).collect(),
            ..Counters::default()
        });
        Ok(Pipeline {
            live: watch::channel(Arc::new(Live {
                cfg: cfg.clone(),
                rules: rules.clone(),
            }))
            .0,
            cfg: cfg.clone(),
            rules: rules.clone(),
            ctx,
            counters,
            sinks,
            readers: Mutex::new(Vec::new()),
            recent: Recent::new(RECENT_RECORDS),
        })
    }

    /// Read the app's `stream` from `fd` (the read end of its pipe) in a new task. The
    /// returned [`Delivered`] resolves when that task has queued its last record.
    pub fn attach(
        &self,
        stream: Stream,
        fd: OwnedFd,
        instance: AppInstance,
    ) -> Result<Delivered, LogsError> {
        self.attach_resumed(stream, fd, instance, Vec::new(), 0)
    }

    /// [`Pipeline::attach`], going on with the unfinished line (`carry`, `part`) a previous
    /// image of tandem handed over with the pipe ([`Pipeline::hand_over`]).
    pub fn attach_resumed(
        &self,
        stream: Stream,
        fd: OwnedFd,
        instance: AppInstance,
        carry: Vec<u8>,
        part: u32,
    ) -> Result<Delivered, LogsError> {
        let (ctx, counters) = (self.ctx.clone(), self.counters.clone());
        let build = move |live: &Live| {
            let origin = ctx.origin(&live.cfg.attributes, Some(instance));
            Processor::new(&live.cfg, &live.rules, stream, origin, counters.clone())
        };
        let live = self.live.subscribe();
        let mut processor = build(&live.borrow());
        processor.resume(carry, part);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (handoff_tx, handoff_rx) = watch::channel(false);
        let reader = PipeReader {
            rx: receiver(stream, fd)?,
            processor,
            outlet: Outlet::new(&self.sinks, stream).with_tap(self.recent.clone()),
            read_buffer: self.read_buffer(),
            cancel: cancel_rx,
            handoff: handoff_rx,
            live,
            build: Box::new(build),
        };
        let (done_tx, done_rx) = oneshot::channel();
        let task = async move {
            let handed = reader.run().await;
            let _ = done_tx.send(());
            handed.map_or(Ended::Nothing, Ended::Pipe)
        };
        self.push_reader(
            tokio::spawn(task),
            cancel_tx,
            Some((handoff_tx, stream, instance)),
        );
        Ok(Delivered(Some(done_rx)))
    }

    /// A handle for records tandem makes itself (the proxy's access log). Its queue is
    /// drained into the sinks until the readers are finished at exit.
    pub fn injector(&self) -> super::inject::Injector {
        let origin = self.ctx.origin(&self.cfg.attributes, None);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (injector, task) = super::inject::channel(
            origin,
            Outlet::new(&self.sinks, Stream::Stdout),
            self.cfg.batch_records,
            cancel_rx,
        );
        self.push_reader(
            tokio::spawn(async move {
                task.await;
                Ended::Nothing
            }),
            cancel_tx,
            None,
        );
        injector
    }

    /// Start following the files of `[logs.tail]` (nothing if it is absent).
    pub fn tail(&self) -> Result<(), LogsError> {
        self.tail_from(None)
    }

    /// [`Pipeline::tail`], from the positions a previous image handed over, if any.
    pub fn tail_from(&self, positions: Option<super::tail::Checkpoint>) -> Result<(), LogsError> {
        let Some(tail) = &self.cfg.tail else {
            return Ok(());
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let follower = Follower::new(
            tail,
            &self.cfg,
            &self.rules,
            &self.ctx,
            &self.sinks,
            self.counters.clone(),
            cancel_rx,
        )?
        .with_tap(self.recent.clone());
        let follower = match positions {
            Some(p) => follower.with_positions(p),
            None => follower,
        };
        self.push_reader(
            tokio::spawn(async move { Ended::Tail(follower.run().await) }),
            cancel_tx,
            None,
        );
        Ok(())
    }

    /// `tandem upgrade`: every pipe reader stops reading and delivers its finished records;
    /// their pipes come back with the unfinished line each held, with the stream and the app
    /// instance they were read for. Tail followers and the access log's queue are finished as
    /// at exit; the followers' positions come back (where the new image goes on). Call
    /// [`Pipeline::shutdown`] after, to flush the sinks.
    pub async fn hand_over(&self) -> HandedReaders {
        let readers = std::mem::take(&mut *self.readers.lock().expect("reader list lock poisoned"));
        let mut handed = HandedReaders::default();
        let mut others = Vec::new();
        for r in readers {
            match r.handoff {
                Some((tx, stream, instance)) => {
                    let _ = tx.send(true);
                    if let Ok(Ok(Ended::Pipe(pipe))) =
                        tokio::time::timeout(CANCEL_GRACE, r.task).await
                    {
                        handed.pipes.push((stream, instance, pipe));
                    }
                }
                None => {
                    let _ = r.cancel.send(true);
                    others.push(r.task);
                }
            }
        }
        for task in others {
            if let Ok(Ok(Ended::Tail(positions))) = tokio::time::timeout(CANCEL_GRACE, task).await {
                handed.tail = Some(positions);
            }
        }
        handed
    }

    /// Wait until every pipe reader has reached EOF, at most until `deadline`; then cancel the
    /// rest (and every tail follower), which deliver what they hold. True if all reached EOF.
    pub async fn finish_readers(&self, deadline: Instant) -> bool {
        let readers = std::mem::take(&mut *self.readers.lock().expect("reader list lock poisoned"));
        let mut all_eof = true;
        let mut left = Vec::new();
        for mut r in readers {
            if r.handoff.is_none() {
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
        self.close(timeout).await
    }

    /// [`Pipeline::shutdown`] in place: the sinks are closed and flushed; the pipeline takes
    /// no more records after it (`tandem upgrade`, just before the exec).
    pub async fn close(&mut self, timeout: Duration) -> bool {
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

    /// Parse, merge and redact with `cfg`'s stream settings and `rules` from now on: each
    /// running pipe reader switches at its next line boundary (its unfinished line carries
    /// over; a pending multiline record is delivered first); readers attached later start with
    /// them. Sinks, tail mode and buffer sizes stay as they started.
    pub fn apply(&self, cfg: &LogsConfig, rules: &LogRules) {
        self.live.send_replace(Arc::new(Live {
            cfg: cfg.clone(),
            rules: rules.clone(),
        }));
    }

    /// Reopen sink files (SIGHUP after logrotate).
    pub fn reopen(&self) {
        for s in &self.sinks {
            s.reopen();
        }
    }

    /// The app's last records (redacted), as the admin port shows them.
    pub fn recent(&self) -> Arc<Recent> {
        self.recent.clone()
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

    fn push_reader(
        &self,
        task: JoinHandle<Ended>,
        cancel: watch::Sender<bool>,
        handoff: Option<(watch::Sender<bool>, Stream, AppInstance)>,
    ) {
        let mut readers = self.readers.lock().expect("reader list lock poisoned");
        readers.retain(|r| !r.task.is_finished());
        readers.push(Reader {
            task,
            cancel,
            handoff,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc as std_mpsc;

    use super::*;
    use crate::logs::config::{Backpressure, MultilinePreset};
    use crate::logs::record::Record;

    /// Records as (stream, msg, dropped-count-if-summary), optionally held at a gate.
    type Seen = Arc<Mutex<Vec<(Stream, String, Option<u64>)>>>;

    struct MemorySink {
        seen: Seen,
        gate: Option<std_mpsc::Receiver<()>>,
    }

    impl Sink for MemorySink {
        fn write(&mut self, records: &[Record]) -> std::io::Result<()> {
            if let Some(g) = self.gate.take() {
                // Held until the test opens the gate (bounded, so a broken test cannot hang).
                let _ = g.recv_timeout(Duration::from_secs(60));
            }
            let mut seen = self.seen.lock().expect("lock");
            for r in records {
                let dropped = r
                    .fields
                    .as_ref()
                    .and_then(|f| f.to_map().get("tandem.dropped").cloned())
                    .and_then(|v| v.as_u64());
                seen.push((r.stream, r.msg.clone(), dropped));
            }
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn pipeline(
        cfg: &LogsConfig,
        mode: Backpressure,
        queue_records: usize,
    ) -> (Pipeline, Seen, std_mpsc::Sender<()>) {
        let seen = Seen::default();
        let (gate_tx, gate_rx) = std_mpsc::channel();
        let mut cfg = cfg.clone();
        cfg.sinks.stdout.enabled = false;
        let extra = ExtraSink {
            name: "memory".into(),
            sink: Box::new(MemorySink {
                seen: seen.clone(),
                gate: (mode == Backpressure::Drop).then_some(gate_rx),
            }),
            queue: QueueConfig {
                backpressure: mode,
                queue_records,
            },
        };
        let ctx = LogContext::from_parts("test".into(), Some("h".into()), None, &[]);
        (
            Pipeline::start_with(&cfg, &cfg.compile().expect("valid"), ctx, vec![extra])
                .expect("starts"),
            seen,
            gate_tx,
        )
    }

    const INSTANCE: AppInstance = AppInstance {
        pid: 1,
        restart_count: 0,
    };

    /// Write `n` numbered lines (the last without newline) from a thread; report when done.
    fn writer(mut w: std::io::PipeWriter, n: usize) -> std_mpsc::Receiver<()> {
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            for i in 0..n {
                buf.extend_from_slice(format!("{i}").as_bytes());
                if i + 1 < n {
                    buf.push(b'\n');
                }
                if buf.len() > 8192 {
                    w.write_all(&buf).expect("pipe write");
                    buf.clear();
                }
            }
            w.write_all(&buf).expect("pipe write");
            drop(w);
            let _ = tx.send(());
        });
        rx
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn block_mode_delivers_every_line_once_in_order() {
        let (p, seen, _gate) = pipeline(&LogsConfig::default(), Backpressure::Block, 64);
        let (r, w) = std::io::pipe().expect("pipe");
        p.attach(Stream::Stdout, r.into(), INSTANCE)
            .expect("attach");
        let _done = writer(w, 100_000);
        assert!(
            p.finish_readers(Instant::now() + Duration::from_secs(60))
                .await
        );
        let snap = p.snapshot();
        assert!(p.shutdown(Duration::from_secs(10)).await);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 100_000);
        for (i, (s, msg, _)) in seen.iter().enumerate() {
            assert_eq!((*s, msg.as_str()), (Stream::Stdout, i.to_string().as_str()));
        }
        assert_eq!(snap.lines_in, 100_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_mode_never_waits_and_accounts_for_every_line() {
        let cfg = LogsConfig {
            batch_records: 16,
            ..LogsConfig::default()
        };
        let (p, seen, gate) = pipeline(&cfg, Backpressure::Drop, 64);
        let (r, w) = std::io::pipe().expect("pipe");
        p.attach(Stream::Stderr, r.into(), INSTANCE)
            .expect("attach");
        let n = 50_000;
        let done = writer(w, n);
        // The sink is held shut, yet the writer finishes: the app never waits in drop mode.
        let finished =
            tokio::task::spawn_blocking(move || done.recv_timeout(Duration::from_secs(60)).is_ok())
                .await
                .expect("join");
        assert!(
            finished,
            "the writer was blocked by a full sink in drop mode"
        );
        assert!(
            p.finish_readers(Instant::now() + Duration::from_secs(60))
                .await
        );
        gate.send(()).expect("open gate");
        let counters = p.counters();
        assert!(p.shutdown(Duration::from_secs(10)).await);
        let seen = seen.lock().expect("lock");
        let delivered: Vec<usize> = seen
            .iter()
            .filter(|r| r.2.is_none())
            .map(|r| r.1.parse().expect("number"))
            .collect();
        let dropped: u64 = seen.iter().filter_map(|r| r.2).sum();
        assert!(dropped > 0, "the held sink must have dropped something");
        assert_eq!(delivered.len() as u64 + dropped, n as u64);
        assert!(
            delivered.windows(2).all(|w| w[0] < w[1]),
            "delivered lines keep their order"
        );
        assert_eq!(counters.snapshot().sinks[0].dropped, dropped);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_pipe_at_deadline_still_delivers_what_was_written() {
        let (p, seen, _gate) = pipeline(&LogsConfig::default(), Backpressure::Block, 64);
        let (r, mut w) = std::io::pipe().expect("pipe");
        p.attach(Stream::Stdout, r.into(), INSTANCE)
            .expect("attach");
        w.write_all(b"a\nunfinished").expect("write");
        // `w` stays open, like a grandchild holding the pipe.
        assert!(
            !p.finish_readers(Instant::now() + Duration::from_millis(200))
                .await
        );
        assert!(p.shutdown(Duration::from_secs(10)).await);
        let msgs: Vec<String> = seen
            .lock()
            .expect("lock")
            .iter()
            .map(|r| r.1.clone())
            .collect();
        assert_eq!(msgs, vec!["a", "unfinished"]);
        drop(w);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multiline_timeout_delivers_while_the_pipe_is_open() {
        let mut cfg = LogsConfig::default();
        cfg.stdout.multiline.preset = MultilinePreset::Java;
        cfg.stdout.multiline.timeout = Duration::from_millis(20);
        let (p, seen, _gate) = pipeline(&cfg, Backpressure::Block, 64);
        let (r, mut w) = std::io::pipe().expect("pipe");
        p.attach(Stream::Stdout, r.into(), INSTANCE)
            .expect("attach");
        w.write_all(b"Exception: x\n\tat a\n\tat b\n")
            .expect("write");
        let mut got = None;
        for _ in 0..500 {
            if let Some(first) = seen.lock().expect("lock").first() {
                got = Some(first.1.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(got.as_deref(), Some("Exception: x\n\tat a\n\tat b"));
        drop(w);
        assert!(
            p.finish_readers(Instant::now() + Duration::from_secs(10))
                .await
        );
        assert!(p.shutdown(Duration::from_secs(10)).await);
    }
}
