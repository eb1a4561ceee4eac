//! OpenTelemetry: tandem's spans, the app's log records and tandem's metrics leave over OTLP,
//! and (when enabled) the app's own OTLP passes through tandem, which adds the resource.
//!
//! Layout: [`config`] is the `[telemetry]` section; [`resource`] is what every signal carries
//! (service, host, process, orchestrator identity); [`passthrough`] is the OTLP receiver on
//! 127.0.0.1:4317/4318 for instrumented apps.
pub mod config;
pub mod passthrough;
pub mod resource;

pub use config::TelemetryConfig;
