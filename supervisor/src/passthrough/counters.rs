//! The pass-through's counters on `/metrics`. Every request to a signal's endpoint is
//! `received` once and ends as `forwarded` or `dropped{reason}` (or is still queued):
//! nothing is lost without a count.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::Signal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    signal: String,
    reason: String,
}

/// Why a request was dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not valid OTLP (answered 400 / INVALID_ARGUMENT).
    Malformed,
    /// Larger than `max_request_size` (answered 413 / INVALID_ARGUMENT).
    TooLarge,
    /// The signal's queue was full (answered 429 / RESOURCE_EXHAUSTED: the SDK may retry).
    QueueFull,
    /// Arrived while tandem was stopping (answered 503 / UNAVAILABLE).
    Stopping,
    /// The upstream answered with an error that retrying cannot fix.
    UpstreamRejected,
    /// The upstream stayed unavailable for `max_retry_time`.
    RetriesExhausted,
    /// Still queued when the shutdown flush ran out of time.
    Shutdown,
}

impl Drop {
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::TooLarge => "too_large",
            Drop::QueueFull => "queue_full",
            Drop::Stopping => "stopping",
            Drop::UpstreamRejected => "upstream_rejected",
            Drop::RetriesExhausted => "retries_exhausted",
            Drop::Shutdown => "shutdown",
        }
    }
}

/// Handles to the counters (cheap to clone; shared by receivers and forwarders).
#[derive(Clone, Default)]
pub struct Counters {
    received: Family<SignalLabels, Counter>,
    forwarded: Family<SignalLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
}

// === impl Counters ===

impl Counters {
    /// Create and register under `tandem_otlp_passthrough_*` (each signal starts at 0).
    pub fn register(registry: &mut Registry) -> Self {
        let c = Self::default();
        registry.register(
            "tandem_otlp_passthrough_received",
            "OTLP export requests received from the app",
            c.received.clone(),
        );
        registry.register(
            "tandem_otlp_passthrough_forwarded",
            "OTLP export requests the upstream accepted",
            c.forwarded.clone(),
        );
        registry.register(
            "tandem_otlp_passthrough_dropped",
            "OTLP export requests dropped, by reason (never silent)",
            c.dropped.clone(),
        );
        for s in Signal::ALL {
            let l = SignalLabels {
                signal: s.as_str().into(),
            };
            drop(c.received.get_or_create(&l));
            drop(c.forwarded.get_or_create(&l));
        }
        c
    }

    pub fn received(&self, s: Signal) {
        self.received
            .get_or_create(&SignalLabels {
                signal: s.as_str().into(),
            })
            .inc();
    }

    pub fn forwarded(&self, s: Signal) {
        self.forwarded
            .get_or_create(&SignalLabels {
                signal: s.as_str().into(),
            })
            .inc();
    }

    pub fn dropped(&self, s: Signal, why: Drop, n: u64) {
        self.dropped
            .get_or_create(&DropLabels {
                signal: s.as_str().into(),
                reason: why.as_str().into(),
            })
            .inc_by(n);
    }
}
