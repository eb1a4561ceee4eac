//! Per-listener request stats for `/status`, the status page and `tandem status`: requests,
//! 5xx responses and tandem-made answers since start; request rate, error rate and latency
//! over the last [`WINDOW`].
//!
//! Read from the proxy's own metrics (`tandem_proxy_requests`, `tandem_proxy_errors`,
//! `tandem_proxy_request_duration_seconds`), the registry `/metrics` serves: no second count
//! on the request path, and the page cannot disagree with `/metrics`. prometheus-client 0.23
//! has no public read of a histogram, so the registry's text is read (as the OTLP metrics
//! bridge does, with the same parser, [`crate::prom_text`]). It imports nothing else of
//! tandem's.
//!
//! A reading encodes the whole registry, so it is taken only as often as someone looks: the
//! admin task calls [`ListenerStats::sample`] every [`TICK`], which reads the registry every
//! [`TICK`] while the stats are watched (asked for within the last [`WATCHED`]: the status
//! page refreshes every 2 s) and every [`WINDOW`] otherwise, so the first look after a quiet
//! spell still has a start 5 to 15 s back. Invariant: samples older than the window are let
//! go except one (the window's start), so at most `WINDOW / TICK + 2` samples are held.
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::prom_text;

/// The span the rate, error rate and latency are computed over.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How often the admin task calls [`ListenerStats::sample`], and how often it reads the
/// registry while the stats are watched.
pub const TICK: Duration = Duration::from_secs(1);
/// How long after the last [`ListenerStats::report`] the stats count as watched.
pub const WATCHED: Duration = Duration::from_secs(30);

const REQUESTS: &str = "tandem_proxy_requests_total";
const ERRORS: &str = "tandem_proxy_errors_total";
const DURATION: &str = "tandem_proxy_request_duration_seconds";

/// One listener's counters at one moment, as the registry holds them (cumulative).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Requests finished (every method and status class).
    pub requests: u64,
    /// Of those, answered with a 5xx (by the app or by tandem).
    pub responses_5xx: u64,
    /// Requests answered or cut by tandem instead of the app (every cause, 4xx ones too).
    pub tandem_errors: u64,
    /// The duration histogram: upper bound and cumulative count, in order.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the durations, in seconds.
    pub sum: f64,
    /// Number of durations.
    pub count: u64,
}

/// What `/status` shows for one listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Since tandem started.
    pub requests: u64,
    /// Since tandem started.
    pub responses_5xx: u64,
    /// Since tandem started.
    pub tandem_errors: u64,
    /// The span the next fields cover, in seconds (less than [`WINDOW`] just after start).
    pub window_seconds: f64,
    /// Requests per second over the window.
    pub rate_per_second: f64,
    /// 5xx responses over requests in the window; None without requests.
    pub error_rate: Option<f64>,
    /// Latency of the window's requests; None without requests.
    pub latency_ms: Option<Latency>,
}

/// Latency estimates from the duration histogram (linear within a bucket, as Prometheus'
/// `histogram_quantile`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
}

/// The samples, and the registry they come from.
pub struct ListenerStats {
    registry: Arc<Registry>,
    history: Mutex<History>,
}

/// Readings of the registry, oldest first, and when the stats were last asked for.
struct History {
    samples: VecDeque<(Instant, BTreeMap<String, Totals>)>,
    asked: Option<Instant>,
}

// === impl ListenerStats ===

impl ListenerStats {
    /// No samples yet: the first [`ListenerStats::report`] covers the time since this call.
    pub fn new(registry: Arc<Registry>) -> Self {
        let first = (Instant::now(), BTreeMap::new());
        Self {
            registry,
            history: Mutex::new(History {
                samples: VecDeque::from([first]),
                asked: None,
            }),
        }
    }

    /// Keep a reading of the counters as a sample, when one is due (see the module's doc):
    /// otherwise nothing is read.
    pub fn sample(&self) {
        let now = Instant::now();
        if !self.history().due(now) {
            return;
        }
        let totals = read(&self.encode());
        self.history().keep(now, totals);
    }

    /// Every listener's stats now, by listener name.
    pub fn report(&self) -> BTreeMap<String, Stats> {
        let now = Instant::now();
        let current = read(&self.encode());
        let (since, base) = {
            let mut history = self.history();
            history.asked = Some(now);
            history.base(now)
        };
        current
            .iter()
            .map(|(name, t)| (name.clone(), stats(t, base.get(name), since)))
            .collect()
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().expect("listener stats lock poisoned")
    }

