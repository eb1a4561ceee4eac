//! Where the app's telemetry goes: `[telemetry.passthrough] endpoint/protocol/headers/ca_file/
//! cert_file/key_file/compression`, or else the standard `OTEL_EXPORTER_OTLP_*` variables of
//! tandem's own environment (per-signal forms first), resolved once at start into one checked
//! [`Upstream`] per signal (its TLS files read and checked then too).
use std::net::SocketAddr;

use http::{HeaderName, HeaderValue, Uri};

use super::{PassthroughConfig, Protocol, Signal};
use crate::otlp::env::{key_values, Found, OtelEnv};
use crate::otlp::tls::{ClientTls, TlsFile, TlsFiles};
use crate::otlp::Compression;

/// The resolved upstream of one signal.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub protocol: Protocol,
    /// The full URL requests are POSTed to (signal path or gRPC method included).
    pub url: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Request bodies gzipped or not.
    pub compression: Compression,
    /// The TLS client for an `https://` upstream.
    pub tls: ClientTls,
}

/// An upstream that cannot be used, naming the key or variable it came from.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {reason}")]
pub struct UpstreamError {
    pub source_name: String,
    pub reason: String,
}

fn err(source_name: impl Into<String>, reason: impl Into<String>) -> UpstreamError {
    UpstreamError {
        source_name: source_name.into(),
        reason: reason.into(),
    }
}

/// Resolve the upstream of `signal` from the config (`endpoint`, `protocol`, `headers`, the
/// TLS files, `compression`; empty means unset) and `env` (tandem's environment). `own` are
/// tandem's listeners: an upstream pointing there would loop.
pub fn resolve(
    signal: Signal,
    cfg: &PassthroughConfig,
    env: &dyn Fn(&str) -> Option<String>,
    own: &[SocketAddr],
) -> Result<Upstream, UpstreamError> {
    let (endpoint, protocol, headers) = (&cfg.endpoint, &cfg.protocol, &cfg.headers);
    let per = signal.as_str().to_ascii_uppercase();
    let otel = OtelEnv::new(env);
    // The config key wins; else the signal's variable, else the general one.
    let var = |suffix: &str| {
        otel.exporter(&per, suffix)
            .map(|f: Found| (f.name, f.value, f.specific))
    };

    let (protocol_source, protocol) = if protocol.trim().is_empty() {
        match var("PROTOCOL") {
            Some((name, v, _)) => (name, v),
            // The OTLP spec's default.
            None => ("default".to_string(), "http/protobuf".to_string()),
        }
    } else {
        (
            "telemetry.passthrough.protocol".to_string(),
            protocol.to_string(),
        )
    };
    let protocol = Protocol::parse(protocol.trim()).map_err(|e| err(&protocol_source, e))?;

    // A per-signal endpoint variable is the full URL; the generic one and the config's are a
    // base that OTLP/HTTP appends the signal's path to.
    let (endpoint_source, base, full) =
        if endpoint.trim().is_empty() {
            match var("ENDPOINT") {
                Some((name, v, specific)) => (name, v, specific),
                None => return Err(err(
                    "telemetry.passthrough.endpoint",
                    "no upstream: set it, or OTEL_EXPORTER_OTLP_ENDPOINT in tandem's environment",
                )),
            }
        } else {
            (
                "telemetry.passthrough.endpoint".to_string(),
                endpoint.to_string(),
                false,
            )
        };
    let base = base.trim();
    let parsed: Uri = base
        .parse()
        .map_err(|e| err(&endpoint_source, format!("{base:?} is not a URL: {e}")))?;
    let scheme = match parsed.scheme_str() {
        Some(s @ ("http" | "https")) => s.to_string(),
        _ => {
            return Err(err(
                &endpoint_source,
                format!("{base:?}: the URL needs an http:// or https:// scheme"),
            ))
        }
    };
    let Some(authority) = parsed.authority().cloned() else {
        return Err(err(&endpoint_source, format!("{base:?}: no host")));
    };
    if let Ok(addr) = authority.as_str().parse::<SocketAddr>() {
        if own.iter().any(|o| o == &addr) {
            return Err(err(
                &endpoint_source,
                format!("{base:?} is tandem's own pass-through listener; it would loop"),
            ));
        }
    }
    let url = match protocol {
        Protocol::Grpc => format!("{scheme}://{authority}{}", signal.grpc_path()),
        Protocol::HttpProtobuf if full => base.to_string(),
        Protocol::HttpProtobuf => {
            format!("{}/v1/{}", base.trim_end_matches('/'), signal.as_str())
        }
    };
    let url: Uri = url
        .parse()
        .map_err(|e| err(&endpoint_source, format!("{url:?} is not a URL: {e}")))?;

    let mut out = Vec::new();
    if let Some((name, v, _)) = var("HEADERS") {
        // The same list syntax as tandem's own exporters read (one parser).
        let pairs = key_values(&v, &name).map_err(|e| err(e.name, e.message))?;
        for (k, val) in pairs {
            out.push(header(&name, &k, &val)?);
        }
    }
    for (k, v) in headers {
        out.retain(|(n, _)| !n.as_str().eq_ignore_ascii_case(k));
        out.push(header("telemetry.passthrough.headers", k, v)?);
    }

    let compression = if cfg.compression.trim().is_empty() {
        match var("COMPRESSION") {
            Some((name, v, _)) => Compression::parse(&v)
                .ok_or_else(|| err(&name, format!("{v:?} is not supported (none | gzip)")))?,
            None => Compression::None,
        }
    } else {
        Compression::parse(&cfg.compression).ok_or_else(|| {
            err(
                "telemetry.passthrough.compression",
                format!("{:?} is not supported (none | gzip)", cfg.compression),
            )
        })?
    };
    // Each file: the config key, else the signal's variable, else the general one.
    let file = |key: &str, value: &str, suffix: &str| -> Option<TlsFile> {
        if !value.trim().is_empty() {
            return Some(TlsFile {
                source: format!("telemetry.passthrough.{key}"),
                path: value.trim().into(),
            });
        }
        var(suffix).map(|(name, v, _)| TlsFile {
            source: name,
            path: v.trim().into(),
        })
    };
    let files = TlsFiles {
        ca: file("ca_file", &cfg.ca_file, "CERTIFICATE"),
        cert: file("cert_file", &cfg.cert_file, "CLIENT_CERTIFICATE"),
        key: file("key_file", &cfg.key_file, "CLIENT_KEY"),
    };
    let tls = ClientTls::load(&files)
        .map_err(|e| err(e.source_name.clone(), format!("{}: {}", e.path, e.reason)))?;
    Ok(Upstream {
        protocol,
        url,
        headers: out,
        compression,
        tls,
    })
}

