//! The three OTLP signals as tandem handles them: decode a request (protobuf or JSON), add
//! tandem's resource attributes to each resource, encode it again for the upstream.
//!
//! The app's attributes win: tandem only fills in keys the app did not set, with three
//! exceptions documented in docs/telemetry-passthrough.md: `service.instance.id` is tandem's
//! (SDKs make up a random one per process; tandem's is the orchestrator's identity, stable
//! across the app's restarts and shared with tandem's own telemetry), a `service.name` of
//! `unknown_service*` (the SDKs' placeholder) is replaced, and tandem's own `process.*` and
//! `telemetry.sdk.*` are never added (they describe tandem, not the app).
use std::collections::BTreeMap;

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::{any_value, AnyValue, KeyValue},
    resource::v1::Resource,
};
use prost::Message;

/// One OTLP signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// A request body that is not a valid OTLP message (answered 400 / INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error)]
#[error("malformed OTLP {signal} request ({encoding}): {reason}")]
pub struct Malformed {
    pub signal: &'static str,
    pub encoding: &'static str,
    pub reason: String,
}

// === impl Signal ===

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

    /// The name in metrics labels and in the HTTP path (`/v1/{name}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }

    /// The signal of an OTLP/HTTP path.
    pub fn from_http_path(path: &str) -> Option<Signal> {
        match path {
            "/v1/traces" => Some(Signal::Traces),
            "/v1/logs" => Some(Signal::Logs),
            "/v1/metrics" => Some(Signal::Metrics),
            _ => None,
        }
    }

    /// The signal of an OTLP/gRPC method path.
    pub fn from_grpc_path(path: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.grpc_path() == path)
    }

    /// The gRPC method path of the signal's `Export`.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    /// Decode `body`, add `attrs` to every resource and encode it as protobuf. Returns the
    /// protobuf bytes for the upstream.
    pub fn enrich(
        self,
        body: &[u8],
        encoding: Encoding,
        attrs: &BTreeMap<String, String>,
    ) -> Result<Bytes, Malformed> {
        match self {
            Signal::Traces => {
                let mut req: ExportTraceServiceRequest = decode(self, body, encoding)?;
                for r in &mut req.resource_spans {
                    add_attributes(r.resource.get_or_insert_with(Resource::default), attrs);
                }
                Ok(req.encode_to_vec().into())
            }
            Signal::Logs => {
                let mut req: ExportLogsServiceRequest = decode(self, body, encoding)?;
                for r in &mut req.resource_logs {
                    add_attributes(r.resource.get_or_insert_with(Resource::default), attrs);
                }
                Ok(req.encode_to_vec().into())
            }
            Signal::Metrics => {
                let mut req: ExportMetricsServiceRequest = decode(self, body, encoding)?;
                for r in &mut req.resource_metrics {
                    add_attributes(r.resource.get_or_insert_with(Resource::default), attrs);
                }
                Ok(req.encode_to_vec().into())
            }
        }
    }
}

impl Encoding {
    fn as_str(self) -> &'static str {
        match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "json",
        }
    }
}

fn decode<M>(signal: Signal, body: &[u8], encoding: Encoding) -> Result<M, Malformed>
where
    M: Message + Default + serde::de::DeserializeOwned,
{
    let reason = match encoding {
        Encoding::Protobuf => match M::decode(body) {
            Ok(m) => return Ok(m),
            Err(e) => e.to_string(),
        },
        Encoding::Json => match serde_json::from_slice(body) {
            Ok(m) => return Ok(m),
            Err(e) => e.to_string(),
        },
    };
    Err(Malformed {
        signal: signal.as_str(),
        encoding: encoding.as_str(),
        reason,
    })
}

/// Keys tandem never adds to the app's resource: they describe tandem's process and SDK.
fn is_tandems_own(key: &str) -> bool {
    key.starts_with("process.") || key.starts_with("telemetry.sdk.")
}

/// Add each of `attrs` the app did not set (see the module doc for the exceptions).
pub fn add_attributes(resource: &mut Resource, attrs: &BTreeMap<String, String>) {
    for (key, value) in attrs {
        if is_tandems_own(key) {
            continue;
        }
        let existing = resource.attributes.iter_mut().find(|kv| kv.key == *key);
        match existing {
            Some(kv)
                if key == "service.instance.id"
                    || (key == "service.name" && is_placeholder_service(kv)) =>
            {
                kv.value = Some(string_value(value));
            }
            Some(_) => {}
            None => resource.attributes.push(KeyValue {
                key: key.clone(),
                value: Some(string_value(value)),
                ..Default::default()
            }),
        }
    }
}

/// The SDKs' `unknown_service` / `unknown_service:python3` placeholder.
fn is_placeholder_service(kv: &KeyValue) -> bool {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.starts_with("unknown_service"),
        None => true,
        Some(_) => false,
    }
}

fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn attrs() -> BTreeMap<String, String> {
        [
            ("service.name", "svc"),
            ("host.name", "h"),
            ("process.pid", "1"),
            ("telemetry.sdk.name", "tandem"),
            ("nomad.job", "j"),
            ("service.instance.id", "alloc-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn get<'a>(r: &'a Resource, key: &str) -> Option<&'a str> {
        r.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    fn request(service: &str) -> ExportTraceServiceRequest {
        let mut resource = Resource::default();
        for (k, v) in [
            ("service.name", service),
            ("host.name", "app-host"),
            ("service.instance.id", "random-uuid"),
        ] {
            resource.attributes.push(KeyValue {
                key: k.into(),
                value: Some(string_value(v)),
                ..Default::default()
            });
        }
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: "work".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn the_apps_attributes_win_but_the_instance_is_tandems() {
        let body = request("app").encode_to_vec();
        let out = Signal::Traces
            .enrich(&body, Encoding::Protobuf, &attrs())
            .unwrap();
        let req = ExportTraceServiceRequest::decode(out).unwrap();
        let r = req.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(get(r, "service.name"), Some("app"));
        assert_eq!(get(r, "host.name"), Some("app-host"));
        assert_eq!(get(r, "nomad.job"), Some("j"));
        assert_eq!(get(r, "service.instance.id"), Some("alloc-1"));
        assert_eq!(get(r, "process.pid"), None);
        assert_eq!(get(r, "telemetry.sdk.name"), None);
        assert_eq!(req.resource_spans[0].scope_spans[0].spans[0].name, "work");
    }

    #[test]
    fn the_sdk_placeholder_service_name_is_replaced() {
        let body = request("unknown_service:python3").encode_to_vec();
        let out = Signal::Traces
            .enrich(&body, Encoding::Protobuf, &attrs())
            .unwrap();
        let req = ExportTraceServiceRequest::decode(out).unwrap();
        let r = req.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(get(r, "service.name"), Some("svc"));
    }

    #[test]
    fn json_is_accepted_and_garbage_is_malformed() {
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"a","value":{"stringValue":"b"}}]},"scopeSpans":[{"spans":[{"name":"j","traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}"#;
        let out = Signal::Traces
            .enrich(json, Encoding::Json, &attrs())
            .unwrap();
        let req = ExportTraceServiceRequest::decode(out).unwrap();
        let r = req.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(get(r, "a"), Some("b"));
        assert_eq!(get(r, "host.name"), Some("h"));
        let err = Signal::Logs
            .enrich(b"\xff\xff\xff", Encoding::Protobuf, &attrs())
            .unwrap_err();
        assert!(
            err.to_string().contains("malformed OTLP logs request"),
            "{err}"
        );
        assert!(Signal::Metrics
            .enrich(b"{", Encoding::Json, &attrs())
            .is_err());
    }
}
