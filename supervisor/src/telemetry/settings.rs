//! The effective export settings: the `[telemetry]` keys with the standard `OTEL_*` variables
//! applied over them, resolved once at start into plain values.
//!
//! Precedence, later wins: `[telemetry]` general keys < per-signal keys < `OTEL_EXPORTER_OTLP_*`
//! < `OTEL_EXPORTER_OTLP_{TRACES,LOGS,METRICS}_*` (environment beats files, as `TANDEM_*` does;
//! a signal's own setting beats the general one). A bad variable is an error naming it.
use std::collections::BTreeMap;
use std::time::Duration;

use super::config::{check_url, Compression, Protocol, TelemetryConfig, SAMPLERS};
use super::tls::{ClientTls, TlsFile, TlsFiles};

/// The three signals tandem exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// The proxy's spans.
    Traces,
    /// The app's log records.
    Logs,
    /// tandem's metrics.
    Metrics,
}

impl Signal {
    /// The label on `tandem_otlp_*` metrics, and the OTLP/HTTP path's last segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Logs => "LOGS",
            Signal::Metrics => "METRICS",
        }
    }
}

/// Where and how one signal is exported.
#[derive(Debug, Clone)]
pub struct Export {
    /// gRPC: the base URL; HTTP: the full URL with `/v1/{signal}`.
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: Protocol,
    /// Headers on each request.
    pub headers: BTreeMap<String, String>,
    /// Longest one request may take.
    pub timeout: Duration,
    /// Request bodies gzipped or not.
    pub compression: Compression,
    /// The TLS client for `https://` endpoints (CA, client certificate), loaded.
    pub tls: ClientTls,
}

/// The queue in front of a signal's exporter.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    /// Items held at most; more are dropped and counted.
    pub size: usize,
    /// Items per export request.
    pub batch: usize,
    /// Longest an item waits for its batch.
    pub delay: Duration,
}

/// The sampler for new and continued traces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Follow the caller's sampled flag; new traces by this ratio.
    ParentBased(f64),
    /// Follow the caller; sample every new trace.
    ParentBasedAlwaysOn,
    /// Follow the caller; sample no new trace.
    ParentBasedAlwaysOff,
    /// This ratio of traces, whatever the caller said.
    Ratio(f64),
}

/// Everything the exporters need, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Attributes on every resource.
    pub resource: BTreeMap<String, String>,
    /// Spans: export, queue, sampler.
    pub traces: Option<(Export, Queue, Sampling)>,
    /// Log records: export and queue.
    pub logs: Option<(Export, Queue)>,
    /// Metrics: export and push interval.
    pub metrics: Option<(Export, Duration)>,
    /// How long a failing batch is retried.
    pub retry_for: Duration,
    /// The bound on the final flush at stop.
    pub shutdown_timeout: Duration,
}

// === impl Settings ===

