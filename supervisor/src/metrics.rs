//! tandem's own Prometheus metrics: the app's lifecycle as numbers.
//!
//! One registry for the whole process, filled at start-up (supervisor, log pipeline, proxy
//! each register their own families) and only read afterwards by the admin port's `/metrics`.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::lifecycle::Phase;

/// Label set for exits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExitLabels {
    /// The exit code as tandem reports it (128+N for signal N).
    pub code: String,
}

/// Label set for the lifecycle phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// Handles to the supervisor's metrics.
#[derive(Clone, Default)]
pub struct SupervisorMetrics {
    pub starts: Counter,
    pub restarts: Counter,
    pub exits: Family<ExitLabels, Counter>,
    pub app_up: Gauge,
    pub ready: Gauge,
    pub orphans_reaped: Counter,
    pub phase: Family<PhaseLabels, Gauge>,
}

// === impl SupervisorMetrics ===

impl SupervisorMetrics {
    /// Create the metrics and register them under the `tandem_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "tandem_app_starts",
            "Times the app was started",
            m.starts.clone(),
        );
        registry.register(
            "tandem_app_restarts",
            "Times the app was restarted after it exited",
            m.restarts.clone(),
        );
        registry.register(
            "tandem_app_exits",
            "App exits by exit code (128+N: signal N)",
            m.exits.clone(),
        );
        registry.register(
            "tandem_app_up",
            "1 while the app's process runs",
            m.app_up.clone(),
        );
        registry.register(
            "tandem_app_ready",
            "1 while the app is ready for traffic",
            m.ready.clone(),
        );
        registry.register(
            "tandem_orphans_reaped",
            "Orphaned processes (the app's grandchildren) reaped by tandem",
            m.orphans_reaped.clone(),
        );
        registry.register(
            "tandem_lifecycle_phase",
            "1 for the current lifecycle phase",
            m.phase.clone(),
        );
        m
    }

    /// Make `phase` the only phase with value 1.
    pub fn set_phase(&self, phase: Phase) {
        for p in [
            Phase::Starting,
            Phase::Running,
            Phase::Restarting,
            Phase::Stopping,
            Phase::Stopped,
        ] {
            let v = i64::from(p == phase);
            self.phase
                .get_or_create(&PhaseLabels {
                    phase: p.as_str().to_string(),
                })
                .set(v);
        }
    }
}
