//! Per-client rate limiting: a token bucket per client IP (the TCP peer, never a forwarded
//! header a client can set) or per JWT claim; over the rate, 429 with `Retry-After`.
//!
//! Invariant: the table of buckets is bounded by `max_clients`; when full, buckets that have
//! refilled (equivalent to a client never seen) go first, then the longest unused one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use http::Request;
use tokio::time::Instant;

use crate::cause::Cause;
use crate::config::RateLimitConfig;
use crate::edge::jwt::{claim_text, Claims};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One listener's buckets.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    claim: Option<String>,
    max_clients: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

// === impl RateLimiter ===

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            per_second: cfg.per_second,
            burst: f64::from(cfg.burst),
            claim: cfg.key.strip_prefix("claim:").map(str::to_string),
            max_clients: cfg.max_clients,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The client's key: the claim when configured and present, else the peer's IP.
    fn key<B>(&self, req: &Request<B>, peer: SocketAddr) -> String {
        if let Some(name) = &self.claim {
            if let Some(v) = req
                .extensions()
                .get::<Claims>()
                .and_then(|c| c.0.get(name.as_str()).map(claim_text))
            {
                return format!("claim:{v}");
            }
        }
        format!("ip:{}", peer.ip())
    }

    /// Takes a token from `key`'s bucket, or says how many seconds until one is there.
    pub fn take(&self, key: String, now: Instant) -> Result<(), u32> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if !buckets.contains_key(&key) && buckets.len() >= self.max_clients {
            self.evict(&mut buckets, now);
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.per_second;
            Err(wait.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
        }
    }

    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let (per_second, burst) = (self.per_second, self.burst);
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_second < burst
        });
        if buckets.len() >= self.max_clients {
            if let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone())
            {
                buckets.remove(&oldest);
            }
        }
    }
}

/// Takes a token from the client's bucket: `RateLimited` when it is empty.
pub(crate) fn check<B>(
    limiter: &RateLimiter,
    req: &Request<B>,
    peer: SocketAddr,
) -> Result<(), Cause> {
    let key = limiter.key(req, peer);
    limiter
        .take(key, Instant::now())
        .map_err(|retry_after_secs| Cause::RateLimited { retry_after_secs })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(per_second: f64, burst: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            per_second,
            burst,
            key: "client_ip".into(),
            max_clients,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let r = limiter(1.0, 2, 10);
        let t = Instant::now();
        assert_eq!(r.take("a".into(), t), Ok(()));
        assert_eq!(r.take("a".into(), t), Ok(()));
        assert_eq!(r.take("a".into(), t), Err(1));
        assert_eq!(
            r.take("b".into(), t),
            Ok(()),
            "another client has its own bucket"
        );
        assert_eq!(r.take("a".into(), t + Duration::from_secs(1)), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn table_is_bounded() {
        let r = limiter(0.001, 1, 2);
        let t = Instant::now();
        for k in ["a", "b", "c", "d"] {
            assert_eq!(r.take(k.into(), t), Ok(()));
        }
        assert!(r.buckets.lock().expect("lock").len() <= 2);
    }
}