impl Settings {
    /// Resolve `cfg` with `env` (the process's variables) for a service whose detected
    /// resource is `resource`. None: export is off (no endpoint, or `OTEL_SDK_DISABLED`).
    pub fn resolve(
        cfg: &TelemetryConfig,
        service_version: Option<&str>,
        mut resource: BTreeMap<String, String>,
        env: &BTreeMap<String, String>,
    ) -> Result<Option<Settings>, String> {
        let var = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        if let Some(v) = var("OTEL_SDK_DISABLED") {
            match v.to_ascii_lowercase().as_str() {
                "true" => return Ok(None),
                "false" => {}
                _ => return Err(format!("OTEL_SDK_DISABLED: {v:?} is not true or false")),
            }
        }
        if let Some(v) = var("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in key_values(v, "OTEL_RESOURCE_ATTRIBUTES")? {
                resource.insert(k, v);
            }
        }
        for (k, v) in &cfg.resource {
            resource.insert(k.clone(), v.clone());
        }
        if let Some(v) = service_version {
            resource.insert("service.version".into(), v.to_string());
        }
        if let Some(name) = var("OTEL_SERVICE_NAME") {
            resource.insert("service.name".into(), name.to_string());
        }
        let protocol = match var("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(p) => parse_protocol(p, "OTEL_EXPORTER_OTLP_PROTOCOL")?,
            None => Protocol::parse(&cfg.protocol).ok_or_else(|| {
                format!("telemetry.protocol: {:?} is not a protocol", cfg.protocol)
            })?,
        };
        let mut headers = cfg.headers.clone();
        if let Some(h) = var("OTEL_EXPORTER_OTLP_HEADERS") {
            headers.extend(key_values(h, "OTEL_EXPORTER_OTLP_HEADERS")?);
        }
        let timeout = match var("OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some(ms) => millis(ms, "OTEL_EXPORTER_OTLP_TIMEOUT")?,
            None => cfg.timeout,
        };
        let compression = match var("OTEL_EXPORTER_OTLP_COMPRESSION") {
            Some(c) => parse_compression(c, "OTEL_EXPORTER_OTLP_COMPRESSION")?,
            None => Compression::parse(&cfg.compression).ok_or_else(|| {
                format!(
                    "telemetry.compression: {:?} is not supported (none | gzip)",
                    cfg.compression
                )
            })?,
        };
        // Each file: the config key, over it the general variable, over that the signal's.
        let file = |key: &str, name: &str, sig: Signal| -> Option<TlsFile> {
            let specific = format!("OTEL_EXPORTER_OTLP_{}_{name}", sig.env());
            let general = format!("OTEL_EXPORTER_OTLP_{name}");
            let from_env = |v: String| var(&v).map(|p| (v.clone(), p.to_string()));
            let (source, path) =
                from_env(specific)
                    .or_else(|| from_env(general))
                    .or_else(|| {
                        let v = match key {
                            "ca_file" => &cfg.ca_file,
                            "cert_file" => &cfg.cert_file,
                            _ => &cfg.key_file,
                        };
                        let v = v.trim();
                        (!v.is_empty()).then(|| (format!("telemetry.{key}"), v.to_string()))
                    })?;
            Some(TlsFile {
                source,
                path: path.into(),
            })
        };
        let tls = |sig: Signal| -> Result<ClientTls, String> {
            let files = TlsFiles {
                ca: file("ca_file", "CERTIFICATE", sig),
                cert: file("cert_file", "CLIENT_CERTIFICATE", sig),
                key: file("key_file", "CLIENT_KEY", sig),
            };
            ClientTls::load(&files).map_err(|e| e.to_string())
        };
        let base = (protocol, headers, timeout, compression);
        let general = match var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(e) => {
                check_url(e).map_err(|m| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {m}"))?;
                e.to_string()
            }
            None => cfg.endpoint.clone(),
        };
        let export = |sig: Signal, enabled: bool, own: &str| -> Result<Option<Export>, String> {
            let prefix = format!("OTEL_EXPORTER_OTLP_{}", sig.env());
            if let Some(v) = var(&format!("OTEL_{}_EXPORTER", sig.env())) {
                match v {
                    "none" => return Ok(None),
                    "otlp" => {}
                    _ => {
                        return Err(format!(
                            "OTEL_{}_EXPORTER: {v:?} is not supported (otlp | none)",
                            sig.env()
                        ))
                    }
                }
            } else if !enabled {
                return Ok(None);
            }
            let (mut protocol, mut headers, mut timeout, mut compression) = base.clone();
            if let Some(c) = var(&format!("{prefix}_COMPRESSION")) {
                compression = parse_compression(c, &format!("{prefix}_COMPRESSION"))?;
            }
            if let Some(p) = var(&format!("{prefix}_PROTOCOL")) {
                protocol = parse_protocol(p, &format!("{prefix}_PROTOCOL"))?;
            }
            if let Some(h) = var(&format!("{prefix}_HEADERS")) {
                headers.extend(key_values(h, &format!("{prefix}_HEADERS"))?);
            }
            if let Some(ms) = var(&format!("{prefix}_TIMEOUT")) {
                timeout = millis(ms, &format!("{prefix}_TIMEOUT"))?;
            }
            // A signal's own URL is used as given; the general one gets the signal's path.
            let own_env = var(&format!("{prefix}_ENDPOINT"));
            if let Some(u) = own_env {
                check_url(u).map_err(|m| format!("{prefix}_ENDPOINT: {m}"))?;
            }
            let endpoint = match (own_env, own.is_empty(), general.is_empty()) {
                (Some(u), _, _) => u.to_string(),
                (None, false, _) if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() => own.to_string(),
                (None, _, false) => match protocol {
                    Protocol::Grpc => general.clone(),
                    Protocol::HttpProtobuf => {
                        format!("{}/v1/{}", general.trim_end_matches('/'), sig.as_str())
                    }
                },
                (None, false, true) => own.to_string(),
                (None, true, true) => return Ok(None),
            };
            // Only a signal that is exported reads its files (an `http://` one too: a file
            // that is set and bad is a mistake to report, whatever the scheme today).
            Ok(Some(Export {
                endpoint,
                protocol,
                headers,
                timeout,
                compression,
                tls: tls(sig)?,
            }))
        };
        let queue =
            |sig: &str, size: usize, batch: usize, delay: Duration| -> Result<Queue, String> {
                let num = |k: String, d: usize| -> Result<usize, String> {
                    match var(&k) {
                        Some(v) => v
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("{k}: {v:?} is not a positive number")),
                        None => Ok(d),
                    }
                };
                let size = num(format!("OTEL_{sig}_MAX_QUEUE_SIZE"), size)?;
                let batch = num(format!("OTEL_{sig}_MAX_EXPORT_BATCH_SIZE"), batch)?.min(size);
                let delay = match var(&format!("OTEL_{sig}_SCHEDULE_DELAY")) {
                    Some(ms) => millis(ms, &format!("OTEL_{sig}_SCHEDULE_DELAY"))?,
                    None => delay,
                };
                Ok(Queue { size, batch, delay })
            };
        let t = &cfg.traces;
        let traces = match export(Signal::Traces, t.enabled, &t.endpoint)? {
            Some(e) => Some((
                e,
                queue("BSP", t.queue_size, t.batch_size, t.batch_delay)?,
                sampling(&t.sampler, t.sampler_ratio, env)?,
            )),
            None => None,
        };
        let l = &cfg.logs;
        let logs = match export(Signal::Logs, l.enabled, &l.endpoint)? {
            Some(e) => Some((e, queue("BLRP", l.queue_size, l.batch_size, l.batch_delay)?)),
            None => None,
        };
        let m = &cfg.metrics;
        let metrics = match export(Signal::Metrics, m.enabled, &m.endpoint)? {
            Some(e) => {
                let interval = match var("OTEL_METRIC_EXPORT_INTERVAL") {
                    Some(ms) => millis(ms, "OTEL_METRIC_EXPORT_INTERVAL")?,
                    None => m.interval,
                };
                Some((e, interval.max(Duration::from_millis(100))))
            }
            None => None,
        };
        if traces.is_none() && logs.is_none() && metrics.is_none() {
            return Ok(None);
        }
        Ok(Some(Settings {
            resource,
            traces,
            logs,
            metrics,
            retry_for: cfg.retry_for,
            shutdown_timeout: cfg.shutdown_timeout,
        }))
    }
}

