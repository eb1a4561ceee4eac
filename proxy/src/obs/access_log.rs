//! One structured record per request (or per TCP connection), handed to the caller's hook.
//!
//! Invariant: a record carries no header values except the request and trace ids, so
//! Authorization, Cookie and Set-Cookie can never leak into logs; the path has no query string
//! (queries carry tokens too).

use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use tandem_trace_context::Traceparent;

/// The caller's access-log sink. Called once per request, on the task that finished it: keep
/// it cheap and non-blocking (hand the record to a bounded queue).
pub type AccessLogFn = Arc<dyn Fn(&AccessRecord) + Send + Sync>;

/// What happened to one request. Serializes flat, durations as `*_ms` floats, ready for a
/// JSON log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRecord {
    /// Listener name.
    pub listener: String,
    /// `http`, `h2c` or `tcp`.
    pub protocol: &'static str,
    /// Method (`TCP` for a TCP connection).
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Status sent to the client (0 for TCP, or when the client went away before a response).
    pub status: u16,
    /// From arrival until the response body ended (or the connection closed).
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// Time the last attempt waited for the app's response headers.
    #[serde(rename = "upstream_time_ms", serialize_with = "opt_millis")]
    pub upstream_time: Option<Duration>,
    /// Attempts sent to the app.
    pub attempts: u32,
    /// Request body bytes read from the client (TCP: client to app).
    pub bytes_in: u64,
    /// Response body bytes sent to the client (TCP: app to client).
    pub bytes_out: u64,
    /// The app's address.
    pub upstream: String,
    /// The `x-request-id` in use.
    pub request_id: String,
    /// The W3C trace id, when the request carried `traceparent`.
    pub trace_id: Option<String>,
    /// Why tandem answered instead of the app, when it did.
    pub cause: Option<&'static str>,
    /// Whether the response body ended normally (false: cut by client, app or drain).
    pub completed: bool,
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn opt_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

/// The trace id of a W3C `traceparent` ([`Traceparent::parse`]), if well formed.
pub fn trace_id(traceparent: Option<&str>) -> Option<String> {
    Traceparent::parse(traceparent?).map(|tp| tp.trace_id_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_flat_with_millis() {
        let r = AccessRecord {
            listener: "web".into(),
            protocol: "http",
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            duration: Duration::from_micros(1500),
            upstream_time: None,
            attempts: 1,
            bytes_in: 0,
            bytes_out: 2,
            upstream: "127.0.0.1:3000".into(),
            request_id: "r1".into(),
            trace_id: None,
            cause: None,
            completed: true,
        };
        let json = serde_json::to_string(&r).expect("serialize");
        assert!(json.contains(r#""duration_ms":1.5"#), "{json}");
        assert!(json.contains(r#""upstream_time_ms":null"#), "{json}");
    }

    #[test]
    fn parses_traceparent() {
        assert_eq!(
            trace_id(Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            ))
            .as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id(Some("garbage")), None);
        assert_eq!(trace_id(None), None);
    }
}
