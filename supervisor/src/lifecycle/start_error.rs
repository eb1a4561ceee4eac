//! Why tandem could not start: one typed error per step of the start, each with its exit code.
//!
//! The steps return a [`StartError`] and log nothing; the lifecycle logs it once
//! ([`StartError::log`]) and exits with [`StartError::exit_code`]. The event names and
//! messages are a contract (black-box tests and operators' alerts key on them): a new variant
//! picks the event of its kind (`config_error`, `bind_failed`, `internal_error`, ...).
use std::io;

use thiserror::Error;

use crate::{exit, logs::LogsError, passthrough::PassthroughError, telemetry::ExportError};

/// A step of the start failed; nothing after it was started.
#[derive(Debug, Error)]
pub enum StartError {
    /// The SIGCHLD handler for the reaper could not be installed.
    #[error("cannot watch SIGCHLD: {0}")]
    Reaper(#[source] io::Error),
    /// The stop, forward and owned signals' handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    /// The OTLP exporters (spans, logs) could not be built.
    #[error("cannot start the OTLP export: {0}")]
    Telemetry(#[source] ExportError),
    /// The OTLP metrics push could not be built.
    #[error("cannot start the OTLP metrics push: {0}")]
    MetricsPush(#[source] ExportError),
    /// The log pipeline (a sink, tail mode) could not start.
    #[error("cannot start the log pipeline: {0}")]
    Logs(#[source] LogsError),
    /// The OTLP pass-through's config is wrong, or its listeners could not be bound.
    #[error("cannot start the OTLP pass-through: {0}")]
    Passthrough(#[source] PassthroughError),
    /// A certificate, key, CA, JWKS or secrets file of the proxy cannot be used.
    #[error("cannot load a file the proxy needs: {0}")]
    ProxyFile(#[source] tandem_proxy::ProxyError),
    /// The proxy's listeners could not be bound.
    #[error("cannot bind the proxy's listeners: {0}")]
    ProxyBind(#[source] tandem_proxy::ProxyError),
    /// The admin address the user chose could not be bound.
    #[error("cannot bind admin.listen {listen}: {source}")]
    AdminBind {
        listen: String,
        #[source]
        source: io::Error,
    },
}

// === impl StartError ===

impl StartError {
    /// tandem's exit code for this failure: 64 for config, 70 for tandem's own.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Telemetry(_)
            | StartError::MetricsPush(_)
            | StartError::ProxyFile(_)
            | StartError::Logs(LogsError::Config(_)) => exit::CONFIG,
            StartError::Passthrough(e) if e.is_config() => exit::CONFIG,
            StartError::Reaper(_)
            | StartError::Signals(_)
            | StartError::Logs(_)
            | StartError::Passthrough(_)
            | StartError::ProxyBind(_)
            | StartError::AdminBind { .. } => exit::INTERNAL,
        }
    }

    /// The one error event for this failure.
    pub fn log(&self) {
        match self {
            StartError::Reaper(e) => {
                tracing::error!(event = "internal_error", error = %e, "cannot watch SIGCHLD");
            }
            StartError::Signals(e) => {
                tracing::error!(event = "internal_error", error = %e, "cannot install signal handlers");
            }
            StartError::Telemetry(e) => {
                tracing::error!(event = "otlp_failed", error = %e, "cannot start the OTLP export");
            }
            StartError::MetricsPush(e) => {
                tracing::error!(event = "otlp_failed", error = %e, "cannot start the OTLP metrics push");
            }
            StartError::Logs(e) => {
                tracing::error!(event = "logs_failed", error = %e, "cannot start the log pipeline");
            }
            StartError::Passthrough(e) if e.is_config() => {
                tracing::error!(event = "config_error", error = %e, "cannot start the OTLP pass-through");
            }
            StartError::Passthrough(e) => {
                tracing::error!(event = "bind_failed", error = %e, "cannot start the OTLP pass-through");
            }
            StartError::ProxyFile(e) => {
                tracing::error!(event = "config_error", error = %e, "cannot load a file the proxy needs");
            }
            StartError::ProxyBind(e) => {
                tracing::error!(event = "bind_failed", error = %e, "cannot bind the proxy's listeners");
            }
            StartError::AdminBind { listen, source } => {
                tracing::error!(event = "bind_failed", listen, error = %source, "cannot bind admin.listen");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_kind_of_failure() {
        let io = || io::Error::other("x");
        let header = || ExportError::Header { name: "x".into() };
        assert_eq!(StartError::Telemetry(header()).exit_code(), exit::CONFIG);
        assert_eq!(StartError::MetricsPush(header()).exit_code(), exit::CONFIG);
        assert_eq!(
            StartError::Logs(LogsError::Config("x".into())).exit_code(),
            exit::CONFIG
        );
        assert_eq!(StartError::Signals(io()).exit_code(), exit::INTERNAL);
        assert_eq!(
            StartError::AdminBind {
                listen: "127.0.0.1:1".into(),
                source: io()
            }
            .exit_code(),
            exit::INTERNAL
        );
    }
}
