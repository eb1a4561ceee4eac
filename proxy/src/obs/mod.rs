//! Observing the proxy: metrics, access records, trace spans, and the per-request context
//! they read.

pub(crate) mod access_log;
pub(crate) mod context;
pub(crate) mod hooks;
pub(crate) mod metrics;
pub(crate) mod trace;
