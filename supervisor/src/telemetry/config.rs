//! The `[telemetry]` section of the config.
use serde::{Deserialize, Serialize};

/// OpenTelemetry export and pass-through.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP receiver for the app's own telemetry (see [`super::passthrough`]).
    pub passthrough: super::passthrough::PassthroughConfig,
}
