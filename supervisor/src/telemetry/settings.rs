//! The effective export settings: the `[telemetry]` keys with the standard `OTEL_*` variables
//! applied over them, resolved once at start into plain values.
//!
//! Precedence, later wins: `[telemetry]` general keys < per-signal keys < `OTEL_EXPORTER_OTLP_*`
//! < `OTEL_EXPORTER_OTLP_{TRACES,LOGS,METRICS}_*` (environment beats files, as `TANDEM_*` does;
//! a signal's own setting beats the general one). A bad variable is an error naming it.
use std::collections::BTreeMap;
use std::time::Duration;

use super::config::{check_url, Compression, Protocol, TelemetryConfig, SAMPLERS};
use crate::otlp::env::{key_values, millis, BadValue, Found, OtelEnv};
use crate::otlp::tls::{ClientTls, TlsFile, TlsFiles};

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
        resource: BTreeMap<String, String>,
        env: &BTreeMap<String, String>,
    ) -> Result<Option<Settings>, BadValue> {
        let otel = OtelEnv::new(|k| env.get(k).cloned());
        if sdk_disabled(&otel)? {
            return Ok(None);
        }
        let resource = resolve_resource(cfg, service_version, resource, &otel)?;
        let r = Resolver {
            cfg,
            base: Base::resolve(cfg, &otel)?,
            otel: &otel,
        };
        let t = &cfg.traces;
        let traces = match r.export(Signal::Traces, t.enabled, &t.endpoint)? {
            Some(e) => Some((
                e,
                r.queue("BSP", t.queue_size, t.batch_size, t.batch_delay)?,
                sampling(&t.sampler, t.sampler_ratio, &otel)?,
            )),
            None => None,
        };
        let l = &cfg.logs;
        let logs = match r.export(Signal::Logs, l.enabled, &l.endpoint)? {
            Some(e) => Some((
                e,
                r.queue("BLRP", l.queue_size, l.batch_size, l.batch_delay)?,
            )),
            None => None,
        };
        let m = &cfg.metrics;
        let metrics = match r.export(Signal::Metrics, m.enabled, &m.endpoint)? {
            Some(e) => {
                let interval = match otel.get("OTEL_METRIC_EXPORT_INTERVAL") {
                    Some(ms) => millis(&ms, "OTEL_METRIC_EXPORT_INTERVAL")?,
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

/// `OTEL_SDK_DISABLED=true` turns export off; anything but true or false is an error.
fn sdk_disabled(otel: &OtelEnv<'_>) -> Result<bool, BadValue> {
    match otel.get("OTEL_SDK_DISABLED") {
        None => Ok(false),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(BadValue::new(
                "OTEL_SDK_DISABLED",
                format!("{v:?} is not true or false"),
            )),
        },
    }
}

/// The resource, later wins: the detected attributes, `OTEL_RESOURCE_ATTRIBUTES`,
/// `[telemetry.resource]`, the service's version, `OTEL_SERVICE_NAME`.
fn resolve_resource(
    cfg: &TelemetryConfig,
    service_version: Option<&str>,
    mut resource: BTreeMap<String, String>,
    otel: &OtelEnv<'_>,
) -> Result<BTreeMap<String, String>, BadValue> {
    if let Some(v) = otel.get("OTEL_RESOURCE_ATTRIBUTES") {
        resource.extend(key_values(&v, "OTEL_RESOURCE_ATTRIBUTES")?);
    }
    resource.extend(cfg.resource.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(v) = service_version {
        resource.insert("service.version".into(), v.to_string());
    }
    if let Some(name) = otel.get("OTEL_SERVICE_NAME") {
        resource.insert("service.name".into(), name);
    }
    Ok(resource)
}

/// What every signal starts from: the general keys with the general variables over them.
#[derive(Clone)]
struct Base {
    protocol: Protocol,
    headers: BTreeMap<String, String>,
    timeout: Duration,
    compression: Compression,
    /// The general endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` over `telemetry.endpoint`).
    endpoint: String,
    /// Whether that endpoint came from the variable.
    endpoint_from_env: bool,
}

impl Base {
    fn resolve(cfg: &TelemetryConfig, otel: &OtelEnv<'_>) -> Result<Base, BadValue> {
        let protocol = match otel.general("PROTOCOL") {
            Some(p) => parse_protocol(&p)?,
            None => Protocol::parse(&cfg.protocol).ok_or_else(|| {
                BadValue::new(
                    "telemetry.protocol",
                    format!("{:?} is not a protocol", cfg.protocol),
                )
            })?,
        };
        for (k, v) in &cfg.headers {
            check_header(k, v, &format!("telemetry.headers.{k}"))?;
        }
        let mut headers = cfg.headers.clone();
        if let Some(h) = otel.general("HEADERS") {
            headers.extend(env_headers(&h)?);
        }
        let timeout = match otel.general("TIMEOUT") {
            Some(ms) => millis(&ms.value, &ms.name)?,
            None => cfg.timeout,
        };
        let compression = match otel.general("COMPRESSION") {
            Some(c) => parse_compression(&c)?,
            None => Compression::parse(&cfg.compression).ok_or_else(|| {
                BadValue::new(
                    "telemetry.compression",
                    format!("{:?} is not supported (none | gzip)", cfg.compression),
                )
            })?,
        };
        let (endpoint, endpoint_from_env) = match otel.general("ENDPOINT") {
            Some(e) => {
                check_url(&e.name, &e.value)?;
                (e.value, true)
            }
            None => (cfg.endpoint.clone(), false),
        };
        Ok(Base {
            protocol,
            headers,
            timeout,
            compression,
            endpoint,
            endpoint_from_env,
        })
    }
}

/// Resolves one signal at a time over the [`Base`].
struct Resolver<'a> {
    cfg: &'a TelemetryConfig,
    otel: &'a OtelEnv<'a>,
    base: Base,
}

impl Resolver<'_> {
    /// The signal's export, None when it is off (`OTEL_{SIGNAL}_EXPORTER=none`, disabled, or
    /// no endpoint at all). Its own variables beat the general ones.
    fn export(&self, sig: Signal, enabled: bool, own: &str) -> Result<Option<Export>, BadValue> {
        let own_var = |what: &str| self.otel.specific(sig.env(), what);
        let exporter = format!("OTEL_{}_EXPORTER", sig.env());
        match self.otel.get(&exporter).as_deref() {
            Some("none") => return Ok(None),
            Some("otlp") => {}
            Some(v) => {
                return Err(BadValue::new(
                    exporter,
                    format!("{v:?} is not supported (otlp | none)"),
                ))
            }
            None if !enabled => return Ok(None),
            None => {}
        }
        let Base {
            mut protocol,
            mut headers,
            mut timeout,
            mut compression,
            endpoint: ref general,
            endpoint_from_env,
        } = self.base.clone();
        if let Some(c) = own_var("COMPRESSION") {
            compression = parse_compression(&c)?;
        }
        if let Some(p) = own_var("PROTOCOL") {
            protocol = parse_protocol(&p)?;
        }
        if let Some(h) = own_var("HEADERS") {
            headers.extend(env_headers(&h)?);
        }
        if let Some(ms) = own_var("TIMEOUT") {
            timeout = millis(&ms.value, &ms.name)?;
        }
        // A signal's own URL is used as given; the general one gets the signal's path.
        let own_env = own_var("ENDPOINT");
        if let Some(u) = &own_env {
            check_url(&u.name, &u.value)?;
        }
        let endpoint = match (own_env, own.is_empty(), general.is_empty()) {
            (Some(u), _, _) => u.value,
            (None, false, _) if !endpoint_from_env => own.to_string(),
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
            tls: self.tls(sig)?,
        }))
    }

    /// The signal's TLS client, its files loaded.
    fn tls(&self, sig: Signal) -> Result<ClientTls, BadValue> {
        let files = TlsFiles {
            ca: self.file(&self.cfg.ca_file, "ca_file", "CERTIFICATE", sig),
            cert: self.file(&self.cfg.cert_file, "cert_file", "CLIENT_CERTIFICATE", sig),
            key: self.file(&self.cfg.key_file, "key_file", "CLIENT_KEY", sig),
        };
        ClientTls::load(&files)
            .map_err(|e| BadValue::new(e.source_name, format!("{}: {}", e.path, e.reason)))
    }

    /// One TLS file: the config key, over it the general variable, over that the signal's.
    fn file(&self, configured: &str, key: &str, name: &str, sig: Signal) -> Option<TlsFile> {
        let (source, path) = self
            .otel
            .exporter(sig.env(), name)
            .map(|f| (f.name, f.value))
            .or_else(|| {
                let v = configured.trim();
                (!v.is_empty()).then(|| (format!("telemetry.{key}"), v.to_string()))
            })?;
        Some(TlsFile {
            source,
            path: path.into(),
        })
    }

    /// A batch queue's bounds: the config's, over them `OTEL_{prefix}_*`.
    fn queue(
        &self,
        prefix: &str,
        size: usize,
        batch: usize,
        delay: Duration,
    ) -> Result<Queue, BadValue> {
        let num =
            |k: String, d: usize| -> Result<usize, BadValue> {
                match self.otel.get(&k) {
                    Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        BadValue::new(&k, format!("{v:?} is not a positive number"))
                    }),
                    None => Ok(d),
                }
            };
        let size = num(format!("OTEL_{prefix}_MAX_QUEUE_SIZE"), size)?;
        let batch = num(format!("OTEL_{prefix}_MAX_EXPORT_BATCH_SIZE"), batch)?.min(size);
        let var = format!("OTEL_{prefix}_SCHEDULE_DELAY");
        let delay = match self.otel.get(&var) {
            Some(ms) => millis(&ms, &var)?,
            None => delay,
        };
        Ok(Queue { size, batch, delay })
    }
}

