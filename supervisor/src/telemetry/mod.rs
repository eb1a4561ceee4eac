//! tandem's own OpenTelemetry export: tandem's spans, the app's log records and tandem's
//! metrics leave over OTLP. (The app's own OTLP passing through tandem is another product, in
//! [`crate::passthrough`]; what both share, the `OTEL_*` environment, TLS and the resource, is
//! in [`crate::otlp`].)
//!
//! Layout: [`config`] is the `[telemetry]` section and [`settings`] the same with `OTEL_*`
//! applied; [`export`] is tandem's bounded, counted queue in front of each exporter
//! ([`exporters`]); [`traces`], [`logs`] and [`metrics`] are the three signals.
//!
//! Dependencies point one way: the log pipeline's OTLP sink (`logs::sinks::otlp`) feeds
//! [`Telemetry::log_queue`]; nothing here names a log-pipeline type.
//!
//! Invariant: [`Telemetry`] only offers operations (start, the tracer, the log sink, the
//! metrics push, flush); the lifecycle decides their order. Nothing here calls the SDK's
//! blocking flush or shutdown: every flush goes through tandem's own async queues, bounded by
//! `telemetry.shutdown_timeout`.
pub mod config;
pub mod encode;
pub mod export;
pub mod exporters;
pub mod logs;
pub mod metrics;
pub mod settings;
pub mod traces;

use std::collections::BTreeMap;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry_sdk::logs::SdkLogRecord;
use opentelemetry_sdk::Resource;
use prometheus_client::registry::Registry;
use tandem_proxy::SharedTracer;
use tokio::sync::watch;
use tokio::time::Instant;

pub use config::TelemetryConfig;
pub use exporters::ExportError;
pub use settings::Settings;

/// The running export, one queue per enabled signal.
pub struct Telemetry {
    settings: Settings,
    resource: Resource,
    stats: export::Stats,
    stop: watch::Sender<Option<Instant>>,
    traces: Option<traces::Traces>,
    logs: Option<export::Sender<SdkLogRecord>>,
    metrics: Option<metrics::Push>,
}

// === impl Telemetry ===

impl Telemetry {
    /// Start the span and log queues (metrics start later, with [`Telemetry::start_metrics`],
    /// once every family is registered). Registers `tandem_otlp_*` in `registry`. Needs the
    /// tokio runtime.
    pub fn start(settings: Settings, registry: &mut Registry) -> Result<Self, ExportError> {
        let stats = export::Stats::register(registry);
        let resource = Resource::builder_empty()
            .with_attributes(
                settings
                    .resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let (stop, stop_rx) = watch::channel(None);
        let retry = |timeout| export::Retry {
            retry_for: settings.retry_for,
            request_timeout: timeout,
            stop: stop_rx.clone(),
        };
        let traces = match &settings.traces {
            Some((e, q, s)) => Some(traces::start(
                e,
                *q,
                *s,
                &resource,
                retry(e.timeout),
                stats.clone(),
            )?),
            None => None,
        };
        let logs = match &settings.logs {
            Some((e, q)) => Some(logs::start(
                e,
                *q,
                &resource,
                retry(e.timeout),
                stats.clone(),
            )?),
            None => None,
        };
        for (signal, e) in [
            ("traces", settings.traces.as_ref().map(|t| &t.0)),
            ("logs", settings.logs.as_ref().map(|l| &l.0)),
            ("metrics", settings.metrics.as_ref().map(|m| &m.0)),
        ] {
            if let Some(e) = e {
                tracing::info!(event = "otlp_export", signal, endpoint = %e.endpoint, protocol = ?e.protocol, compression = ?e.compression, tls_roots = e.tls.roots(), "exporting over OTLP");
            }
        }
        Ok(Self {
            settings,
            resource,
            stats,
            stop,
            traces,
            logs,
            metrics: None,
        })
    }

    /// The tracer for the proxy's spans, when traces are exported.
    pub fn tracer(&self) -> Option<SharedTracer> {
        self.traces.as_ref().map(|t| t.tracer.clone())
    }

    /// The queue the log pipeline's OTLP sink feeds, and how many records it holds, when logs
    /// are exported.
    pub fn log_queue(&self) -> Option<(export::Sender<SdkLogRecord>, usize)> {
        let (_, q) = self.settings.logs.as_ref()?;
        Some((self.logs.clone()?, q.size))
    }

    /// Push `registry` (the one `/metrics` serves) over OTLP, when metrics are exported.
    pub fn start_metrics(&mut self, registry: Arc<Registry>) -> Result<(), ExportError> {
        if let Some((e, interval)) = &self.settings.metrics {
            self.metrics = Some(metrics::start(
                e,
                *interval,
                registry,
                &self.resource,
                self.stats.clone(),
            )?);
        }
        Ok(())
    }

    /// The last step before exit: send what is queued (spans, logs, a last metrics push),
    /// retrying no later than `telemetry.shutdown_timeout` from now; returns whether all of
    /// it was sent in time.
    pub async fn shutdown(mut self) -> bool {
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        self.stop.send_replace(Some(deadline));
        let traces = self.traces.take();
        let logs = self.logs.take();
        let metrics = self.metrics.take();
        let (t, l, m) = tokio::join!(
            async {
                match &traces {
                    Some(t) => t.queue.flush(deadline).await,
                    None => true,
                }
            },
            async {
                match &logs {
                    Some(q) => q.flush(deadline).await,
                    None => true,
                }
            },
            async {
                match &metrics {
                    Some(p) => p.flush(deadline).await,
                    None => true,
                }
            },
        );
        let dropped: BTreeMap<String, u64> = ["traces", "logs", "metrics"]
            .into_iter()
            .map(|s| {
                let n = ["queue_full", "export_failed", "stopped"]
                    .into_iter()
                    .map(|reason| {
                        self.stats
                            .dropped
                            .get_or_create(&export::DropLabels { signal: s, reason })
                            .get()
                    })
                    .sum();
                (s.to_string(), n)
            })
            .collect();
        tracing::info!(
            event = "otlp_flushed",
            traces = t,
            logs = l,
            metrics = m,
            dropped_traces = dropped["traces"],
            dropped_logs = dropped["logs"],
            dropped_metrics = dropped["metrics"],
            "OTLP export finished"
        );
        // The providers are dropped here: their processors and readers have nothing left
        // to do, so dropping does not block.
        drop(traces);
        t && l && m
    }
}
