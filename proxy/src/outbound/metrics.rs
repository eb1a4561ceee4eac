//! Metrics of the outbound services, under `tandem_outbound_`.
//!
//! Invariant: label values are service names from config, endpoint addresses the service's
//! discovery returned (a series is removed when its endpoint leaves), and closed sets
//! (status classes, causes, limits), so cardinality stays bounded.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A service alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The `[[outbound]]` name.
    pub service: Arc<String>,
}

/// A service and a closed-set kind (status class, cause, limit, outcome).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceKindLabels {
    /// The `[[outbound]]` name.
    pub service: Arc<String>,
    /// The kind.
    pub kind: &'static str,
}

/// A service and one of its endpoints.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The `[[outbound]]` name.
    pub service: Arc<String>,
    /// `ip:port`.
    pub endpoint: String,
}

/// An attempt to one endpoint and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// The `[[outbound]]` name.
    pub service: Arc<String>,
    /// `ip:port`.
    pub endpoint: String,
    /// `2xx`..`5xx`, or the cause (`connect_failed`, `per_try_timeout`, ...).
    pub outcome: &'static str,
}

/// Handles to every outbound metric. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OutboundMetrics {
    /// Calls by service and status class (`503` from tandem included).
    pub(crate) requests: Family<ServiceKindLabels, Counter>,
    /// Calls until their response head, per service.
    pub(crate) duration: Family<ServiceLabels, Histogram>,
    /// Calls in flight.
    pub(crate) in_flight: Family<ServiceLabels, Gauge>,
    /// Attempts by endpoint and outcome.
    pub(crate) attempts: Family<AttemptLabels, Counter>,
    /// Retries by reason.
    pub(crate) retries: Family<ServiceKindLabels, Counter>,
    /// Retries refused by the budget.
    pub(crate) budget_exhausted: Family<ServiceLabels, Counter>,
    /// Calls tandem answered itself, by cause (`breaker_open`, `no_endpoints`, ...).
    pub(crate) errors: Family<ServiceKindLabels, Counter>,
    /// gRPC calls by the `grpc-status` they got.
    pub(crate) grpc_responses: Family<ServiceKindLabels, Counter>,
    /// Ejections by endpoint.
    pub(crate) ejections: Family<EndpointLabels, Counter>,
    /// 1 while an endpoint is ejected.
    pub(crate) ejected: Family<EndpointLabels, Gauge>,
    /// Endpoints known.
    pub(crate) endpoints: Family<ServiceLabels, Gauge>,
    /// Calls refused by the breaker, by limit (`requests`).
    pub(crate) breaker_rejections: Family<ServiceKindLabels, Counter>,
    /// 1 while the breaker refuses (max_requests in flight and max_pending waiting).
    pub(crate) breaker_open: Family<ServiceLabels, Gauge>,
    /// Resolutions that changed the endpoints.
    pub(crate) resolver_updates: Family<ServiceLabels, Counter>,
    /// Resolutions that failed (the last good endpoints were kept).
    pub(crate) resolver_failures: Family<ServiceLabels, Counter>,
    /// TCP connections forwarded.
    pub(crate) tcp_connections: Family<ServiceLabels, Counter>,
}

// === impl OutboundMetrics ===

