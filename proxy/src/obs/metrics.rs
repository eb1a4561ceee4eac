//! RED metrics of the proxy, registered into the caller's `prometheus_client` registry.
//!
//! Invariant: label values come from closed sets (listener names from config, a fixed list of
//! methods, status classes, cause labels), so cardinality is bounded whatever clients send.

use std::sync::{Arc, OnceLock};

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
    pub listener: Arc<String>,
    /// Method, or OTHER.
    pub method: &'static str,
    /// 1xx..5xx, or none.
    pub status_class: &'static str,
}

/// A listener label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: Arc<String>,
}

/// A listener and a kind (timeout kind, error cause, retry reason).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Listener name.
    pub listener: Arc<String>,
    /// The kind.
    pub kind: &'static str,
}

/// A listener and why a TLS handshake failed (`no_client_cert`, `unknown_ca`, `expired`,
/// `san_not_allowed`, `name_mismatch`, `not_tls`, `timeout`, ...: a closed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Listener name.
    pub listener: Arc<String>,
    /// The reason.
    pub reason: &'static str,
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
    /// Requests refused as a query of death: in flight at more app exits than allowed.
    pub poison_requests: Family<ListenerLabels, Counter>,
    /// Timeouts by kind.
    pub timeouts: Family<KindLabels, Counter>,
    /// Requests answered by tandem instead of the app, by cause.
    pub errors: Family<KindLabels, Counter>,
    /// gRPC calls by the `grpc-status` the app answered (`OK`, `UNAVAILABLE`, ...).
    pub grpc_responses: Family<KindLabels, Counter>,
    /// TCP-mode connections accepted.
    pub tcp_connections: Family<ListenerLabels, Counter>,
    /// Client connections open (HTTP and TCP), under `limits.max_connections`.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// Client connections closed at once because `limits.max_connections` were open.
    pub connections_overflow: Family<ListenerLabels, Counter>,
    /// Failed `accept` calls (EMFILE, ENFILE, ENOBUFS, ENOMEM), each followed by a back-off.
    pub accept_failures: Family<ListenerLabels, Counter>,
    /// Client TLS handshakes refused or broken, by reason.
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    /// TLS handshakes with the app that failed, by reason.
    pub upstream_tls_failures: Family<ReasonLabels, Counter>,
    /// Fetches of a JWKS URL started.
    pub jwks_fetches: Family<ListenerLabels, Counter>,
    /// Fetches of a JWKS URL that failed (the keys in use were kept).
    pub jwks_fetch_failures: Family<ListenerLabels, Counter>,
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
            poison_requests: Family::default(),
            timeouts: Family::default(),
            errors: Family::default(),
            grpc_responses: Family::default(),
            tcp_connections: Family::default(),
            connections_open: Family::default(),
            connections_overflow: Family::default(),
            accept_failures: Family::default(),
            tls_handshake_failures: Family::default(),
            upstream_tls_failures: Family::default(),
            jwks_fetches: Family::default(),
            jwks_fetch_failures: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("tandem_proxy");
        r.register("requests", "Requests handled", m.requests.clone());
        r.register_with_unit(
            "request_duration",
            "Request duration until the response body ended",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "grpc_responses",
            "gRPC calls by the grpc-status the app answered",
            m.grpc_responses.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests (and TCP connections) in flight",
            m.in_flight.clone(),
        );
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
        r.register(
            "poison_requests",
            "Requests not sent again because the app exited while handling them, also after a replay",
            m.poison_requests.clone(),
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
        r.register(
            "connections_open",
            "Client connections open (HTTP and TCP)",
            m.connections_open.clone(),
        );
        r.register(
            "connections_overflow",
            "Client connections closed at once because limits.max_connections were open",
            m.connections_overflow.clone(),
        );
        r.register(
            "accept_failures",
            "Failed accept calls (EMFILE, ENFILE, ENOBUFS, ENOMEM), each followed by a back-off",
            m.accept_failures.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Client TLS handshakes refused or broken, by reason",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "upstream_tls_failures",
            "TLS handshakes with the app that failed, by reason",
            m.upstream_tls_failures.clone(),
        );
        r.register(
            "jwks_fetches",
            "Fetches of a JWKS URL started",
            m.jwks_fetches.clone(),
        );
        r.register(
            "jwks_fetch_failures",
            "Fetches of a JWKS URL that failed (the keys in use were kept)",
            m.jwks_fetch_failures.clone(),
        );
        m
    }
}

