//! Metrics: the prometheus-client registry behind `/metrics` is the one source of truth; this
//! bridge reads it (its OpenMetrics text) on every push and reports each family through an
//! OpenTelemetry observable instrument of the same name, pushed over OTLP.
//!
//! Why a bridge and not parallel OTel instruments: every counter would be incremented twice
//! on the request path, and the two could disagree; reading the registry costs one encode per
//! push interval and `/metrics` and OTLP cannot differ. Mapping: a counter family `F` (samples
//! `F_total`) becomes a cumulative sum `F`; a gauge stays a gauge; a histogram `F` becomes the
//! sums `F_count` and `F_sum` (observable instruments cannot carry buckets).
//! Invariant: the families are read once, when the push starts (after every family was
//! registered); the label sets are read on every push.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::Resource;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use super::export::Stats;
use super::settings::{Export, Signal};
use crate::prom_text::{self, Line};

/// Samples by sample name: label sets and values.
type Samples = HashMap<String, Vec<(Vec<KeyValue>, f64)>>;

/// One metric family as the text format declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The family name (`tandem_proxy_requests`).
    pub name: String,
    /// `counter`, `gauge`, `histogram`, ...
    pub kind: String,
    /// The HELP text.
    pub help: String,
}

/// Parse OpenMetrics text into its families and samples (with [`crate::prom_text`]). Lines
/// it does not understand are skipped (the registry only writes what it can encode).
pub fn parse(text: &str) -> (Vec<Family>, Samples) {
    let mut families: Vec<Family> = Vec::new();
    let mut help: HashMap<String, String> = HashMap::new();
    let mut samples: Samples = HashMap::new();
    for line in prom_text::lines(text) {
        match line {
            Line::Help { name, text } => {
                help.insert(name.to_string(), text.into_owned());
            }
            Line::Type { name, kind } => families.push(Family {
                name: name.to_string(),
                kind: kind.to_string(),
                help: String::new(),
            }),
            Line::Sample(s) => {
                let labels = s
                    .labels
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k.to_string(), v.into_owned()))
                    .collect();
                samples
                    .entry(s.name.to_string())
                    .or_default()
                    .push((labels, s.value));
            }
            Line::Comment | Line::Eof => {}
        }
    }
    for f in &mut families {
        f.help = help.remove(&f.name).unwrap_or_default();
    }
    (families, samples)
}

/// The provider's reader, shared so the push task can collect on its own schedule.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The running metrics push: ask it for a last push at stop.
pub struct Push {
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

// === impl Push ===

impl Push {
    /// Push once more (the final values); true when done before `deadline`.
    pub async fn flush(&self, deadline: Instant) -> bool {
        let (ack, done) = oneshot::channel();
        if self.flush.send(ack).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout_at(deadline, done).await, Ok(Ok(())))
    }
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        tracing::warn!(
            event = "otlp_metrics_encode_failed",
            "cannot encode the metrics registry"
        );
    }
    text
}

/// Start pushing `registry` every `interval` to `e`.
pub fn start(
    e: &Export,
    interval: Duration,
    registry: Arc<Registry>,
    resource: &Resource,
    stats: Stats,
) -> Result<Push, super::exporters::ExportError> {
    let exporter = super::exporters::metric(e)?;
    let reader = SharedReader(Arc::new(ManualReader::builder().build()));
    let provider = SdkMeterProvider::builder()
        .with_reader(reader.clone())
        .with_resource(resource.clone())
        .build();
    let meter = provider.meter("tandem");
    let snapshot: Arc<Mutex<Samples>> = Arc::default();
    let (families, _) = parse(&encode(&registry));
    let observe = |sample: String| {
        let snapshot = snapshot.clone();
        move |obs: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
            if let Ok(s) = snapshot.lock() {
                for (labels, v) in s.get(&sample).into_iter().flatten() {
                    obs.observe(*v, labels);
                }
            }
        }
    };
    let mut instruments: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for f in families {
        let help = f.help.clone();
        match f.kind.as_str() {
            "counter" => instruments.push(Box::new(
                meter
                    .f64_observable_counter(f.name.clone())
                    .with_description(help)
                    .with_callback(observe(format!("{}_total", f.name)))
                    .build(),
            )),
            "gauge" | "unknown" => instruments.push(Box::new(
                meter
                    .f64_observable_gauge(f.name.clone())
                    .with_description(help)
                    .with_callback(observe(f.name.clone()))
                    .build(),
            )),
            "histogram" => {
                for part in ["count", "sum"] {
                    let n = format!("{}_{part}", f.name);
                    instruments.push(Box::new(
                        meter
                            .f64_observable_counter(n.clone())
                            .with_description(help.clone())
                            .with_callback(observe(n))
                            .build(),
                    ));
                }
            }
            _ => {}
        }
    }
    let (flush, mut flushes) = mpsc::channel::<oneshot::Sender<()>>(1);
    let request_timeout = e.timeout + Duration::from_secs(1);
    tokio::spawn(async move {
        // Kept alive for as long as the task pushes.
        let _keep = (provider, instruments);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut failures: u64 = 0;
        loop {
            let ack = tokio::select! {
                _ = tick.tick() => None,
                a = flushes.recv() => match a {
                    Some(a) => Some(a),
                    None => break,
                },
            };
            let (_, samples) = parse(&encode(&registry));
            if let Ok(mut s) = snapshot.lock() {
                *s = samples;
            }
            let mut rm = ResourceMetrics::default();
            let pushed = match reader.collect(&mut rm) {
                Ok(()) => match timeout(request_timeout, exporter.export(&rm)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("export request timed out".into()),
                },
                Err(e) => Err(e.to_string()),
            };
            match pushed {
                Ok(()) => {
                    failures = 0;
                    stats
                        .exported
                        .get_or_create(&super::export::SignalLabels {
                            signal: Signal::Metrics.as_str(),
                        })
                        .inc();
                }
                Err(err) => {
                    // Counters are cumulative: the next push carries what this one lost.
                    failures += 1;
                    stats.drop_n(Signal::Metrics, "export_failed", 1);
                    stats
                        .failed_requests
                        .get_or_create(&super::export::SignalLabels {
                            signal: Signal::Metrics.as_str(),
                        })
                        .inc();
                    if failures.is_power_of_two() {
                        tracing::warn!(event = "otlp_export_failed", signal = "metrics", failures, error = %err, "OTLP metrics push failed");
                    }
                }
            }
            if let Some(a) = ack {
                let _ = a.send(());
            }
        }
    });
    Ok(Push { flush })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_registry_text() {
        let text = "# HELP tandem_proxy_requests Requests.\n# TYPE tandem_proxy_requests counter\n\
tandem_proxy_requests_total{listener=\"a\",code=\"2\\\"x\"} 3\n\
tandem_proxy_requests_created{listener=\"a\"} 1.7e9\n\
# TYPE tandem_app_up gauge\ntandem_app_up 1\n# EOF\n";
        let (fams, s) = parse(text);
        assert_eq!(fams.len(), 2);
        assert_eq!(fams[0].kind, "counter");
        assert_eq!(fams[0].help, "Requests.");
        let r = &s["tandem_proxy_requests_total"];
        assert_eq!(r[0].1, 3.0);
        assert_eq!(r[0].0[1], KeyValue::new("code", "2\"x"));
        assert_eq!(s["tandem_app_up"][0], (vec![], 1.0));
    }
}
