//! tandem's proxy library: the inbound stack in front of the app's ports.
//!
//! It knows nothing of processes: the supervisor hands it a readiness watch and a shutdown
//! signal, and only the supervisor's lifecycle decides when to drain it.
#![forbid(unsafe_code)]
