//! OTLP pass-through for instrumented apps (the job of an OpenTelemetry Collector sidecar).
use serde::{Deserialize, Serialize};

/// `[telemetry.passthrough]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassthroughConfig {
    /// Listen on 127.0.0.1:4317 (gRPC) and 4318 (HTTP) and point the app's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` there.
    pub enabled: bool,
}
