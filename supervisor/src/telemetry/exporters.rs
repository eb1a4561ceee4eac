//! The OTLP exporters, built from resolved [`Export`] settings (gRPC with tonic, HTTP/protobuf
//! with hyper). Every value is passed in code, so the exporter's own `OTEL_*` reading never
//! disagrees with [`super::settings`].
use std::collections::HashMap;

use opentelemetry_otlp::{
    LogExporter, MetricExporter, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::metrics::Temporality;

use super::config::Protocol;
use super::settings::Export;

fn metadata(e: &Export) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, String> {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &e.headers {
        let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("telemetry.headers: {k:?} is not a valid header name"))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| format!("telemetry.headers.{k}: the value is not a valid header value"))?;
        headers.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers))
}

fn headers(e: &Export) -> HashMap<String, String> {
    e.headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn err(what: &str, e: &Export, error: impl std::fmt::Display) -> String {
    format!(
        "cannot build the OTLP {what} exporter for {}: {error}",
        e.endpoint
    )
}

/// The span exporter.
pub fn span(e: &Export) -> Result<SpanExporter, String> {
    let b = SpanExporter::builder();
    match e.protocol {
        Protocol::Grpc => b
            .with_tonic()
            .with_endpoint(e.endpoint.clone())
            .with_timeout(e.timeout)
            .with_metadata(metadata(e)?)
            .build(),
        Protocol::HttpProtobuf => b
            .with_http()
            .with_endpoint(e.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(e.timeout)
            .with_headers(headers(e))
            .build(),
    }
    .map_err(|x| err("span", e, x))
}

/// The log exporter.
pub fn log(e: &Export) -> Result<LogExporter, String> {
    let b = LogExporter::builder();
    match e.protocol {
        Protocol::Grpc => b
            .with_tonic()
            .with_endpoint(e.endpoint.clone())
            .with_timeout(e.timeout)
            .with_metadata(metadata(e)?)
            .build(),
        Protocol::HttpProtobuf => b
            .with_http()
            .with_endpoint(e.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(e.timeout)
            .with_headers(headers(e))
            .build(),
    }
    .map_err(|x| err("log", e, x))
}

/// The metric exporter (cumulative, as Prometheus counters are).
pub fn metric(e: &Export) -> Result<MetricExporter, String> {
    let b = MetricExporter::builder();
    match e.protocol {
        Protocol::Grpc => b
            .with_tonic()
            .with_endpoint(e.endpoint.clone())
            .with_timeout(e.timeout)
            .with_metadata(metadata(e)?)
            .with_temporality(Temporality::Cumulative)
            .build(),
        Protocol::HttpProtobuf => b
            .with_http()
            .with_endpoint(e.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(e.timeout)
            .with_headers(headers(e))
            .with_temporality(Temporality::Cumulative)
            .build(),
    }
    .map_err(|x| err("metric", e, x))
}