fn sampling(name: &str, ratio: f64, env: &BTreeMap<String, String>) -> Result<Sampling, String> {
    let var = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let name = var("OTEL_TRACES_SAMPLER").unwrap_or(name);
    if !SAMPLERS.contains(&name) {
        return Err(format!(
            "OTEL_TRACES_SAMPLER: {name:?} is not supported ({})",
            SAMPLERS.join(" | ")
        ));
    }
    let ratio = match var("OTEL_TRACES_SAMPLER_ARG") {
        Some(v) if name.ends_with("traceidratio") => v
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                format!("OTEL_TRACES_SAMPLER_ARG: {v:?} is not a ratio from 0.0 to 1.0")
            })?,
        _ => ratio,
    };
    Ok(match name {
        "always_on" => Sampling::Ratio(1.0),
        "always_off" => Sampling::Ratio(0.0),
        "traceidratio" => Sampling::Ratio(ratio),
        "parentbased_always_on" => Sampling::ParentBasedAlwaysOn,
        "parentbased_always_off" => Sampling::ParentBasedAlwaysOff,
        _ => Sampling::ParentBased(ratio),
    })
}

fn parse_protocol(v: &str, var: &str) -> Result<Protocol, String> {
    Protocol::parse(v).ok_or_else(|| {
        format!("{var}: {v:?} is not supported (grpc | http/protobuf; http/json is not)")
    })
}