/// One listener's metric handles, looked up once so the request path does not hash labels
/// for the single-label series.
#[derive(Clone, Debug)]
pub(crate) struct ListenerMetrics {
    all: Metrics,
    listener: Arc<String>,
    pub in_flight: Gauge,
    pub attempts: Counter,
    pub duration: Histogram,
    pub shed: Counter,
    pub poison_requests: Counter,
    pub budget_exhausted: Counter,
    pub tcp_connections: Counter,
    pub connections_open: Gauge,
    pub connections_overflow: Counter,
    pub accept_failures: Counter,
    /// The request counter's series, by method and status class, each looked up in the
    /// family (a lock and a hash) on first use only.
    requests: Arc<[OnceLock<Counter>; METHODS.len() * CLASSES.len()]>,
}

/// The method labels, as [`method_label`] gives them.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
/// The status class labels, as [`status_class`] gives them.
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

// === impl ListenerMetrics ===

impl ListenerMetrics {
    pub fn new(all: &Metrics, listener: &str) -> Self {
        let listener = Arc::new(listener.to_string());
        let l = ListenerLabels {
            listener: listener.clone(),
        };
        Self {
            in_flight: all.in_flight.get_or_create(&l).clone(),
            attempts: all.attempts.get_or_create(&l).clone(),
            duration: all.duration.get_or_create(&l).clone(),
            shed: all.shed.get_or_create(&l).clone(),
            poison_requests: all.poison_requests.get_or_create(&l).clone(),
            budget_exhausted: all.budget_exhausted.get_or_create(&l).clone(),
            tcp_connections: all.tcp_connections.get_or_create(&l).clone(),
            connections_open: all.connections_open.get_or_create(&l).clone(),
            connections_overflow: all.connections_overflow.get_or_create(&l).clone(),
            accept_failures: all.accept_failures.get_or_create(&l).clone(),
            requests: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            all: all.clone(),
            listener,
        }
    }

    /// Counts a finished request.
    pub fn request(&self, method: &'static str, status: u16) {
        let status_class = status_class(status);
        let labels = || RequestLabels {
            listener: self.listener.clone(),
            method,
            status_class,
        };
        let m = METHODS.iter().position(|x| *x == method);
        let c = CLASSES.iter().position(|x| *x == status_class);
        match (m, c) {
            (Some(m), Some(c)) => self.requests[m * CLASSES.len() + c]
                .get_or_init(|| self.all.requests.get_or_create(&labels()).clone())
                .inc(),
            _ => self.all.requests.get_or_create(&labels()).inc(),
        };
    }

    /// Counts a retry by reason.
    pub fn retry(&self, kind: &'static str) {
        self.all.retries.get_or_create(&self.kind(kind)).inc();
    }

    /// Counts a tandem-made answer by cause, and a timeout by kind.
    pub fn error(&self, cause: crate::cause::Cause) {
        let labels = self.kind(cause.as_str());
        self.all.errors.get_or_create(&labels).inc();
        if cause.is_timeout() {
            self.all.timeouts.get_or_create(&labels).inc();
        }
    }

    /// Counts a gRPC call's status (its name: a closed set).
    pub fn grpc_status(&self, code: u32) {
        let labels = self.kind(crate::grpc::code_name(code));
        self.all.grpc_responses.get_or_create(&labels).inc();
    }

    /// Counts a refused client TLS handshake.
    pub fn tls_handshake_failure(&self, reason: &'static str) {
        self.all
            .tls_handshake_failures
            .get_or_create(&self.reason(reason))
            .inc();
    }

    /// Counts a failed TLS handshake with the app.
    pub fn upstream_tls_failure(&self, reason: &'static str) {
        self.all
            .upstream_tls_failures
            .get_or_create(&self.reason(reason))
            .inc();
    }

    /// This listener's JWKS fetch and failure counters.
    pub fn jwks_counters(&self) -> [Counter; 2] {
        let l = ListenerLabels {
            listener: self.listener.clone(),
        };
        [
            self.all.jwks_fetches.get_or_create(&l).clone(),
            self.all.jwks_fetch_failures.get_or_create(&l).clone(),
        ]
    }

    fn reason(&self, reason: &'static str) -> ReasonLabels {
        ReasonLabels {
            listener: self.listener.clone(),
            reason,
        }
    }

    fn kind(&self, kind: &'static str) -> KindLabels {
        KindLabels {
            listener: self.listener.clone(),
            kind,
        }
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
                listener: Arc::new("web".into()),
                method: "GET",
                status_class: "2xx",
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
