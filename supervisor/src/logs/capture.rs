//! Capture: the reader task of one app pipe (stdout or stderr).
//!
//! Invariant: the task never blocks a thread: it reads with tokio (the pipe is non-blocking), so
//! the supervisor loop runs on whatever the app does. It ends at EOF (every writer closed the
//! pipe), or when cancelled (a grandchild holds the pipe open past the exit deadline): then it
//! drains what the pipe already holds without waiting, and delivers the unfinished last line.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use std::sync::Arc;

use super::backpressure::Outlet;
use super::pipeline::Live;
use super::process::Processor;
use super::record::Stream;
use super::LogsError;

/// Reads already buffered in the pipe that a cancelled reader still takes (64 MiB at 64 KiB).
const DRAIN_READS: usize = 1024;

/// Everything one reader task owns.
pub struct PipeReader {
    /// The pipe.
    pub rx: pipe::Receiver,
    /// Frame, merge, parse.
    pub processor: Processor,
    /// Into the sinks.
    pub outlet: Outlet,
    /// Bytes per read.
    pub read_buffer: usize,
    /// Set to true to stop waiting for EOF.
    pub cancel: watch::Receiver<bool>,
    /// Set to true to stop reading and hand the pipe over (`tandem upgrade`).
    pub handoff: watch::Receiver<bool>,
    /// Settings changed by a reload: taken at the next line boundary.
    pub live: watch::Receiver<Arc<Live>>,
    /// A processor for new settings.
    pub build: Box<dyn Fn(&Live) -> Processor + Send>,
}

/// A pipe a reader stopped reading, with the unfinished line it held: what a new image of
/// tandem needs to go on reading it where this one stopped.
#[derive(Debug)]
pub struct HandedPipe {
    pub fd: OwnedFd,
    /// The bytes of an unfinished line (no newline read yet).
    pub carry: Vec<u8>,
    /// The next part's index when that line was already split (`max_line_bytes`).
    pub part: u32,
}

/// Make a tokio pipe receiver of `fd` (must be the read end of a pipe or FIFO).
pub fn receiver(stream: Stream, fd: OwnedFd) -> Result<pipe::Receiver, LogsError> {
    pipe::Receiver::from_owned_fd(fd).map_err(|source| LogsError::Capture { stream, source })
}

// === impl PipeReader ===

impl PipeReader {
    /// Read until EOF or cancellation, then deliver everything; or, asked to hand off, deliver
    /// every finished line and return the pipe with the unfinished one.
    pub async fn run(mut self) -> Option<HandedPipe> {
        let mut buf = vec![0u8; self.read_buffer];
        loop {
            let deadline = self.processor.deadline();
            let mut swap = false;
            let cancelled = tokio::select! {
                biased;
                _ = self.cancel.wait_for(|c| *c) => true,
                _ = self.handoff.wait_for(|h| *h) => break,
                Ok(()) = self.live.changed() => {
                    swap = true;
                    false
                }
                r = self.rx.read(&mut buf) => match r {
                    Ok(0) => break,
                    Ok(n) => {
                        self.processor.push(&buf[..n], Instant::now());
                        false
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                    Err(e) => {
                        tracing::warn!(error = %e, "log capture: read failed; stopping this stream");
                        break;
                    }
                },
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.processor.tick(Instant::now());
                    false
                }
            };
            if cancelled {
                self.drain(&mut buf).await;
                break;
            }
            if swap {
                self.swap();
            }
            if self.processor.pending_records() > 0 {
                self.outlet.send_all(self.processor.take()).await;
            }
        }
        if *self.handoff.borrow() {
            return self.hand_off().await;
        }
        self.processor.finish();
        self.outlet.send_all(self.processor.take()).await;
        None
    }

    /// New settings from a reload: finished records stay as they were made; the unfinished
    /// line goes on under the new settings.
    fn swap(&mut self) {
        let live = self.live.borrow_and_update().clone();
        let (carry, part) = self.processor.hand_off();
        let mut next = (self.build)(&live);
        next.resume(carry, part);
        let done = std::mem::replace(&mut self.processor, next).take();
        self.processor.prepend(done);
    }

    /// Stop reading: finished records go to the sinks, the pipe and the unfinished line are
    /// returned. What the pipe holds stays in it, for the next reader.
    async fn hand_off(mut self) -> Option<HandedPipe> {
        let (carry, part) = self.processor.hand_off();
        self.outlet.send_all(self.processor.take()).await;
        match self.rx.into_nonblocking_fd() {
            Ok(fd) => Some(HandedPipe { fd, carry, part }),
            Err(e) => {
                tracing::warn!(error = %e, "log capture: cannot hand the pipe over");
                None
            }
        }
    }

    /// Take what the pipe holds right now, without waiting for more.
    async fn drain(&mut self, buf: &mut [u8]) {
        for _ in 0..DRAIN_READS {
            match self.rx.try_read(buf) {
                Ok(0) => return,
                Ok(n) => {
                    self.processor.push(&buf[..n], Instant::now());
                    self.outlet.send_all(self.processor.take()).await;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}
