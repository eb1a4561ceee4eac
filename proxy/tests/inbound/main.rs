//! Black-box tests of the inbound proxy: real sockets on 127.0.0.1, a real upstream app
//! written with hyper, one module per concern.
//!
//! Invariant: each test asserts what a client or the app observes (statuses, bytes, hits,
//! records), never how long something took.

mod pki;
mod support;

mod auth;
mod basics;
mod drain;
mod jwks_url;
mod jwt;
mod limits;
mod mtls;
mod ratelimit;
mod ready;
mod reconfigure;
mod restart;
mod retry;
mod tcp;
mod timeouts;
mod tls;
mod trace;
mod upstream_tls;
