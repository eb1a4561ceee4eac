//! tandem: a sidecar supervisor for hosts without Kubernetes.
//!
//! The binary (`main.rs`) is thin; everything it does lives in these modules. Only
//! [`lifecycle`] decides the order of operations: the other modules expose plain operations
//! (spawn, stop, drain, flush) and know nothing of each other's state.
pub mod admin;
pub mod admin_client;
pub mod child;
pub mod cli;
pub mod config;
pub mod control;
pub mod exit;
pub mod health;
pub mod http_get;
pub mod lifecycle;
pub mod listener_stats;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod otlp;
pub mod passthrough;
pub mod phase;
pub mod prom_text;
pub mod restart;
pub mod signals;
pub mod status_table;
pub mod telemetry;
pub mod upgrade;