/// A header tandem's exporters send: a valid HTTP header (and gRPC metadata) name and value,
/// checked here so a bad one is a config error naming `source` (the key or variable), not a
/// failure of the export's start.
fn check_header(name: &str, value: &str, source: &str) -> Result<(), BadValue> {
    if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
        return Err(BadValue::new(
            source,
            format!("{name:?} is not a valid header name"),
        ));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(BadValue::new(
            source,
            format!("the value of header {name:?} is not a valid header value"),
        ));
    }
    Ok(())
}

/// The headers of an `..._HEADERS` variable, each checked.
fn env_headers(h: &Found) -> Result<Vec<(String, String)>, BadValue> {
    let pairs = key_values(&h.value, &h.name)?;
    for (k, v) in &pairs {
        check_header(k, v, &h.name)?;
    }
    Ok(pairs)
}

fn sampling(name: &str, ratio: f64, otel: &OtelEnv<'_>) -> Result<Sampling, BadValue> {
    let from_env = otel.get("OTEL_TRACES_SAMPLER");
    let name = from_env.as_deref().unwrap_or(name);
    if !SAMPLERS.contains(&name) {
        return Err(BadValue::new(
            "OTEL_TRACES_SAMPLER",
            format!("{name:?} is not supported ({})", SAMPLERS.join(" | ")),
        ));
    }
    let ratio = match otel.get("OTEL_TRACES_SAMPLER_ARG") {
        Some(v) if name.ends_with("traceidratio") => v
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                BadValue::new(
                    "OTEL_TRACES_SAMPLER_ARG",
                    format!("{v:?} is not a ratio from 0.0 to 1.0"),
                )
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

fn parse_protocol(v: &Found) -> Result<Protocol, BadValue> {
    Protocol::parse(&v.value).ok_or_else(|| {
        BadValue::new(
            &v.name,
            format!(
                "{:?} is not supported (grpc | http/protobuf; http/json is not)",
                v.value
            ),
        )
    })
}

fn parse_compression(v: &Found) -> Result<Compression, BadValue> {
    Compression::parse(&v.value).ok_or_else(|| {
        BadValue::new(
            &v.name,
            format!("{:?} is not supported (none | gzip)", v.value),
        )
    })
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

    fn resolve(cfg: &TelemetryConfig, e: &[(&str, &str)]) -> Result<Option<Settings>, BadValue> {
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
            assert_eq!(err.name, k, "{err}");
        }
        let err =
            resolve(&cfg, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")]).expect_err("url");
        assert_eq!(err.name, "OTEL_EXPORTER_OTLP_ENDPOINT", "{err}");
    }
}
