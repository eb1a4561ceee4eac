//! tandem's own Prometheus metrics: the app's lifecycle as numbers.
//!
//! One registry for the whole process, filled at start-up (supervisor, log pipeline, proxy
//! each register their own families) and only read afterwards by the admin port's `/metrics`.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::phase::Phase;

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
        for p in Phase::ALL {
            let v = i64::from(p == phase);
            self.phase
                .get_or_create(&PhaseLabels {
                    phase: p.as_str().to_string(),
                })
                .set(v);
        }
    }
}

/// The log pipeline's counters, read at each scrape (the pipeline keeps plain atomics on its
/// hot path; nothing is copied between scrapes).
pub struct LogsCollector {
    pub counters: std::sync::Arc<crate::logs::Counters>,
    pub injected_dropped: Option<crate::logs::Injector>,
}

impl std::fmt::Debug for LogsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogsCollector")
    }
}

impl prometheus_client::collector::Collector for LogsCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::{
            encoding::EncodeMetric,
            metrics::{counter::ConstCounter, MetricType},
        };
        let s = self.counters.snapshot();
        let plain = [
            (
                "tandem_log_lines_in",
                "Lines read from the app (pipes and tailed files)",
                s.lines_in,
            ),
            ("tandem_log_bytes_in", "Bytes read from the app", s.bytes_in),
            (
                "tandem_log_partial",
                "Records that are parts of a line longer than max_line_bytes",
                s.partial,
            ),
            (
                "tandem_log_multiline_merges",
                "Lines merged into a previous record (stack traces)",
                s.multiline_merges,
            ),
            (
                "tandem_log_parse_failures",
                "Lines that looked structured but did not parse (kept as text)",
                s.parse_failures,
            ),
            (
                "tandem_log_lossy",
                "Lines with invalid UTF-8 (kept, bytes replaced)",
                s.lossy,
            ),
        ];
        for (name, help, v) in plain {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        type Get = fn(&crate::logs::counters::SinkSnapshot) -> u64;
        let per_sink: [(&str, &str, Get); 3] = [
            (
                "tandem_log_records_out",
                "Records written by each sink",
                |k| k.records_out,
            ),
            (
                "tandem_log_dropped",
                "Records dropped by each sink in drop mode (never silent)",
                |k| k.dropped,
            ),
            ("tandem_log_sink_errors", "Write errors by each sink", |k| {
                k.errors
            }),
        ];
        for (name, help, get) in per_sink {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for sink in &s.sinks {
                let labels = vec![("sink".to_string(), sink.name.clone())];
                ConstCounter::new(get(sink)).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(inj) = &self.injected_dropped {
            let c = ConstCounter::new(inj.dropped());
            c.encode(encoder.encode_descriptor(
                "tandem_log_injected_dropped",
                "Access records dropped because the pipeline's queue was full",
                None,
                c.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
