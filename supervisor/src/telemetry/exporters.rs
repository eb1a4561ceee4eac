//! The OTLP exporters, built from resolved [`Export`] settings (gRPC with tonic, HTTP/protobuf
//! with hyper; spans through [`Poster`], see [`span_poster`]). Every value is passed in code, so the exporter's own `OTEL_*` reading never
//! disagrees with [`super::settings`].
//!
//! The connections are tandem's: a tonic channel and a hyper client on the connector of
//! [`crate::otlp::tls`], handed to the exporter builders. So `https://` works with one rustls (ring)
//! config for both protocols, and the exporter's own TLS features (which would pick roots and a
//! crypto provider of their own) stay off.
use std::collections::HashMap;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{
    LogExporter, MetricExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::metrics::Temporality;

use super::config::{Compression, Protocol};
use super::settings::Export;
use crate::otlp::post::Poster;
use crate::otlp::tls::HttpVersion;

/// An OTLP exporter that could not be built (exit 64: its settings are config).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The exporter builder refused the settings.
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {source}")]
    Build {
        /// `span`, `log` or `metric`.
        signal: &'static str,
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The gRPC endpoint is not a URI tonic takes.
    #[error("{endpoint:?} is not a gRPC endpoint: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// An endpoint that is not a URL (the config check refuses these first).
    #[error("{endpoint:?} is not an OTLP endpoint URL: {why}")]
    Url { endpoint: String, why: String },
    /// A header that is not valid gRPC metadata (the config check refuses these first).
    #[error("header {name:?}: not a valid header name and value")]
    Header { name: String },
}

fn metadata(
    e: &Export,
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, ExportError> {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &e.headers {
        let bad = || ExportError::Header { name: k.clone() };
        let name =
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|_| bad())?;
        let value = http::HeaderValue::from_str(v).map_err(|_| bad())?;
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

/// A lazily connecting gRPC channel to `e.endpoint` (TLS when it is `https://`).
fn channel(e: &Export) -> Result<tonic::transport::Channel, ExportError> {
    let endpoint = tonic::transport::Endpoint::from_shared(e.endpoint.clone())
        .map_err(|source| ExportError::Endpoint {
            endpoint: e.endpoint.clone(),
            source,
        })?
        .timeout(e.timeout)
        .connect_timeout(e.timeout);
    Ok(endpoint.connect_with_connector_lazy(e.tls.connector(HttpVersion::Http2, e.timeout)))
}

/// The HTTP client for OTLP/HTTP (TLS when the URL is `https://`).
fn http_client(e: &Export) -> HyperClient<HttpsConnector<HttpConnector>> {
    HyperClient::new(
        e.tls.connector(HttpVersion::Http1, e.timeout),
        e.timeout,
        None,
    )
}

fn compression(e: &Export) -> Option<opentelemetry_otlp::Compression> {
    match e.compression {
        Compression::None => None,
        Compression::Gzip => Some(opentelemetry_otlp::Compression::Gzip),
    }
}

fn err(
    signal: &'static str,
    e: &Export,
    source: opentelemetry_otlp::ExporterBuildError,
) -> ExportError {
    ExportError::Build {
        signal,
        endpoint: e.endpoint.clone(),
        source,
    }
}

/// The gRPC settings every signal's builder takes (the same channel, metadata, compression).
fn tonic<B: WithTonicConfig + WithExportConfig>(b: B, e: &Export) -> Result<B, ExportError> {
    let b = b
        .with_channel(channel(e)?)
        .with_timeout(e.timeout)
        .with_metadata(metadata(e)?);
    Ok(match compression(e) {
        Some(c) => WithTonicConfig::with_compression(b, c),
        None => b,
    })
}

/// The HTTP/protobuf settings every signal's builder takes.
fn http<B: WithHttpConfig + WithExportConfig>(b: B, e: &Export) -> B {
    let b = b
        .with_http_client(http_client(e))
        .with_endpoint(e.endpoint.clone())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(e.timeout)
        .with_headers(headers(e));
    match compression(e) {
        Some(c) => WithHttpConfig::with_compression(b, c),
        None => b,
    }
}

/// Where tandem's own spans go: the requests of the span export, whose bodies
/// [`super::encode`] writes (the SDK's span exporter is not used: its conversion cost more
/// than the proxied request a span describes; BENCHMARKS.md).
pub fn span_poster(e: &Export) -> Result<Poster, ExportError> {
    let bad_url = |why: String| ExportError::Url {
        endpoint: e.endpoint.clone(),
        why,
    };
    let parsed: http::Uri = e
        .endpoint
        .trim()
        .parse()
        .map_err(|x| bad_url(format!("{x}")))?;
    let grpc = e.protocol == Protocol::Grpc;
    let url = if grpc {
        // gRPC: the method's path on the endpoint's scheme and authority
        let (Some(scheme), Some(authority)) = (parsed.scheme_str(), parsed.authority()) else {
            return Err(bad_url("no scheme or host".into()));
        };
        format!("{scheme}://{authority}{TRACE_EXPORT_PATH}")
            .parse()
            .map_err(|x| bad_url(format!("{x}")))?
    } else {
        parsed
    };
    let mut headers = vec![(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("tandem/", env!("CARGO_PKG_VERSION"))),
    )];
    for (k, v) in &e.headers {
        let bad = || ExportError::Header { name: k.clone() };
        let name =
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|_| bad())?;
        let value = http::HeaderValue::from_str(v).map_err(|_| bad())?;
        headers.retain(|(n, _)| *n != name);
        headers.push((name, value));
    }
    Ok(Poster::new(
        grpc,
        url,
        headers,
        e.compression,
        &e.tls,
        e.timeout,
    ))
}

/// The gRPC method of OTLP's trace export.
const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The log exporter.
pub fn log(e: &Export) -> Result<LogExporter, ExportError> {
    let b = LogExporter::builder();
    match e.protocol {
        Protocol::Grpc => tonic(b.with_tonic(), e)?.build(),
        Protocol::HttpProtobuf => http(b.with_http(), e).build(),
    }
    .map_err(|x| err("log", e, x))
}

/// The metric exporter (cumulative, as Prometheus counters are).
pub fn metric(e: &Export) -> Result<MetricExporter, ExportError> {
    let b = MetricExporter::builder();
    match e.protocol {
        Protocol::Grpc => tonic(b.with_tonic(), e)?
            .with_temporality(Temporality::Cumulative)
            .build(),
        Protocol::HttpProtobuf => http(b.with_http(), e)
            .with_temporality(Temporality::Cumulative)
            .build(),
    }
    .map_err(|x| err("metric", e, x))
}
