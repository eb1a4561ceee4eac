//! Black-box tests of the built `tandem` binary: real child processes, signals and sockets.
//!
//! One test binary, one module per concern; shared helpers live in `support`.
// The whole crate is tests: a failed unwrap is a test failure with a backtrace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
mod apps;
mod compose;
mod config;
mod connections;
mod exit_codes;
mod faults;
mod grpc_probe;
mod logs;
mod nomad;
mod notify;
mod otel;
mod otel_tls;
mod outbound;
mod passthrough;
mod proxy;
mod reaping;
mod reliability;
mod reload;
mod reload_live;
mod restart;
mod security;
mod signals;
mod upgrade;
