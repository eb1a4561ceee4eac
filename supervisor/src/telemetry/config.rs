//! The `[telemetry]` section of the config: where tandem's OTLP goes and how much it may hold.
//!
//! Export is off until an endpoint is known (`telemetry.endpoint`, a per-signal endpoint, or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`); the standard `OTEL_*` variables are applied over these keys
//! at start (see [`super::settings`]), the way `TANDEM_*` variables are applied over files.
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::otlp::env::BadValue;

pub use crate::otlp::Compression;

/// OpenTelemetry export and pass-through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP receiver base URL (`http://collector:4317` for gRPC, `http://collector:4318` for
    /// HTTP, where `/v1/traces` etc. are appended); `""`: off unless `OTEL_*` sets one.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: String,
    /// Headers on every export request (e.g. an API key); values are redacted by `tandem check`.
    pub headers: BTreeMap<String, String>,
    /// PEM CA bundle an `https://` receiver's certificate must chain to; empty: the built-in
    /// Mozilla roots (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub ca_file: String,
    /// PEM client certificate chain for mTLS (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`).
    pub cert_file: String,
    /// PEM private key of `cert_file` (`OTEL_EXPORTER_OTLP_CLIENT_KEY`).
    pub key_file: String,
    /// `none` or `gzip` (`OTEL_EXPORTER_OTLP_COMPRESSION`).
    pub compression: String,
    /// Longest one export request may take.
    #[serde(with = "tandem_proxy::duration")]
    pub timeout: Duration,
    /// How long a batch is retried (exponential backoff) while the receiver is down; after
    /// that it is dropped and counted in `tandem_otlp_dropped_total{reason="export_failed"}`.
    #[serde(with = "tandem_proxy::duration")]
    pub retry_for: Duration,
    /// At stop: the longest tandem waits for the last spans, logs and metrics to be sent.
    #[serde(with = "tandem_proxy::duration")]
    pub shutdown_timeout: Duration,
    /// Extra resource attributes (`deployment.environment.name = "prod"`).
    pub resource: BTreeMap<String, String>,
    /// The proxy's spans.
    pub traces: TracesConfig,
    /// The app's log records.
    pub logs: SignalConfig,
    /// tandem's metrics (the same as `/metrics`).
    pub metrics: MetricsConfig,
    /// OTLP receiver for the app's own telemetry (see [`crate::passthrough`]).
    pub passthrough: crate::passthrough::PassthroughConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: "grpc".into(),
            headers: BTreeMap::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            compression: "none".into(),
            timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(5),
            resource: BTreeMap::new(),
            traces: TracesConfig::default(),
            logs: SignalConfig::default(),
            metrics: MetricsConfig::default(),
            passthrough: Default::default(),
        }
    }
}

/// What every exported signal has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    /// Export this signal (when an endpoint is known).
    pub enabled: bool,
    /// This signal's own URL, used as given (for HTTP include the path, `/v1/logs`).
    pub endpoint: String,
    /// Records held while waiting for export; when full, new ones are dropped and counted.
    pub queue_size: usize,
    /// Records per export request.
    pub batch_size: usize,
    /// Longest a record waits for its batch to fill.
    #[serde(with = "tandem_proxy::duration")]
    pub batch_delay: Duration,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: String::new(),
            queue_size: 2048,
            batch_size: 512,
            batch_delay: Duration::from_secs(1),
        }
    }
}

/// Traces: a signal plus its sampler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Export spans (when an endpoint is known).
    pub enabled: bool,
    /// The traces URL, used as given (for HTTP include `/v1/traces`).
    pub endpoint: String,
    /// Spans held while waiting for export; when full, new ones are dropped and counted.
    pub queue_size: usize,
    /// Spans per export request.
    pub batch_size: usize,
    /// Longest a span waits for its batch to fill.
    #[serde(with = "tandem_proxy::duration")]
    pub batch_delay: Duration,
    /// `parentbased_traceidratio` (default), `parentbased_always_on`, `parentbased_always_off`,
    /// `traceidratio`, `always_on`, `always_off` (`OTEL_TRACES_SAMPLER`'s names).
    pub sampler: String,
    /// The ratio of new traces sampled, 0.0 to 1.0 (`OTEL_TRACES_SAMPLER_ARG`).
    pub sampler_ratio: f64,
}

impl Default for TracesConfig {
    fn default() -> Self {
        let s = SignalConfig::default();
        Self {
            enabled: s.enabled,
            endpoint: s.endpoint,
            queue_size: s.queue_size,
            batch_size: s.batch_size,
            batch_delay: s.batch_delay,
            sampler: "parentbased_traceidratio".into(),
            sampler_ratio: 1.0,
        }
    }
}

// === impl TracesConfig ===