    fn encode(&self) -> String {
        let mut text = String::new();
        // Encoding into a String fails only if a collector fails: then no stats, not an error.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

// === impl History ===

impl History {
    /// Whether a reading is due at `now`: the last one is a [`TICK`] old while watched, a
    /// [`WINDOW`] otherwise (half a tick early: the admin task's ticks are not exact).
    fn due(&self, now: Instant) -> bool {
        let watched = self
            .asked
            .is_some_and(|at| now.saturating_duration_since(at) < WATCHED);
        let every = if watched { TICK } else { WINDOW };
        self.samples
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) + TICK / 2 >= every)
    }

    fn keep(&mut self, now: Instant, totals: BTreeMap<String, Totals>) {
        self.samples.push_back((now, totals));
        // Keep one sample at or before the window's start.
        while self.samples.len() > 1 && now.saturating_duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
    }

    /// The window's start for a report at `now`: the sample closest to a [`WINDOW`] ago, how
    /// long ago it was, and its totals.
    fn base(&self, now: Instant) -> (Duration, BTreeMap<String, Totals>) {
        self.samples
            .iter()
            .min_by_key(|(at, _)| now.saturating_duration_since(*at).abs_diff(WINDOW))
            .map(|(at, totals)| (now.saturating_duration_since(*at), totals.clone()))
            .unwrap_or_default()
    }
}

/// `t` since start, and over the window from `base` (None: before the listener's first
/// request, all zeros) to `t`, `since` long.
pub fn stats(t: &Totals, base: Option<&Totals>, since: Duration) -> Stats {
    let zero = Totals::default();
    let base = base.unwrap_or(&zero);
    let requests = t.requests.saturating_sub(base.requests);
    let secs = since.as_secs_f64();
    let buckets: Vec<(f64, u64)> = t
        .buckets
        .iter()
        .map(|&(le, c)| {
            let before = base
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0, |&(_, c)| c);
            (le, c.saturating_sub(before))
        })
        .collect();
    let count = t.count.saturating_sub(base.count);
    let latency_ms = (count > 0).then(|| Latency {
        p50: round(quantile(0.5, &buckets) * 1000.0),
        p99: round(quantile(0.99, &buckets) * 1000.0),
        mean: round((t.sum - base.sum).max(0.0) / count as f64 * 1000.0),
    });
    Stats {
        requests: t.requests,
        responses_5xx: t.responses_5xx,
        tandem_errors: t.tandem_errors,
        window_seconds: round(secs),
        rate_per_second: if secs > 0.0 {
            round(requests as f64 / secs)
        } else {
            0.0
        },
        error_rate: (requests > 0).then(|| {
            round(t.responses_5xx.saturating_sub(base.responses_5xx) as f64 / requests as f64)
        }),
        latency_ms,
    }
}

/// Three decimals: enough for people, and stable JSON.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The `q` quantile of cumulative `buckets`: linear within the bucket it falls in; the
/// highest finite bound when it falls in `+Inf`.
pub fn quantile(q: f64, buckets: &[(f64, u64)]) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, c) in buckets {
        if c as f64 >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let in_bucket = (c - lower.1) as f64;
            if in_bucket == 0.0 {
                return le;
            }
            return lower.0 + (le - lower.0) * (rank - lower.1 as f64) / in_bucket;
        }
        lower = (le, c);
    }
    lower.0
}

