//! A service's endpoints and the choice among them: power of two choices over peak-EWMA
//! latency or requests in flight, and outlier ejection.
//!
//! Invariants: an ejected endpoint is not chosen until its ejection ends, unless every
//! endpoint is ejected (then all are candidates again: sending somewhere beats failing every
//! request, Envoy's "panic mode"); at most `max_percent` of the endpoints (at least one) are
//! ejected at once; an endpoint keeps its statistics across discovery updates as long as its
//! address stays in the answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::{Balance, EjectionConfig};

/// Peak-EWMA's decay: how long a latency sample weighs (linkerd's default).
const DECAY: Duration = Duration::from_secs(10);
/// What each request in flight to an endpoint without a sample weighs (linkerd's default
/// round-trip time).
const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// One endpoint of a service.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    /// `ip:port`, the metrics label and the default authority.
    pub label: String,
    in_flight: AtomicU64,
    ewma: Mutex<Ewma>,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Ewma {
    /// Nanoseconds.
    cost: f64,
    stamp: Instant,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row (each doubles the next); forgotten after `max_time` of health.
    ejections: u32,
    last_ejection_end: Option<Instant>,
}

/// What the last attempt to an endpoint showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An answer that is not a gateway failure.
    Healthy,
    /// Connect failed or timed out, reset, a 5xx, a gRPC `UNAVAILABLE`.
    Failed,
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// The endpoint was ejected for this long.
    Ejected(Duration),
}

// === impl Endpoint ===

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            label: addr.to_string(),
            in_flight: AtomicU64::new(0),
            ewma: Mutex::new(Ewma {
                cost: 0.0,
                stamp: Instant::now(),
            }),
            health: Mutex::new(Health::default()),
        }
    }

    /// Whether it is ejected now (an ejection that ran out ends here).
    pub fn is_ejected(&self) -> bool {
        self.ejected(Instant::now())
    }

    /// Requests (or connections) in flight to it.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks one more in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A latency sample: a peak replaces the estimate at once; a lower one moves it down by
    /// the time since the last sample.
    pub fn observe(&self, rtt: Duration) {
        let mut e = self.ewma.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let rtt = rtt.as_nanos() as f64;
        if rtt > e.cost {
            e.cost = rtt;
        } else {
            let elapsed = now.saturating_duration_since(e.stamp).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            e.cost = e.cost * w + rtt * (1.0 - w);
        }
        e.stamp = now;
    }

    /// The load peak-EWMA compares: the latency estimate (decayed towards zero while no
    /// sample comes, so an endpoint that was slow is tried again) times the requests in flight
    /// plus one. An endpoint without a sample yet (new, or back from an ejection) is tried at
    /// once while it has nothing in flight, and weighs [`DEFAULT_RTT`] per request in flight
    /// until its first answer, so a new endpoint is neither starved by a known fast one nor
    /// flooded before it has answered once.
    fn ewma_load(&self, now: Instant) -> f64 {
        let e = self.ewma.lock().unwrap_or_else(PoisonError::into_inner);
        if e.cost == 0.0 {
            return DEFAULT_RTT.as_nanos() as f64 * self.in_flight() as f64;
        }
        let elapsed = now.saturating_duration_since(e.stamp).as_secs_f64();
        let cost = e.cost * (-elapsed / DECAY.as_secs_f64()).exp();
        cost * (self.in_flight() + 1) as f64
    }

    fn load(&self, balance: Balance, now: Instant) -> f64 {
        match balance {
            Balance::PeakEwma => self.ewma_load(now),
            Balance::LeastRequests => self.in_flight() as f64,
        }
    }

    /// Whether it is ejected now; an ejection that ran out ends here, and the endpoint's
    /// latency estimate starts afresh (its old failures must not keep it out).
    fn ejected(&self, now: Instant) -> bool {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match h.ejected_until {
            Some(t) if t > now => true,
            Some(t) => {
                h.ejected_until = None;
                h.last_ejection_end = Some(t);
                drop(h);
                let mut e = self.ewma.lock().unwrap_or_else(PoisonError::into_inner);
                e.cost = 0.0;
                e.stamp = now;
                false
            }
            None => false,
        }
    }

    /// Records an outcome; ejects when the failures in a row reach the threshold and
    /// `may_eject` (the share of ejected endpoints allows one more).
    fn record(
        &self,
        verdict: Verdict,
        cfg: &EjectionConfig,
        may_eject: bool,
        now: Instant,
    ) -> Change {
        // An ejection that ran out ends (and the estimate starts afresh).
        self.ejected(now);
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match verdict {
            Verdict::Healthy => {
                h.consecutive_failures = 0;
                if h.last_ejection_end
                    .is_some_and(|t| now.saturating_duration_since(t) >= cfg.max_time)
                {
                    h.ejections = 0;
                    h.last_ejection_end = None;
                }
                Change::None
            }
            Verdict::Failed => {
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
                if cfg.consecutive_failures == 0
                    || h.consecutive_failures < cfg.consecutive_failures
                    || h.ejected_until.is_some()
                    || !may_eject
                {
                    return Change::None;
                }
                let factor = 1u32 << h.ejections.min(16);
                let time = cfg.base_time.saturating_mul(factor).min(cfg.max_time);
                h.ejections = h.ejections.saturating_add(1);
                h.ejected_until = Some(now + time);
                h.consecutive_failures = 0;
                Change::Ejected(time)
            }
        }
    }
}

