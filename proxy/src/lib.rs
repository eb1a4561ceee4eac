//! tandem's proxy library: the inbound stack in front of the app's ports.
//!
//! It knows nothing of processes: the supervisor hands it a readiness watch and a shutdown
//! token, and only the supervisor's lifecycle decides when to drain it.
//!
//! ```text
//! let bound = Inbound::bind(&configs).await?;          // before the app is spawned
//! let serving = serve(bound, ready_rx, token, hooks);  // requests hold until ready_rx is true
//! ...
//! let report = serving.drain().await;                  // Stopping: before the app's stop signal
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access_log;
mod backoff;
mod budget;
mod cause;
mod config;
mod conn;
mod context;
mod drain;
mod error;
mod hygiene;
mod inbound;
mod limits;
mod listener;
mod metered;
mod metrics;
mod ready;
mod replay;
mod retry;
mod shed;
mod spec;
mod stack;
mod tcp;
mod timeout;
mod upgrade;
mod upstream;

pub use access_log::{AccessLogFn, AccessRecord};
pub use cause::Cause;
pub use config::{LimitsConfig, ListenerConfig, Protocol, RetryConfig, TimeoutConfig};
pub use drain::{DrainReport, ListenerDrain};
pub use error::{ConfigError, ProxyError, SpecError};
pub use hygiene::REQUEST_ID;
pub use inbound::{serve, BoundListeners, Inbound, Serving};
pub use listener::Hooks;
pub use metered::{ATTEMPT_COUNT, UPSTREAM_SERVICE_TIME};
pub use metrics::Metrics;
pub use spec::parse_listener_spec;
pub use tokio_util::sync::CancellationToken;
