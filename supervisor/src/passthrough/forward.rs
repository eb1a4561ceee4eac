//! One bounded queue and one forwarder per signal: the receiver pushes without waiting, the
//! forwarder sends to the upstream one request at a time and retries with backoff.
//!
//! The queue is bounded in bytes (a semaphore of `queue_size` permits travels with each
//! request), so a slow or absent upstream costs at most `queue_size` per signal: the app is
//! then told to back off (429 / RESOURCE_EXHAUSTED) and its SDK retries or drops.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tandem_backoff::{ExponentialBackoff, Jitter};
use tokio::{
    sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore, TryAcquireError},
    time::{sleep, timeout, Instant},
};

use super::{
    counters::{Counters, Drop},
    grpc,
    upstream::Upstream,
    Protocol, Signal,
};
use crate::otlp::{tls::HttpVersion, Compression};

/// First retry delay; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bytes of an upstream's answer that tandem reads (OTLP answers are tiny).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

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

/// How one attempt at the upstream ended.
enum Attempt {
    Sent,
    Retry(String, Option<Duration>),
    Reject(String),
}

/// Sends one signal's queue to its upstream.
pub struct Forwarder {
    signal: Signal,
    upstream: Upstream,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    attempt_timeout: Duration,
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
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(30));
        let version = if upstream.protocol == Protocol::Grpc {
            builder.http2_only(true);
            HttpVersion::Http2
        } else {
            HttpVersion::Http1
        };
        // TLS for an `https://` upstream, plain TCP for `http://`.
        let connector = upstream.tls.connector(version, attempt_timeout);
        Self {
            signal,
            upstream,
            client: builder.build(connector),
            attempt_timeout,
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
        let body = match self.upstream.compression {
            Compression::None => body,
            Compression::Gzip => gzip(&body),
        };
        let backoff =
            ExponentialBackoff::new(FIRST_BACKOFF, MAX_BACKOFF, 2.0, Jitter::Proportional(0.0));
        let mut retries: u32 = 0;
        loop {
            match self.attempt(body.clone()).await {
                Attempt::Sent => {
                    self.counters.forwarded(self.signal);
                    return;
                }
                Attempt::Reject(why) => {
                    tracing::warn!(event = "otlp_passthrough_rejected", signal = self.signal.as_str(), upstream = %self.upstream.url, reason = %why, "the upstream refused the app's telemetry; dropped");
                    self.counters
                        .dropped(self.signal, Drop::UpstreamRejected, 1);
                    return;
                }
                Attempt::Retry(why, hint) => {
                    let delay = hint
                        .unwrap_or_else(|| backoff.delay(retries, &mut rand::rng()))
                        .min(MAX_BACKOFF);
                    if began.elapsed() + delay > self.max_retry_time {
                        tracing::warn!(event = "otlp_passthrough_dropped", signal = self.signal.as_str(), upstream = %self.upstream.url, reason = %why, "the upstream stayed unavailable; the app's telemetry is dropped");
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

    async fn attempt(&self, body: Bytes) -> Attempt {
        let grpc = self.upstream.protocol == Protocol::Grpc;
        let mut req = Request::post(self.upstream.url.clone());
        for (k, v) in &self.upstream.headers {
            req = req.header(k, v);
        }
        let gzipped = self.upstream.compression == Compression::Gzip;
        let req = if grpc {
            let req = req
                .header(header::CONTENT_TYPE, "application/grpc")
                .header(header::TE, "trailers");
            if gzipped {
                req.header("grpc-encoding", "gzip")
                    .body(Full::new(grpc::gzip_frame(&body)))
            } else {
                req.body(Full::new(grpc::frame(&body)))
            }
        } else {
            let req = req.header(header::CONTENT_TYPE, "application/x-protobuf");
            if gzipped {
                req.header(header::CONTENT_ENCODING, "gzip")
                    .body(Full::new(body))
            } else {
                req.body(Full::new(body))
            }
        };
        let req = match req {
            Ok(r) => r,
            Err(e) => return Attempt::Reject(format!("cannot build the request: {e}")),
        };
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("cannot reach the upstream: {e}"))?;
            let (parts, body) = resp.into_parts();
            let collected = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the upstream's answer: {e}"))?;
            Ok::<_, String>((parts, collected.trailers().cloned()))
        };
        let (parts, trailers) = match timeout(self.attempt_timeout, exchange).await {
            Err(_) => return Attempt::Retry("the upstream did not answer in time".into(), None),
            Ok(Err(why)) => return Attempt::Retry(why, None),
            Ok(Ok(done)) => done,
        };
        let retry_after = parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let status = parts.status;
        if grpc && status == StatusCode::OK {
            return match grpc::status(&parts.headers, trailers.as_ref()) {
                Some((grpc::code::OK, _)) => Attempt::Sent,
                Some((code, msg)) if grpc::retryable(code) => {
                    Attempt::Retry(format!("gRPC status {code}: {msg}"), None)
                }
                Some((code, msg)) => Attempt::Reject(format!("gRPC status {code}: {msg}")),
                None => Attempt::Retry("the upstream's answer had no grpc-status".into(), None),
            };
        }
        match status.as_u16() {
            200..=299 if !grpc => Attempt::Sent,
            429 | 502 | 503 | 504 => Attempt::Retry(format!("HTTP {status}"), retry_after),
            _ => Attempt::Reject(format!("HTTP {status}")),
        }
    }
}

/// `body` gzipped (flate2's default level: OTLP protobuf shrinks several times over).
fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 2),
        flate2::Compression::default(),
    );
    enc.write_all(body).expect("writing to a Vec cannot fail");
    Bytes::from(enc.finish().expect("writing to a Vec cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = b"opentelemetry ".repeat(100);
        let z = gzip(&body);
        assert!(z.len() < body.len() / 4);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut back)
            .expect("gzip");
        assert_eq!(back, body);
    }

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