impl TracesConfig {
    /// The keys every signal has.
    pub fn signal(&self) -> SignalConfig {
        SignalConfig {
            enabled: self.enabled,
            endpoint: self.endpoint.clone(),
            queue_size: self.queue_size,
            batch_size: self.batch_size,
            batch_delay: self.batch_delay,
        }
    }
}

/// Metrics: a periodic push of the same instruments `/metrics` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Push metrics (when an endpoint is known).
    pub enabled: bool,
    /// The metrics URL, used as given (for HTTP include `/v1/metrics`).
    pub endpoint: String,
    /// Time between pushes (`OTEL_METRIC_EXPORT_INTERVAL`).
    #[serde(with = "tandem_proxy::duration")]
    pub interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: String::new(),
            interval: Duration::from_secs(60),
        }
    }
}

/// The export protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    HttpProtobuf,
}

impl Protocol {
    /// Parse the names `OTEL_EXPORTER_OTLP_PROTOCOL` uses.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" | "http" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
}

pub const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

// === impl TelemetryConfig ===

impl TelemetryConfig {
    /// Checks serde cannot express; each error names the key.
    pub fn validate(&self) -> Result<(), BadValue> {
        if Protocol::parse(&self.protocol).is_none() {
            return Err(BadValue::new(
                "telemetry.protocol",
                format!(
                    "{:?} is not a protocol (grpc | http/protobuf)",
                    self.protocol
                ),
            ));
        }
        if Compression::parse(&self.compression).is_none() {
            return Err(BadValue::new(
                "telemetry.compression",
                format!("{:?} is not supported (none | gzip)", self.compression),
            ));
        }
        for (key, url) in [
            ("telemetry.endpoint", &self.endpoint),
            ("telemetry.traces.endpoint", &self.traces.endpoint),
            ("telemetry.logs.endpoint", &self.logs.endpoint),
            ("telemetry.metrics.endpoint", &self.metrics.endpoint),
        ] {
            check_url(key, url)?;
        }
        for name in self.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(BadValue::new(
                    format!("telemetry.headers.{name}"),
                    format!("{name:?} is not a valid header name"),
                ));
            }
        }
        if !SAMPLERS.contains(&self.traces.sampler.as_str()) {
            return Err(BadValue::new(
                "telemetry.traces.sampler",
                format!(
                    "{:?} is not a sampler ({})",
                    self.traces.sampler,
                    SAMPLERS.join(" | ")
                ),
            ));
        }
        let r = self.traces.sampler_ratio;
        if !(0.0..=1.0).contains(&r) {
            return Err(BadValue::new(
                "telemetry.traces.sampler_ratio",
                format!("must be between 0.0 and 1.0, got {r}"),
            ));
        }
        for (key, s) in &[
            ("telemetry.traces", &self.traces.signal()),
            ("telemetry.logs", &self.logs),
        ] {
            if s.queue_size == 0 || s.batch_size == 0 {
                return Err(BadValue::new(
                    format!("{key}.queue_size"),
                    format!("{key}.queue_size and {key}.batch_size must be at least 1"),
                ));
            }
            if s.batch_size > s.queue_size {
                return Err(BadValue::new(
                    format!("{key}.batch_size"),
                    format!(
                        "{} is larger than {key}.queue_size ({})",
                        s.batch_size, s.queue_size
                    ),
                ));
            }
        }
        for (key, d) in [
            ("telemetry.timeout", self.timeout),
            ("telemetry.metrics.interval", self.metrics.interval),
        ] {
            if d.is_zero() {
                return Err(BadValue::new(key, "must be more than 0s"));
            }
        }
        Ok(())
    }
}

/// An endpoint is empty (unset) or an absolute http(s) URL; `name` is where it came from.
pub fn check_url(name: &str, url: &str) -> Result<(), BadValue> {
    if url.is_empty() {
        return Ok(());
    }
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {
            Ok(())
        }
        _ => Err(BadValue::new(
            name,
            format!("{url:?} is not an http:// or https:// URL with a host"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        let mut c = TelemetryConfig::default();
        assert!(c.validate().is_ok());
        c.protocol = "udp".into();
        assert_eq!(c.validate().unwrap_err().name, "telemetry.protocol");
        c = TelemetryConfig::default();
        c.logs.endpoint = "collector:4318".into();
        assert_eq!(c.validate().unwrap_err().name, "telemetry.logs.endpoint");
        c = TelemetryConfig::default();
        c.traces.sampler_ratio = 2.0;
        assert_eq!(
            c.validate().unwrap_err().name,
            "telemetry.traces.sampler_ratio"
        );
        c = TelemetryConfig::default();
        c.compression = "zstd".into();
        assert_eq!(c.validate().unwrap_err().name, "telemetry.compression");
        c = TelemetryConfig::default();
        c.traces.sampler = "sometimes".into();
        assert_eq!(c.validate().unwrap_err().name, "telemetry.traces.sampler");
    }
}
