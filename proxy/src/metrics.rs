//! RED metrics of the proxy, registered into the caller's `prometheus_client` registry.
//!
//! Invariant: label values come from closed sets (listener names from config, a fixed list of
//! methods, status classes, cause labels), so cardinality is bounded whatever clients send.

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Listener name.
    pub listener: String,
    /// Method, or OTHER.
    pub method: String,
    /// 1xx..5xx.
    pub status_class: String,
}

/// A listener label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// A listener and a kind (timeout kind, error cause, retry reason).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Listener name.
    pub listener: String,
    /// The kind.
    pub kind: String,
}

/// Handles to every proxy metric. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Requests by listener, method and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Request duration until the response body ended.
    pub duration: Family<ListenerLabels, Histogram>,
    /// Requests in flight.
    pub in_flight: Family<ListenerLabels, Gauge>,
    /// Attempts sent to the app (first tries and retries).
    pub attempts: Family<ListenerLabels, Counter>,
    /// Retries by reason (connect, reset, status, timeout).
    pub retries: Family<KindLabels, Counter>,
    /// Retries refused by the budget.
    pub budget_exhausted: Family<ListenerLabels, Counter>,
    /// Requests shed over the concurrency limit.
    pub shed: Family<ListenerLabels, Counter>,
    /// Timeouts by kind.
    pub timeouts: Family<KindLabels, Counter>,
    /// Requests answered by tandem instead of the app, by cause.
    pub errors: Family<KindLabels, Counter>,
    /// TCP-mode connections accepted.
    pub tcp_connections: Family<ListenerLabels, Counter>,
}

// === impl Metrics ===

impl Metrics {
    /// Creates the metrics and registers them under `tandem_proxy_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 18))
            }),
            in_flight: Family::default(),
            attempts: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            shed: Family::default(),
            timeouts: Family::default(),
            errors: Family::default(),
            tcp_connections: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("tandem_proxy");
        r.register("requests", "Requests handled", m.requests.clone());
        r.register_with_unit(
            "request_duration",
            "Request duration until the response body ended",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register("in_flight", "Requests in flight", m.in_flight.clone());
        r.register(
            "upstream_attempts",
            "Attempts sent to the app",
            m.attempts.clone(),
        );
        r.register("retries", "Retries by reason", m.retries.clone());
        r.register(
            "retry_budget_exhausted",
            "Retries refused by the retry budget",
            m.budget_exhausted.clone(),
        );
        r.register(
            "shed",
            "Requests shed over the concurrency limit",
            m.shed.clone(),
        );
        r.register("timeouts", "Timeouts by kind", m.timeouts.clone());
        r.register(
            "errors",
            "Requests answered by tandem, by cause",
            m.errors.clone(),
        );
        r.register(
            "tcp_connections",
            "TCP-mode connections accepted",
            m.tcp_connections.clone(),
        );
        m
    }
}

/// The method label: one of the standard methods or OTHER.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The status class label, e.g. "2xx"; "none" when the client left before any response.
pub fn status_class(status: u16) -> &'static str {
    match status {
        0 => "none",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_prometheus_text() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        m.requests
            .get_or_create(&RequestLabels {
                listener: "web".into(),
                method: "GET".into(),
                status_class: "2xx".into(),
            })
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        assert!(
            out.contains(
                r#"tandem_proxy_requests_total{listener="web",method="GET",status_class="2xx"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains("tandem_proxy_request_duration_seconds"),
            "{out}"
        );
    }
}
