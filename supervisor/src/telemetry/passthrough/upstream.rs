//! Where the app's telemetry goes: `[telemetry.passthrough] endpoint/protocol/headers`, or
//! else the standard `OTEL_EXPORTER_OTLP_*` variables of tandem's own environment (per-signal
//! forms first), resolved once at start into one checked [`Upstream`] per signal.
use std::{collections::BTreeMap, net::SocketAddr};

use http::{HeaderName, HeaderValue, Uri};

use super::{Protocol, Signal};

/// The resolved upstream of one signal.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub protocol: Protocol,
    /// The full URL requests are POSTed to (signal path or gRPC method included).
    pub url: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
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

/// Resolve the upstream of `signal` from the config (`endpoint`, `protocol`, `headers`; empty
/// means unset) and `env` (tandem's environment). `own` are tandem's listeners: an upstream
/// pointing there would loop.
pub fn resolve(
    signal: Signal,
    endpoint: &str,
    protocol: &str,
    headers: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
    own: &[SocketAddr],
) -> Result<Upstream, UpstreamError> {
    let per = signal.as_str().to_ascii_uppercase();
    let var = |suffix: &str| {
        let specific = format!("OTEL_EXPORTER_OTLP_{per}_{suffix}");
        let generic = format!("OTEL_EXPORTER_OTLP_{suffix}");
        env(&specific)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (specific, v, true))
            .or_else(|| {
                env(&generic)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (generic, v, false))
            })
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
    match parsed.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(err(
                &endpoint_source,
                format!("{base:?}: TLS to the upstream is not supported yet; use http:// (a collector on the host or in the same network namespace)"),
            ))
        }
        _ => {
            return Err(err(
                &endpoint_source,
                format!("{base:?}: the URL needs an http:// scheme"),
            ))
        }
    }
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
        Protocol::Grpc => format!("http://{authority}{}", signal.grpc_path()),
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
        let pairs = crate::telemetry::settings::key_values(&v, &name).map_err(|e| {
            err(
                &name,
                e.trim_start_matches(&format!("{name}: ")).to_string(),
            )
        })?;
        for (k, val) in pairs {
            out.push(header(&name, &k, &val)?);
        }
    }
    for (k, v) in headers {
        out.retain(|(n, _)| !n.as_str().eq_ignore_ascii_case(k));
        out.push(header("telemetry.passthrough.headers", k, v)?);
    }
    Ok(Upstream {
        protocol,
        url,
        headers: out,
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
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn the_standard_variables_are_honoured() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=x%20y"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://logs:9000/custom",
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
        ]);
        let none = BTreeMap::new();
        let t = resolve(Signal::Traces, "", "", &none, &e, &[]).unwrap();
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.url, "http://collector:4318/v1/traces");
        assert_eq!(t.headers.len(), 2);
        assert_eq!(t.headers[1].1, "x y");
        let l = resolve(Signal::Logs, "", "", &none, &e, &[]).unwrap();
        assert_eq!(l.url, "http://logs:9000/custom");
        let m = resolve(Signal::Metrics, "", "", &none, &e, &[]).unwrap();
        assert_eq!(m.protocol, Protocol::Grpc);
        assert_eq!(
            m.url,
            "http://collector:4318/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
        );
    }

    #[test]
    fn config_wins_and_bad_upstreams_name_their_source() {
        let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        let h = BTreeMap::from([("x-key".to_string(), "s".to_string())]);
        let t = resolve(Signal::Traces, "http://127.0.0.1:9", "grpc", &h, &e, &[]).unwrap();
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.headers[0].0, "x-key");
        let none = BTreeMap::new();
        let e = env(&[]);
        let missing = resolve(Signal::Traces, "", "", &none, &e, &[]).unwrap_err();
        assert!(missing.to_string().contains("no upstream"), "{missing}");
        let bad = resolve(Signal::Traces, "http://x", "thrift", &none, &e, &[]).unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("telemetry.passthrough.protocol"),
            "{bad}"
        );
        let own: SocketAddr = "127.0.0.1:4318".parse().unwrap();
        let looped = resolve(
            Signal::Traces,
            "http://127.0.0.1:4318",
            "",
            &none,
            &e,
            &[own],
        )
        .unwrap_err();
        assert!(looped.to_string().contains("loop"), "{looped}");
        let tls = resolve(Signal::Traces, "https://x", "", &none, &e, &[]).unwrap_err();
        assert!(tls.to_string().contains("TLS"), "{tls}");
    }
}