fn header(source: &str, k: &str, v: &str) -> Result<(HeaderName, HeaderValue), UpstreamError> {
    let name = HeaderName::from_bytes(k.as_bytes())
        .map_err(|_| err(source, format!("{k:?} is not a header name")))?;
    let value = HeaderValue::from_str(v)
        .map_err(|_| err(source, format!("the value of header {k:?} is not valid")))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    fn cfg(endpoint: &str, protocol: &str) -> PassthroughConfig {
        PassthroughConfig {
            endpoint: endpoint.into(),
            protocol: protocol.into(),
            ..PassthroughConfig::default()
        }
    }

    #[test]
    fn the_standard_variables_are_honoured() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=x%20y"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "https://logs:9000/custom",
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
        ]);
        let none = cfg("", "");
        let t = resolve(Signal::Traces, &none, &e, &[]).unwrap();
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.url, "http://collector:4318/v1/traces");
        assert_eq!(t.headers.len(), 2);
        assert_eq!(t.headers[1].1, "x y");
        assert_eq!(t.compression, Compression::Gzip);
        let l = resolve(Signal::Logs, &none, &e, &[]).unwrap();
        assert_eq!(l.url, "https://logs:9000/custom");
        let m = resolve(Signal::Metrics, &none, &e, &[]).unwrap();
        assert_eq!(m.protocol, Protocol::Grpc);
        assert_eq!(m.compression, Compression::None);
        assert_eq!(
            m.url,
            "http://collector:4318/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
        );
        let https = resolve(Signal::Traces, &cfg("https://c:4317", "grpc"), &e, &[]).unwrap();
        assert_eq!(
            https.url,
            "https://c:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
    }

    #[test]
    fn config_wins_and_bad_upstreams_name_their_source() {
        let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        let mut c = cfg("http://127.0.0.1:9", "grpc");
        c.headers = BTreeMap::from([("x-key".to_string(), "s".to_string())]);
        let t = resolve(Signal::Traces, &c, &e, &[]).unwrap();
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.headers[0].0, "x-key");
        let e = env(&[]);
        let missing = resolve(Signal::Traces, &cfg("", ""), &e, &[]).unwrap_err();
        assert!(missing.to_string().contains("no upstream"), "{missing}");
        let bad = resolve(Signal::Traces, &cfg("http://x", "thrift"), &e, &[]).unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("telemetry.passthrough.protocol"),
            "{bad}"
        );
        let own: SocketAddr = "127.0.0.1:4318".parse().unwrap();
        let looped = resolve(
            Signal::Traces,
            &cfg("http://127.0.0.1:4318", ""),
            &e,
            &[own],
        )
        .unwrap_err();
        assert!(looped.to_string().contains("loop"), "{looped}");
        let scheme = resolve(Signal::Traces, &cfg("ftp://x", ""), &e, &[]).unwrap_err();
        assert!(scheme.to_string().contains("https://"), "{scheme}");

        let bad_ca = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "/nonexistent/ca.pem",
            ),
        ]);
        let ca = resolve(Signal::Traces, &cfg("", ""), &bad_ca, &[]).unwrap_err();
        assert!(
            ca.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: /nonexistent/ca.pem"),
            "{ca}"
        );
        let mut c = cfg("", "");
        c.compression = "zstd".into();
        let z = resolve(Signal::Traces, &c, &bad_ca, &[]).unwrap_err();
        assert!(
            z.to_string()
                .starts_with("telemetry.passthrough.compression"),
            "{z}"
        );
        c.compression = String::new();
        c.key_file = "/nonexistent/key.pem".into();
        c.cert_file = "/nonexistent/cert.pem".into();
        let ca_first = resolve(Signal::Logs, &c, &bad_ca, &[]).unwrap_err();
        assert!(
            ca_first
                .to_string()
                .starts_with("telemetry.passthrough.cert_file: /nonexistent/cert.pem"),
            "{ca_first}"
        );
    }
}