/// Every listener's totals from the registry's text (other families are skipped).
pub fn read(text: &str) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for s in prom_text::samples_with_prefix(text, "tandem_proxy_") {
        let Some(listener) = s.label("listener") else {
            continue;
        };
        // Every listener has series from its start (gauges): it is listed before its first
        // request.
        if !out.contains_key(listener) {
            out.insert(listener.to_string(), Totals::default());
        }
        let Some(t) = out.get_mut(listener) else {
            continue;
        };
        let value = s.value;
        match s.name {
            REQUESTS => {
                t.requests += value as u64;
                if s.label("status_class") == Some("5xx") {
                    t.responses_5xx += value as u64;
                }
            }
            ERRORS => t.tandem_errors += value as u64,
            name => match name.strip_prefix(DURATION) {
                Some("_bucket") => {
                    let le = match s.label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => match v.parse() {
                            Ok(v) => v,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    t.buckets.push((le, value as u64));
                }
                Some("_sum") => t.sum = value,
                Some("_count") => t.count = value as u64,
                _ => {}
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP tandem_proxy_requests Requests handled.
# TYPE tandem_proxy_requests counter
tandem_proxy_requests_total{listener="web",method="GET",status_class="2xx"} 8
tandem_proxy_requests_total{listener="web",method="POST",status_class="5xx"} 2
tandem_proxy_requests_total{listener="a \"q\"",method="GET",status_class="2xx"} 1
tandem_proxy_errors_total{listener="web",kind="connect_failed"} 1
tandem_proxy_request_duration_seconds_sum{listener="web"} 0.05
tandem_proxy_request_duration_seconds_count{listener="web"} 10
tandem_proxy_request_duration_seconds_bucket{le="0.001",listener="web"} 2
tandem_proxy_request_duration_seconds_bucket{le="0.01",listener="web"} 10
tandem_proxy_request_duration_seconds_bucket{le="+Inf",listener="web"} 10
tandem_app_up 1
# EOF
"#;

    #[test]
    fn reads_the_proxy_families_by_listener() {
        let all = read(TEXT);
        assert_eq!(all.len(), 2);
        let web = &all["web"];
        assert_eq!(web.requests, 10);
        assert_eq!(web.responses_5xx, 2);
        assert_eq!(web.tandem_errors, 1);
        assert_eq!(web.count, 10);
        assert_eq!(
            web.buckets,
            [(0.001, 2), (0.01, 10), (f64::INFINITY, 10)].to_vec()
        );
        assert_eq!(all["a \"q\""].requests, 1);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let b = [(0.001, 2), (0.01, 10), (f64::INFINITY, 10)];
        // rank 5 of 10: 3 of the 8 in (0.001, 0.01].
        let p50 = quantile(0.5, &b);
        assert!((p50 - (0.001 + 0.009 * 3.0 / 8.0)).abs() < 1e-12, "{p50}");
        assert_eq!(quantile(0.1, &b), 0.0005);
        // In +Inf: the highest finite bound.
        assert_eq!(quantile(0.99, &[(0.1, 0), (f64::INFINITY, 3)]), 0.1);
        assert_eq!(quantile(0.5, &[]), 0.0);
    }

    #[test]
    fn the_window_is_the_difference_from_its_start() {
        let base = read(TEXT).remove("web").unwrap();
        let mut now = base.clone();
        now.requests += 20;
        now.responses_5xx += 5;
        now.count += 20;
        now.sum += 0.2;
        now.buckets = vec![(0.001, 2), (0.01, 30), (f64::INFINITY, 30)];
        let s = stats(&now, Some(&base), Duration::from_secs(10));
        assert_eq!(s.requests, 30);
        assert_eq!(s.responses_5xx, 7);
        assert_eq!(s.rate_per_second, 2.0);
        assert_eq!(s.error_rate, Some(0.25));
        let l = s.latency_ms.unwrap();
        assert_eq!(l.mean, 10.0);
        // All 20 in (1 ms, 10 ms].
        assert_eq!(l.p50, 5.5);
        // No requests in the window: no rate of errors, no latency.
        let idle = stats(&now, Some(&now), Duration::from_secs(10));
        assert_eq!((idle.error_rate, idle.latency_ms), (None, None));
        assert_eq!(idle.rate_per_second, 0.0);
    }

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn the_registry_is_read_every_window_unless_watched() {
        let stats = ListenerStats::new(Arc::new(Registry::default()));
        // Ticks microseconds apart, nobody asking: no reading.
        for _ in 0..5 {
            stats.sample();
        }
        assert_eq!(stats.history().samples.len(), 1);
        let mut h = stats.history();
        let t0 = h.samples[0].0;
        assert!(!h.due(at(t0, 1.0)) && !h.due(at(t0, 9.0)));
        assert!(h.due(at(t0, 9.6)));
        h.keep(at(t0, 10.0), BTreeMap::new());
        // Asked for: a reading every tick, for WATCHED.
        h.asked = Some(at(t0, 12.0));
        assert!(h.due(at(t0, 12.0)));
        h.keep(at(t0, 12.0), BTreeMap::new());
        assert!(!h.due(at(t0, 12.3)));
        assert!(h.due(at(t0, 13.0)));
        // Not asked for WATCHED: every WINDOW again.
        let quiet = 12.0 + WATCHED.as_secs_f64();
        h.keep(at(t0, quiet), BTreeMap::new());
        assert!(!h.due(at(t0, quiet + 1.0)) && !h.due(at(t0, quiet + 9.0)));
        assert!(h.due(at(t0, quiet + 10.0)));
    }

    #[test]
    fn samples_are_bounded_and_the_base_is_a_window_ago() {
        let stats = ListenerStats::new(Arc::new(Registry::default()));
        let mut h = stats.history();
        let t0 = h.samples[0].0;
        h.asked = Some(t0);
        // Watched for 100 s, ticks a little late (as the admin task's are).
        let mut now = 0.0;
        while now < 100.0 {
            now += 1.02;
            if h.due(at(t0, now)) {
                h.keep(at(t0, now), BTreeMap::new());
            }
            h.asked = Some(at(t0, now));
            let most = (WINDOW.as_secs_f64() / TICK.as_secs_f64()) as usize + 2;
            assert!(h.samples.len() <= most, "{} at {now}", h.samples.len());
        }
        let (since, _) = h.base(at(t0, now));
        assert!(
            since.abs_diff(WINDOW) <= TICK / 2,
            "the window's start {since:?} ago"
        );
        // Just after start: the window is the time since then.
        let fresh = ListenerStats::new(Arc::new(Registry::default()));
        let start = fresh.history().samples[0].0;
        assert_eq!(
            fresh.history().base(at(start, 3.0)).0,
            Duration::from_secs(3)
        );
        drop(h);
        assert!(stats.report().is_empty());
    }

    /// A registry as a run with three listeners has it (the supervisor's and the log
    /// pipeline's families beside the proxy's): each listener is read once, and the families
    /// that are not the proxy's are passed over.
    #[test]
    fn a_full_registry_yields_each_listener_once() {
        use prometheus_client::encoding::EncodeLabelSet;
        use prometheus_client::metrics::{
            counter::Counter, family::Family, gauge::Gauge, histogram::exponential_buckets,
            histogram::Histogram,
        };
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Req {
            listener: String,
            method: String,
            status_class: String,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct L {
            listener: String,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct K {
            listener: String,
            kind: String,
        }
        let mut r = Registry::default();
        let sup = crate::metrics::SupervisorMetrics::register(&mut r);
        sup.set_phase(crate::phase::Phase::Running);
        r.register_collector(Box::new(crate::metrics::LogsCollector {
            counters: Arc::default(),
            injected_dropped: None,
        }));
        // The proxy's families, shaped as proxy/src/obs/metrics.rs registers them.
        let p = r.sub_registry_with_prefix("tandem_proxy");
        let requests = Family::<Req, Counter>::default();
        p.register("requests", "Requests handled", requests.clone());
        let duration = Family::<L, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        p.register_with_unit(
            "request_duration",
            "Request duration",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let per_listener: Vec<Family<L, Counter>> = (0..9)
            .map(|i| {
                let f = Family::<L, Counter>::default();
                p.register(
                    format!("per_listener_{i}"),
                    "A per-listener counter",
                    f.clone(),
                );
                f
            })
            .collect();
        let in_flight = Family::<L, Gauge>::default();
        p.register("in_flight", "Requests in flight", in_flight.clone());
        let (errors, retries) = (
            Family::<K, Counter>::default(),
            Family::<K, Counter>::default(),
        );
        p.register("errors", "Tandem-made answers", errors.clone());
        p.register("retries", "Retries", retries.clone());
        for name in ["web", "api", "grpc"] {
            let l = L {
                listener: name.into(),
            };
            for method in ["GET", "POST"] {
                for class in ["2xx", "4xx", "5xx"] {
                    requests
                        .get_or_create(&Req {
                            listener: name.into(),
                            method: method.into(),
                            status_class: class.into(),
                        })
                        .inc_by(1234);
                }
            }
            for v in [0.0004, 0.002, 0.01, 0.3] {
                duration.get_or_create(&l).observe(v);
            }
            for f in &per_listener {
                f.get_or_create(&l).inc();
            }
            in_flight.get_or_create(&l).set(3);
            for kind in ["connect_failed", "request_timeout"] {
                let k = K {
                    listener: name.into(),
                    kind: kind.into(),
                };
                errors.get_or_create(&k).inc();
                retries.get_or_create(&k).inc();
            }
        }
        let stats = ListenerStats::new(Arc::new(r));
        let totals = read(&stats.encode());
        assert_eq!(
            totals.keys().collect::<Vec<_>>(),
            ["api", "grpc", "web"].iter().collect::<Vec<_>>()
        );
    }
}
