//! tandem's proxy library: the inbound stack in front of the app's ports.
//!
//! It knows nothing of processes: the supervisor hands it a readiness watch and a shutdown
//! token, and only the supervisor's lifecycle decides when to drain it.
//!
//! ```no_run
//! # async fn run() -> Result<(), tandem_proxy::ProxyError> {
//! use prometheus_client::registry::Registry;
//! use tandem_proxy::{parse_listener_spec, serve, CancellationToken, Hooks, Inbound};
//!
//! let configs = vec![parse_listener_spec("8080=127.0.0.1:3000").expect("valid spec")];
//! // Starting: validate and bind before the app is spawned; connections queue meanwhile.
//! let bound = Inbound::bind(&configs).await?;
//! let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
//! let mut registry = Registry::default();
//! let hooks = Hooks::new()
//!     .with_metrics(&mut registry)
//!     .with_access_log(|record| tracing::info!(?record, "access"));
//! let serving = serve(bound, ready_rx, CancellationToken::new(), hooks);
//! // ... spawn the app; when its readiness probe passes:
//! ready_tx.send_replace(true);
//! // Restarting: ready_tx.send_replace(false) holds new requests (up to hold_timeout).
//! // Stopping: drain the proxy first, and only then signal the app. Leave the proxy's
//! // readiness true meanwhile: it means "the app can take requests" (the app is still up),
//! // which is not /readyz (that one says "not ready" as soon as Stopping begins).
//! let report = serving.drain().await;
//! drop(ready_tx);
//! tracing::info!(finished = report.finished(), cut = report.cut(), "proxy drained");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The folders, lowest first; a folder imports only from those above it (see README.md):
// leaves (cause, error, grpc) <- config <- obs <- edge <- http <- conn <- outbound.
mod cause;
mod config;
mod conn;
mod edge;
mod error;
mod grpc;
mod http;
mod obs;
mod outbound;

pub use config::duration;

pub use cause::{Cause, Challenge, HostError};
pub use config::jwks_url::redact_url;
pub use config::{
    ApiKeyConfig, AuthConfig, Balance, BasicAuthConfig, BreakerConfig, ClientAuthConfig,
    EjectionConfig, ForwardProxyConfig, JwtConfig, LimitsConfig, ListenerConfig, OutboundConfig,
    OutboundTimeouts, Protocol, RateLimitConfig, RetryConfig, TimeoutConfig, TlsConfig,
    UpstreamTlsConfig,
};
pub use conn::drain::{DrainReport, ListenerDrain};
pub use conn::inbound::{serve, BoundListeners, Inbound, Reconfigured, Retired, Serving};
pub use error::{ConfigError, FileError, ProxyError, SpecError};
pub use grpc::code_name as grpc_code_name;
pub use http::app_exits::{AppExits, InFlight};
pub use http::hygiene::REQUEST_ID;
pub use obs::access_log::{AccessLogFn, AccessRecord};
pub use obs::hooks::Hooks;
pub use outbound::{
    serve_outbound, BoundOutbound, EndpointStatus, Outbound, OutboundDrain, OutboundMetrics,
    OutboundServing, OutboundStatus, OutboundView,
};

/// Client connections closed since start, over all listeners (monotonic).
pub fn closed_connections() -> u64 {
    conn::listener::CLOSED_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed)
}
pub use config::spec::parse_listener_spec;
pub use conn::metered::{ATTEMPT_COUNT, UPSTREAM_SERVICE_TIME};
pub use edge::secret::secrets_equal;
pub use obs::metrics::Metrics;
pub use obs::trace::{
    extract as extract_trace_context, inject as inject_trace_context, SharedTracer, TRACEPARENT,
};
pub use tokio_util::sync::CancellationToken;

/// Entry points for the `fuzz/` crate only: they reach parsers that are private to the proxy
/// (JWT and JWKS) through the same code a listener runs. Not an API; may change at any time.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    /// Loads the JWKS file at `jwks_file` as a listener with `auth.jwt.jwks_file` would, then
    /// verifies `token` against it. `Err` when the JWKS is refused; `Ok(Err(reason))` when the
    /// token is.
    pub fn verify_jwt(jwks_file: &Path, token: &str) -> Result<Result<(), String>, String> {
        let cfg: crate::JwtConfig =
            serde_json::from_value(serde_json::json!({ "jwks_file": jwks_file }))
                .map_err(|e| e.to_string())?;
        let auth = crate::edge::jwt::JwtAuth::load("fuzz", &cfg).map_err(|e| e.to_string())?;
        Ok(auth.verify(token).map(|_| ()).map_err(|r| format!("{r:?}")))
    }
}