fn parse_compression(v: &str, var: &str) -> Result<Compression, String> {
    Compression::parse(v).ok_or_else(|| format!("{var}: {v:?} is not supported (none | gzip)"))
}

fn millis(v: &str, var: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{var}: {v:?} is not a number of milliseconds"))
}

/// `k1=v1,k2=v2` with percent-encoded values (W3C Baggage style), as the `OTEL_*` lists are.
pub fn key_values(s: &str, var: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{var}: {pair:?} is not key=value"))?;
        let k = percent_decode(k.trim());
        if k.is_empty() {
            return Err(format!("{var}: {pair:?} has an empty key"));
        }
        out.push((k, percent_decode(v.trim())));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let d = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (d(b[i + 1]), d(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve(cfg: &TelemetryConfig, e: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        Settings::resolve(cfg, None, BTreeMap::new(), &env(e))
    }

    #[test]
    fn off_without_endpoint_or_when_disabled() {
        let cfg = TelemetryConfig::default();
        assert!(resolve(&cfg, &[]).expect("ok").is_none());
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")];
        assert!(resolve(&cfg, &on).expect("ok").is_some());
        let off = [on[0], ("OTEL_SDK_DISABLED", "true")];
        assert!(resolve(&cfg, &off).expect("ok").is_none());
    }

    #[test]
    fn endpoints_and_precedence() {
        let cfg = TelemetryConfig {
            endpoint: "http://file:4318".into(),
            protocol: "http/protobuf".into(),
            ..TelemetryConfig::default()
        };
        let s = resolve(&cfg, &[]).expect("ok").expect("on");
        assert_eq!(
            s.traces.as_ref().expect("t").0.endpoint,
            "http://file:4318/v1/traces"
        );
        let s = resolve(
            &cfg,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/"),
                ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9/custom"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x=1"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.version=1.2,deployment.environment.name=prod",
                ),
                ("OTEL_SERVICE_NAME", "svc"),
            ],
        )
        .expect("ok")
        .expect("on");
        let (t, _, sampling) = s.traces.expect("t");
        assert_eq!(t.endpoint, "http://env:4318/v1/traces");
        assert_eq!(t.headers["api-key"], "a b");
        assert_eq!(sampling, Sampling::ParentBased(0.25));
        assert_eq!(s.logs.expect("l").0.endpoint, "http://logs:9/custom");
        let (m, _) = s.metrics.expect("m");
        assert_eq!(
            (m.endpoint.as_str(), m.protocol),
            ("http://env:4318/", Protocol::Grpc)
        );
        assert_eq!(s.resource["service.version"], "1.2");
        assert_eq!(s.resource["service.name"], "svc");
    }

    #[test]
    fn bad_variables_are_named() {
        let cfg = TelemetryConfig::default();
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        for (k, v) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_SDK_DISABLED", "maybe"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ] {
            let err = resolve(&cfg, &[on, (k, v)]).expect_err(k);
            assert!(err.starts_with(k), "{err}");
        }
        let err =
            resolve(&cfg, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")]).expect_err("url");
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
    }
}