impl OutboundMetrics {
    /// Creates the metrics and registers them under `tandem_outbound_`.
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
            errors: Family::default(),
            grpc_responses: Family::default(),
            ejections: Family::default(),
            ejected: Family::default(),
            endpoints: Family::default(),
            breaker_rejections: Family::default(),
            breaker_open: Family::default(),
            resolver_updates: Family::default(),
            resolver_failures: Family::default(),
            tcp_connections: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("tandem_outbound");
        r.register(
            "requests",
            "Calls of the app to outbound services, by status class",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Outbound calls until their response head",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "requests_in_flight",
            "Outbound calls in flight",
            m.in_flight.clone(),
        );
        r.register(
            "attempts",
            "Attempts sent to endpoints, by outcome",
            m.attempts.clone(),
        );
        r.register("retries", "Outbound retries, by reason", m.retries.clone());
        r.register(
            "retry_budget_exhausted",
            "Outbound retries refused by the retry budget",
            m.budget_exhausted.clone(),
        );
        r.register(
            "errors",
            "Outbound calls tandem answered itself, by cause",
            m.errors.clone(),
        );
        r.register(
            "grpc_responses",
            "Outbound gRPC calls by the grpc-status they got",
            m.grpc_responses.clone(),
        );
        r.register(
            "ejections",
            "Endpoints ejected after consecutive failures",
            m.ejections.clone(),
        );
        r.register(
            "endpoint_ejected",
            "1 while the endpoint is ejected",
            m.ejected.clone(),
        );
        r.register("endpoints", "Endpoints of the service", m.endpoints.clone());
        r.register(
            "breaker_rejections",
            "Calls refused by the circuit breaker, by limit",
            m.breaker_rejections.clone(),
        );
        r.register(
            "breaker_open",
            "1 while the circuit breaker refuses calls",
            m.breaker_open.clone(),
        );
        r.register(
            "resolver_updates",
            "Resolutions that changed the endpoints",
            m.resolver_updates.clone(),
        );
        r.register(
            "resolver_failures",
            "Resolutions that failed (the last good endpoints were kept)",
            m.resolver_failures.clone(),
        );
        r.register(
            "tcp_connections",
            "TCP connections forwarded",
            m.tcp_connections.clone(),
        );
        m
    }
}

/// One service's view of the metrics: its label built once.
#[derive(Clone, Debug)]
pub(crate) struct ServiceMetrics {
    all: OutboundMetrics,
    service: ServiceLabels,
}

impl ServiceMetrics {
    pub fn new(all: &OutboundMetrics, service: &str) -> Self {
        Self {
            all: all.clone(),
            service: ServiceLabels {
                service: Arc::new(service.to_string()),
            },
        }
    }

    fn kind(&self, kind: &'static str) -> ServiceKindLabels {
        ServiceKindLabels {
            service: self.service.service.clone(),
            kind,
        }
    }

    fn endpoint(&self, endpoint: &str) -> EndpointLabels {
        EndpointLabels {
            service: self.service.service.clone(),
            endpoint: endpoint.to_string(),
        }
    }

    pub fn request(&self, class: &'static str, seconds: f64) {
        self.all.requests.get_or_create(&self.kind(class)).inc();
        self.all
            .duration
            .get_or_create(&self.service)
            .observe(seconds);
    }

    pub fn in_flight(&self) -> Gauge {
        self.all.in_flight.get_or_create(&self.service).clone()
    }

    pub fn attempt(&self, endpoint: &str, outcome: &'static str) {
        self.all
            .attempts
            .get_or_create(&AttemptLabels {
                service: self.service.service.clone(),
                endpoint: endpoint.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn retry(&self, reason: &'static str) {
        self.all.retries.get_or_create(&self.kind(reason)).inc();
    }

    pub fn budget_exhausted(&self) {
        self.all.budget_exhausted.get_or_create(&self.service).inc();
    }

    pub fn error(&self, cause: &'static str) {
        self.all.errors.get_or_create(&self.kind(cause)).inc();
    }

    pub fn grpc_status(&self, code: u32) {
        self.all
            .grpc_responses
            .get_or_create(&self.kind(crate::grpc::code_name(code)))
            .inc();
    }

    pub fn ejected(&self, endpoint: &str, on: bool) {
        let l = self.endpoint(endpoint);
        if on {
            self.all.ejections.get_or_create(&l).inc();
        }
        self.all.ejected.get_or_create(&l).set(i64::from(on));
    }

    pub fn endpoints(&self, n: usize) {
        self.all
            .endpoints
            .get_or_create(&self.service)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// An endpoint left: its series go.
    pub fn forget(&self, endpoint: &str) {
        let l = self.endpoint(endpoint);
        self.all.ejected.remove(&l);
        self.all.ejections.remove(&l);
    }

    pub fn breaker_rejected(&self, limit: &'static str) {
        self.all
            .breaker_rejections
            .get_or_create(&self.kind(limit))
            .inc();
    }

    pub fn breaker_open(&self, open: bool) {
        self.all
            .breaker_open
            .get_or_create(&self.service)
            .set(i64::from(open));
    }

    pub fn resolver(&self, ok: bool) {
        if ok {
            self.all.resolver_updates.get_or_create(&self.service).inc();
        } else {
            self.all
                .resolver_failures
                .get_or_create(&self.service)
                .inc();
        }
    }

    pub fn tcp_connection(&self) {
        self.all.tcp_connections.get_or_create(&self.service).inc();
    }
}
