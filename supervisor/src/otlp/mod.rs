//! What tandem's own OTLP export ([`crate::telemetry`]) and the app's OTLP pass-through
//! ([`crate::passthrough`]) share: the standard `OTEL_*` environment read one way ([`env`]),
//! the TLS client of every outgoing OTLP connection ([`tls`]), the resource attributes that
//! describe this process ([`resource`]), the request compression ([`Compression`]) and one
//! export request of an encoded body ([`post`]).
//!
//! The one thing to know before changing it: both products depend on this module and it
//! depends on neither (nor on the log pipeline), so a rule about `OTEL_*` variables, TLS files or
//! the resource is written here once and holds for both.
pub mod env;
pub mod post;
pub mod resource;
pub mod tls;

/// How request bodies are sent (`OTEL_EXPORTER_OTLP_COMPRESSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

// === impl Compression ===

impl Compression {
    /// `none` (or empty) or `gzip`; None for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "none" | "" => Some(Self::None),
            "gzip" => Some(Self::Gzip),
            _ => None,
        }
    }
}
