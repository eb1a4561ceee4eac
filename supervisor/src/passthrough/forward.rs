//! One bounded queue and one forwarder per signal: the receiver pushes without waiting, the
//! forwarder sends to the upstream one request at a time and retries with backoff.
//!
//! The queue is bounded in bytes (a semaphore of `queue_size` permits travels with each
//! request), so a slow or absent upstream costs at most `queue_size` per signal: the app is
//! then told to back off (429 / RESOURCE_EXHAUSTED) and its SDK retries or drops. One request
//! is `otlp::post`'s, as for tandem's own span export.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use tandem_backoff::{ExponentialBackoff, Jitter};
use tokio::{
    sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore, TryAcquireError},
    time::{sleep, Instant},
};

use super::{
    counters::{Counters, Drop},
    upstream::Upstream,
    Protocol, Signal,
};
use crate::otlp::post::{Attempt, Poster};

/// First retry delay; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Item = (Bytes, OwnedSemaphorePermit);

/// The receiving end's handle on a signal's queue.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Item>,
    space: Arc<Semaphore>,
    /// Requests pushed and not yet forwarded or dropped.
    pending: Arc<AtomicU64>,
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Full,
    Stopping,
}

/// Sends one signal's queue to its upstream.
pub struct Forwarder {
    signal: Signal,
    upstream: Poster,
    max_retry_time: Duration,
    counters: Counters,
    pending: Arc<AtomicU64>,
}

// === impl Queue ===

impl Queue {
    /// A queue of at most `bytes` and the receiver its forwarder reads.
    pub fn new(bytes: usize) -> (Queue, mpsc::UnboundedReceiver<Item>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let q = Queue {
            tx,
            space: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            pending: Arc::default(),
        };
        (q, rx)
    }

    /// Queue `body` if there is room, without waiting.
    pub fn try_push(&self, body: Bytes) -> Result<(), Refused> {
        let n = u32::try_from(body.len().max(1)).map_err(|_| Refused::Full)?;
        let permit = match self.space.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Err(Refused::Full),
            Err(TryAcquireError::Closed) => return Err(Refused::Stopping),
        };
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.tx.send((body, permit)).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            Refused::Stopping
        })
    }

    /// Refuse every push from now on (what is queued stays for the forwarder).
    pub fn close(&self) {
        self.space.close();
    }

    /// Requests queued or in flight.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }
}

// === impl Forwarder ===

impl Forwarder {
    pub fn new(
        signal: Signal,
        upstream: Upstream,
        queue: &Queue,
        attempt_timeout: Duration,
        max_retry_time: Duration,
        counters: Counters,
    ) -> Self {
        let poster = Poster::new(
            upstream.protocol == Protocol::Grpc,
            upstream.url,
            upstream.headers,
            upstream.compression,
            &upstream.tls,
            attempt_timeout,
        );
        Self {
            signal,
            upstream: poster,
            max_retry_time,
            counters,
            pending: queue.pending.clone(),
        }
    }

    /// Forward until `stop` turns true and the queue is empty (the caller bounds the time).
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Item>, mut stop: watch::Receiver<bool>) {
        loop {
            let item = if *stop.borrow() {
                match rx.try_recv() {
                    Ok(item) => item,
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => item,
                        None => return,
                    },
                    changed = stop.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            };
            let (body, _permit) = item;
            self.deliver(body).await;
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Send one request, retrying with backoff for up to `max_retry_time`.
    async fn deliver(&self, body: Bytes) {
        let began = Instant::now();
        // Compressed once, whatever the number of attempts.
        let body = self.upstream.prepare(body);
        let backoff =
            ExponentialBackoff::new(FIRST_BACKOFF, MAX_BACKOFF, 2.0, Jitter::Proportional(0.0));
        let mut retries: u32 = 0;
        loop {
            match self.upstream.send(body.clone()).await {
                Attempt::Sent => {
                    self.counters.forwarded(self.signal);
                    return;
                }
                Attempt::Reject(why) => {
                    tracing::warn!(event = "otlp_passthrough_rejected", signal = self.signal.as_str(), upstream = %self.upstream.url(), reason = %why, "the upstream refused the app's telemetry; dropped");
                    self.counters
                        .dropped(self.signal, Drop::UpstreamRejected, 1);
                    return;
                }
                Attempt::Retry(why, hint) => {
                    let delay = hint
                        .unwrap_or_else(|| backoff.delay(retries, &mut rand::rng()))
                        .min(MAX_BACKOFF);
                    if began.elapsed() + delay > self.max_retry_time {
                        tracing::warn!(event = "otlp_passthrough_dropped", signal = self.signal.as_str(), upstream = %self.upstream.url(), reason = %why, "the upstream stayed unavailable; the app's telemetry is dropped");
                        self.counters
                            .dropped(self.signal, Drop::RetriesExhausted, 1);
                        return;
                    }
                    tracing::debug!(signal = self.signal.as_str(), reason = %why, delay_ms = delay.as_millis() as u64, "upstream unavailable; retrying");
                    sleep(delay).await;
                    retries = retries.saturating_add(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_in_bytes_and_refuses_after_close() {
        let (q, mut rx) = Queue::new(10);
        assert_eq!(q.try_push(Bytes::from_static(b"123456")), Ok(()));
        assert_eq!(
            q.try_push(Bytes::from_static(b"123456")),
            Err(Refused::Full)
        );
        assert_eq!(q.pending(), 1);
        // Forwarding frees the room.
        drop(rx.try_recv().unwrap());
        assert_eq!(q.try_push(Bytes::from_static(b"123456")), Ok(()));
        q.close();
        assert_eq!(q.try_push(Bytes::from_static(b"1")), Err(Refused::Stopping));
        assert!(rx.try_recv().is_ok(), "what was queued stays");
    }
}