/// One request (or connection) in flight to an endpoint.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A service's current endpoints.
#[derive(Debug, Default)]
pub(crate) struct Endpoints {
    list: RwLock<Arc<[Arc<Endpoint>]>>,
}

/// What an update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Update {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

// === impl Endpoints ===

impl Endpoints {
    pub fn new(addrs: &[SocketAddr]) -> Self {
        let s = Self::default();
        s.update(addrs);
        s
    }

    /// The current list (a snapshot).
    pub fn snapshot(&self) -> Arc<[Arc<Endpoint>]> {
        self.list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the list; endpoints still present keep their state.
    pub fn update(&self, addrs: &[SocketAddr]) -> Update {
        let mut list = self.list.write().unwrap_or_else(PoisonError::into_inner);
        let mut wanted: Vec<SocketAddr> = addrs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut update = Update::default();
        let next: Vec<Arc<Endpoint>> = wanted
            .iter()
            .map(|a| match list.iter().find(|e| e.addr == *a) {
                Some(e) => e.clone(),
                None => {
                    update.added.push(*a);
                    Arc::new(Endpoint::new(*a))
                }
            })
            .collect();
        update.removed = list
            .iter()
            .filter(|e| !wanted.contains(&e.addr))
            .map(|e| e.addr)
            .collect();
        *list = next.into();
        update
    }

    /// Power of two choices among the endpoints not ejected and not in `avoid` (the ones this
    /// request tried already), falling back to the avoided ones, then to the ejected ones.
    pub fn pick(&self, balance: Balance, avoid: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let list = self.snapshot();
        let now = Instant::now();
        let healthy: Vec<&Arc<Endpoint>> = list.iter().filter(|e| !e.ejected(now)).collect();
        let fresh: Vec<&Arc<Endpoint>> = healthy
            .iter()
            .copied()
            .filter(|e| !avoid.contains(&e.addr))
            .collect();
        let candidates = if !fresh.is_empty() {
            fresh
        } else if !healthy.is_empty() {
            healthy
        } else {
            list.iter().collect()
        };
        p2c(&candidates, |e| e.load(balance, now)).cloned()
    }

    /// Records an attempt's outcome on `endpoint`; ejects it when due and allowed.
    pub fn record(&self, endpoint: &Endpoint, verdict: Verdict, cfg: &EjectionConfig) -> Change {
        let now = Instant::now();
        let may_eject = verdict == Verdict::Failed && {
            let list = self.snapshot();
            let ejected = list.iter().filter(|e| e.ejected(now)).count();
            let allowed = (list.len() * usize::from(cfg.max_percent) / 100).max(1);
            ejected < allowed
        };
        endpoint.record(verdict, cfg, may_eject, now)
    }

    /// How many endpoints are ejected now.
    #[cfg(test)]
    pub fn ejected_count(&self) -> usize {
        let now = Instant::now();
        self.snapshot().iter().filter(|e| e.ejected(now)).count()
    }
}

/// Two distinct candidates at random, the one with the lower load.
fn p2c<'a, T>(candidates: &[&'a T], load: impl Fn(&T) -> f64) -> Option<&'a T> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (x, y) = (candidates[a], candidates[b]);
            Some(if load(y) < load(x) { y } else { x })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn cfg() -> EjectionConfig {
        EjectionConfig {
            consecutive_failures: 3,
            base_time: Duration::from_secs(1),
            max_time: Duration::from_secs(4),
            max_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_returns() {
        let eps = Endpoints::new(&[addr(1), addr(2), addr(3)]);
        let one = eps.snapshot()[0].clone();
        let cfg = cfg();
        assert_eq!(eps.record(&one, Verdict::Failed, &cfg), Change::None);
        assert_eq!(eps.record(&one, Verdict::Healthy, &cfg), Change::None);
        for _ in 0..2 {
            assert_eq!(eps.record(&one, Verdict::Failed, &cfg), Change::None);
        }
        assert_eq!(
            eps.record(&one, Verdict::Failed, &cfg),
            Change::Ejected(Duration::from_secs(1))
        );
        for _ in 0..50 {
            let p = eps.pick(Balance::LeastRequests, &[]).expect("an endpoint");
            assert_ne!(p.addr, one.addr, "an ejected endpoint is not chosen");
        }
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(eps.ejected_count(), 0);
        // The second ejection lasts twice as long.
        for _ in 0..2 {
            eps.record(&one, Verdict::Failed, &cfg);
        }
        assert_eq!(
            eps.record(&one, Verdict::Failed, &cfg),
            Change::Ejected(Duration::from_secs(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_share_and_panic_mode() {
        let eps = Endpoints::new(&[addr(1), addr(2), addr(3)]);
        let cfg = cfg();
        let list = eps.snapshot();
        for e in list.iter() {
            for _ in 0..3 {
                eps.record(e, Verdict::Failed, &cfg);
            }
        }
        // 50% of 3 is one endpoint.
        assert_eq!(eps.ejected_count(), 1);
        // All ejected (a single endpoint): it is still chosen.
        let single = Endpoints::new(&[addr(9)]);
        let e = single.snapshot()[0].clone();
        for _ in 0..3 {
            single.record(&e, Verdict::Failed, &cfg);
        }
        assert_eq!(single.ejected_count(), 1);
        assert_eq!(
            single
                .pick(Balance::PeakEwma, &[])
                .expect("panic mode")
                .addr,
            addr(9)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_prefers_the_fast_endpoint() {
        let eps = Endpoints::new(&[addr(1), addr(2)]);
        let list = eps.snapshot();
        list[0].observe(Duration::from_millis(200));
        list[1].observe(Duration::from_millis(5));
        for _ in 0..20 {
            let p = eps.pick(Balance::PeakEwma, &[]).expect("endpoint");
            assert_eq!(p.addr, addr(2));
        }
        // A retry avoids the endpoint tried already, even the faster one.
        let p = eps.pick(Balance::PeakEwma, &[addr(2)]).expect("endpoint");
        assert_eq!(p.addr, addr(1));
        // A new endpoint (no sample yet) is tried at once, before a fast one.
        let two = Endpoints::new(&[addr(2)]);
        two.snapshot()[0].observe(Duration::from_millis(1));
        two.update(&[addr(2), addr(3)]);
        let p = two.pick(Balance::PeakEwma, &[]).expect("endpoint");
        assert_eq!(p.addr, addr(3));
        // ... but not flooded before its first answer: busy, it weighs a default latency.
        let _first = p.begin();
        let p = two.pick(Balance::PeakEwma, &[]).expect("endpoint");
        assert_eq!(p.addr, addr(2));
        // least_requests: in-flight counts decide.
        let _busy = list[1].begin();
        let p = eps.pick(Balance::LeastRequests, &[]).expect("endpoint");
        assert_eq!(p.addr, addr(1));
    }

    #[test]
    fn updates_keep_state_of_endpoints_that_stay() {
        let eps = Endpoints::new(&[addr(1), addr(2)]);
        let two = eps.snapshot()[1].clone();
        let _guard = two.begin();
        let u = eps.update(&[addr(3), addr(2)]);
        assert_eq!(u.added, vec![addr(3)]);
        assert_eq!(u.removed, vec![addr(1)]);
        let now = eps.snapshot();
        let kept = now.iter().find(|e| e.addr == addr(2)).expect("kept");
        assert!(Arc::ptr_eq(kept, &two));
        assert_eq!(kept.in_flight(), 1);
    }
}
